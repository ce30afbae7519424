"""Projection / prediction heads.

``MLPHead(hidden_dims, out_dim)`` is Linear -> BN -> ReLU for each hidden layer, then a final
Linear. Hidden Linear layers have no bias when followed by BatchNorm (the BN shift makes it
redundant). SimCLR's projector is ``MLPHead((2048,), 128)``; SimCLR v2's 3-layer head is
``MLPHead((2048, 2048), 128)``; BYOL's predictor is ``MLPHead((4096,), 256)``.

BatchNorm has no ``axis_name``: under ``jax.jit`` over a batch sharded across devices, XLA
computes the batch statistics over the global batch (global BN, as SimCLR needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sslx.models import precision


class MLPHead(nn.Module):
  """Linear(no bias if BN) -> BN -> ReLU -> ... -> Linear(out_dim).

  Attributes:
    hidden_dims: widths of the hidden layers (may be empty: a single Linear).
    out_dim: output width.
    use_bn: BatchNorm after each hidden Linear.
    last_bias: bias on the final Linear.
    last_bn: optional BatchNorm on the output (no shift), as SimCLR's code (v1 and v2).
    last_bn_scale: a learned per-channel scale in that BatchNorm (SimCLR's code: yes).
    dtype: compute dtype of the matmuls ("float32" | "bfloat16", the encoder's
      ``model.dtype``); parameters, BatchNorm statistics and the output stay float32.
  Returns the output array ``[B, out_dim]`` float32 (a head, not an encoder: no dict).
  """

  hidden_dims: Sequence[int] = (2048,)
  out_dim: int = 128
  use_bn: bool = True
  last_bias: bool = True
  last_bn: bool = False
  last_bn_scale: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = "float32"

  @nn.compact
  def __call__(self, x, train: bool = True):
    dtype = precision.compute_dtype(self.dtype)
    x = jnp.asarray(x, jnp.float32)
    for i, h in enumerate(self.hidden_dims):
      x = nn.Dense(h, use_bias=not self.use_bn, dtype=dtype, name=f"fc{i}")(x)
      if self.use_bn:
        # statistics are reduced in float32 whatever the dtype (flax promotes them)
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=self.bn_momentum,
          epsilon=self.bn_epsilon,
          dtype=dtype,
          name=f"bn{i}",
        )(x)
      x = nn.relu(x)
    x = nn.Dense(
      self.out_dim, use_bias=self.last_bias, dtype=dtype, name=f"fc{len(self.hidden_dims)}"
    )(x)
    x = x.astype(jnp.float32)
    if self.last_bn:
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        use_scale=self.last_bn_scale,
        use_bias=False,
        name="bn_out",
      )(x)
    return x
