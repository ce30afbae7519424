"""A small 4-conv CNN for the CPU demo: (conv3x3 - BN - ReLU - maxpool 2x2) x 4, then global
average pooling. Widths (32, 64, 128, 256) give a 256-d ``pre_logits`` and ~0.39M parameters.

Outputs: ``pre_logits`` [B, C]; ``feature_map`` (the last block after its pool); and
``patch_tokens`` [B, h·w, C], the last block's cells *before* its pool (a 4x4 grid of 8 px
cells on 32 px images: ``patch_size`` pixels per cell), which play the ViT's patch tokens for
masked-token losses (DINOv2's iBOT term). With ``mask_token=True`` a ``token_mask`` [B, h·w]
bool (True = masked) replaces the pixels of those cells by a learned colour (zeros at init: the
normalised mean) before the first convolution -- the CNN counterpart of a ViT's mask token
(dense masking, as SimMIM does for hierarchical encoders).

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
from sslx.models.fast_conv import SmallMapConv, resolve_conv_impl
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
  mask_token: bool = False  # a learned pixel colour for `token_mask` (DINOv2's iBOT term)
  # "auto": on CPU models/fast_conv.small_map_conv2d (matmuls on 1x1 and 2x2 maps), nn.Conv
  # elsewhere; the parameters are the same either way.
  conv_impl: str = "auto"

  @property
  def patch_size(self) -> int:
    """Pixels per side of a ``patch_tokens`` cell (the stride of the last block's input)."""
    return 2 ** (len(self.widths) - 1) if self.pool else 1

  @nn.compact
  def __call__(self, x, train: bool = True, token_mask=None):
    dtype = precision.compute_dtype(self.dtype)
    x = jnp.asarray(x, jnp.float32)
    if self.mask_token:
      colour = self.param("mask_token", nn.initializers.zeros, (x.shape[-1],))
      if token_mask is not None:
        x = jnp.where(self._pixel_mask(token_mask, x.shape), colour, x)
    elif token_mask is not None:
      raise ValueError("token_mask needs a mask colour: build the ConvNet with mask_token=True")
    fast = resolve_conv_impl(self.conv_impl) == "fast"
    for i, w in enumerate(self.widths):
      if fast:
        x = SmallMapConv(w, (3, 3), use_bias=False, dtype=dtype, name=f"conv{i}")(x)
      else:
        x = nn.Conv(w, (3, 3), padding="SAME", use_bias=False, dtype=dtype, name=f"conv{i}")(x)
      x = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=f"bn{i}"
      )(x)
      x = nn.relu(x)
      cells = x
      if self.pool and x.shape[1] > 1 and x.shape[2] > 1:
        x = max_pool_2x2(x)
    x = x.astype(jnp.float32)
    b, h, w, c = cells.shape
    out = {
      "feature_map": x,
      "pre_logits": jnp.mean(x, axis=(1, 2)),
      "patch_tokens": cells.astype(jnp.float32).reshape(b, h * w, c),
    }
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, name="head")(out["pre_logits"])
    return out

  def _pixel_mask(self, token_mask, shape):
    """[B, h·w] cell mask -> [B, H, W, 1] pixel mask (cells of `patch_size` pixels)."""
    b, height, width, _ = shape
    p = self.patch_size
    if height % p or width % p or token_mask.shape != (b, (height // p) * (width // p)):
      raise ValueError(
        f"token_mask has shape {token_mask.shape}; a {height}x{width} image has "
        f"{height // p}x{width // p} cells of {p} px (ConvNet.patch_size) per image"
      )
    grid = token_mask.reshape(b, height // p, width // p)
    return jnp.repeat(jnp.repeat(grid, p, axis=1), p, axis=2)[..., None]


@register_model("convnet")
def convnet(
  widths: Sequence[int] = (32, 64, 128, 256),
  pool: bool = True,
  num_classes: int = 0,
  dtype: str = "float32",
  conv_impl: str = "auto",
):
  precision.compute_dtype(dtype)
  resolve_conv_impl(conv_impl)
  return ConvNet(
    widths=tuple(widths), pool=pool, num_classes=num_classes, dtype=dtype, conv_impl=conv_impl
  )
