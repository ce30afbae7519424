"""A small 4-conv CNN for the CPU demo: (conv3x3 - BN - ReLU - maxpool 2x2) x 4, then global
average pooling. Widths (32, 64, 128, 256) give a 256-d ``pre_logits`` and ~0.39M parameters.

BatchNorm has no ``axis_name``: under ``jax.jit`` over a batch sharded across devices XLA
computes the statistics over the global batch (global BN).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sslx.models import precision, register_model


class ConvNet(nn.Module):
    widths: Sequence[int] = (32, 64, 128, 256)
    pool: bool = True  # 2x2 max-pool after each block (skipped once the map is 1x1)
    num_classes: int = 0
    dtype: Any = "float32"  # compute dtype; params stay float32 (see models/precision.py)

    @nn.compact
    def __call__(self, x, train: bool = True):
        dtype = precision.compute_dtype(self.dtype)
        x = jnp.asarray(x, jnp.float32)
        for i, w in enumerate(self.widths):
            x = nn.Conv(w, (3, 3), padding="SAME", use_bias=False, dtype=dtype,
                        name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
            if self.pool and x.shape[1] > 1 and x.shape[2] > 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.astype(jnp.float32)
        out = {"feature_map": x, "pre_logits": jnp.mean(x, axis=(1, 2))}
        if self.num_classes:
            out["logits"] = nn.Dense(self.num_classes, name="head")(out["pre_logits"])
        return out


@register_model("convnet")
def convnet(widths: Sequence[int] = (32, 64, 128, 256), pool: bool = True, num_classes: int = 0,
            dtype: str = "float32"):
    precision.compute_dtype(dtype)
    return ConvNet(widths=tuple(widths), pool=pool, num_classes=num_classes, dtype=dtype)
