"""A small 4-conv CNN for the CPU demo: (conv3x3 - BN - ReLU - maxpool 2x2) x 4, then global
average pooling. Widths (32, 64, 128, 256) give a 256-d ``pre_logits`` and ~0.39M parameters.

BatchNorm has no ``axis_name``: under ``jax.jit`` over a batch sharded across devices XLA
computes the statistics over the global batch (global BN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx.models import precision
from sslx.models.registry import register_model


@jax.custom_vjp
def max_pool_2x2(x):
  """``nn.max_pool(x, (2, 2), strides=(2, 2))`` with an elementwise gradient.

  The forward pass is XLA's own reduce-window; the backward pass routes each output
  gradient to its window's maximum (split evenly between tied maxima, as the gradient of
  ``jnp.max`` does) with elementwise ops. XLA:CPU runs ``nn.max_pool``'s own gradient, a
  select-and-scatter, so slowly that it took half of the demo CNN's backward pass
  (fwd+bwd of 512 views: 678 ms -> 457 ms; PyTorch 398 ms).
  """
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def _up2(y):
  return jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)


def _max_pool_fwd(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _max_pool_bwd(res, g):
  x, y = res
  b, h, w, c = x.shape
  xc = x[:, : h // 2 * 2, : w // 2 * 2]
  hit = (xc == _up2(y)).astype(g.dtype)
  ties = hit.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))
  gx = hit * _up2(g / ties)
  return (jnp.pad(gx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


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
      x = nn.Conv(w, (3, 3), padding="SAME", use_bias=False, dtype=dtype, name=f"conv{i}")(x)
      x = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=f"bn{i}"
      )(x)
      x = nn.relu(x)
      if self.pool and x.shape[1] > 1 and x.shape[2] > 1:
        x = max_pool_2x2(x)
    x = x.astype(jnp.float32)
    out = {"feature_map": x, "pre_logits": jnp.mean(x, axis=(1, 2))}
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, name="head")(out["pre_logits"])
    return out


@register_model("convnet")
def convnet(
  widths: Sequence[int] = (32, 64, 128, 256),
  pool: bool = True,
  num_classes: int = 0,
  dtype: str = "float32",
):
  precision.compute_dtype(dtype)
  return ConvNet(widths=tuple(widths), pool=pool, num_classes=num_classes, dtype=dtype)
