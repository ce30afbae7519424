"""Networks for Contrastive Predictive Coding (Oord et al. 2018; Hénaff et al. 2019).

Image CPC encodes every patch of a grid independently and runs an autoregressive context
network over the grid's rows; 1-D CPC encodes a signal with a strided convolution stack and
runs a GRU over time. None of these networks uses BatchNorm: batch statistics mix all patches
(or time steps) of the batch, so the future would leak into c_t through them (Hénaff et al.
2019 §4.1 replace BN by layer normalisation for this reason). Every normalisation here is per
patch or per time step.

Registered encoders (``sslx.models.create_model``):
  ``cpc_convnet``: (conv3x3 → GroupNorm(1) → ReLU [→ residual blocks] → maxpool 2x2) per
      stage (1x1 convolutions once the map is 1x1), global average pool; ``pre_logits``
      [B, widths[-1]]. Made for 8x8 patches: 4 stages take them to 1x1.

Modules (used by ``sslx.methods.cpc``):
  ``RowCausalContext``: PixelCNN-style context over a [B, R, C, D] grid; c at row r depends on
      rows <= r only (all columns), through convolutions padded on top only.
  ``SignalEncoder``: strided 1-D convolutions, [B, T, C] → [B, T', D].
  ``GRUContext``: a GRU over time, [B, T', D] → [B, T', H]; c_t depends on z_{<=t} only.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from sslx.models.convnet import max_pool_2x2
from sslx.models.fast_conv import SmallMapConv, resolve_conv_impl
from sslx.models.registry import register_model


class PatchConvNet(nn.Module):
  """A small BN-free CNN for patches: per stage a conv3x3 (+ `blocks - 1` residual conv3x3
  blocks), each followed by GroupNorm with one group (layer norm over H, W, C of one patch)
  and ReLU, then 2x2 max-pool while the map is larger than 1x1. Returns
  {"feature_map": [B, h, w, widths[-1]], "pre_logits": [B, widths[-1]]}."""

  widths: Sequence[int] = (32, 64, 128, 256)
  blocks: int = 1
  conv_impl: str = "auto"  # as the demo CNN's (models/fast_conv.small_map_conv2d on CPU)

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # no batch statistics, no dropout: the same function in training and eval
    x = jnp.asarray(x, jnp.float32)
    if resolve_conv_impl(self.conv_impl) == "fast":
      conv = lambda w, kernel, name: SmallMapConv(w, kernel, name=name)  # noqa: E731
    else:
      conv = lambda w, kernel, name: nn.Conv(w, kernel, padding="SAME", name=name)  # noqa: E731
    for i, w in enumerate(self.widths):
      # On a 1x1 map a padded 3x3 convolution only uses its centre tap: use a 1x1 (same
      # function class, 9x fewer multiplications).
      kernel = (3, 3) if x.shape[1] > 1 or x.shape[2] > 1 else (1, 1)
      x = conv(w, kernel, f"conv{i}")(x)
      x = nn.relu(nn.GroupNorm(num_groups=1, name=f"norm{i}")(x))
      for j in range(1, self.blocks):
        y = conv(w, kernel, f"conv{i}_{j}")(x)
        x = nn.relu(x + nn.GroupNorm(num_groups=1, name=f"norm{i}_{j}")(y))
      if x.shape[1] > 1 and x.shape[2] > 1:
        # the demo CNN's max-pool: XLA's own gradient (a select-and-scatter) made this
        # encoder's forward + backward ~1.4x slower on CPU (3136 patches of 8 px)
        x = max_pool_2x2(x)
    return {"feature_map": x, "pre_logits": jnp.mean(x, axis=(1, 2))}


@register_model("cpc_convnet")
def cpc_convnet(
  widths: Sequence[int] = (32, 64, 128, 256), blocks: int = 1, conv_impl: str = "auto"
):
  resolve_conv_impl(conv_impl)
  return PatchConvNet(widths=tuple(widths), blocks=blocks, conv_impl=conv_impl)


class RowCausalContext(nn.Module):
  """Autoregressive context over the rows of a grid (Oord et al. 2018 §3.3, PixelCNN-style).

  z [B, R, C, D] → Dense(features) → `layers` residual blocks of a (`kernel_rows` x 3)
  convolution whose input is zero-padded with `kernel_rows − 1` rows on top and none below,
  so each layer sees its own row and the `kernel_rows − 1` rows above it (all columns within
  its width). c at row r thus depends on rows max(0, r − layers·(kernel_rows − 1)) .. r and
  never on a row below r. Returns c [B, R, C, features].
  """

  features: int = 256
  layers: int = 3
  kernel_rows: int = 3

  @nn.compact
  def __call__(self, z):
    h = nn.Dense(self.features, name="embed")(z)
    top = self.kernel_rows - 1
    for i in range(self.layers):
      y = jnp.pad(nn.relu(h), ((0, 0), (top, 0), (1, 1), (0, 0)))  # rows above only
      y = nn.Conv(self.features, (self.kernel_rows, 3), padding="VALID", name=f"conv{i}")(y)
      y = nn.Dense(self.features, name=f"mix{i}")(nn.relu(y))
      h = h + y
    return nn.LayerNorm(name="norm")(h)


class SignalEncoder(nn.Module):
  """Strided 1-D convolutions, [B, T, C] → z [B, T', widths[-1]] (Oord et al. 2018 §3.1 uses
  kernels (10, 8, 4, 4, 4), strides (5, 4, 2, 2, 2), 512 channels on 16 kHz audio).

  Padding is VALID, so z_t depends on input samples [t·S, t·S + R) only, with S the product
  of the strides and R the receptive field; LayerNorm over channels per time step and ReLU."""

  widths: Sequence[int] = (64, 64)
  kernels: Sequence[int] = (4, 4)
  strides: Sequence[int] = (2, 2)

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    for i, (w, k, s) in enumerate(zip(self.widths, self.kernels, self.strides)):
      x = nn.Conv(w, (k,), strides=(s,), padding="VALID", name=f"conv{i}")(x)
      x = nn.relu(nn.LayerNorm(name=f"norm{i}")(x))
    return x

  def receptive_field(self) -> tuple[int, int]:
    """(total stride S, receptive field R) in input samples."""
    stride, field = 1, 1
    for k, s in zip(self.kernels, self.strides):
      field += (k - 1) * stride
      stride *= s
    return stride, field


class GRUContext(nn.Module):
  """c_t = GRU(z_{<=t}): [B, T', D] → [B, T', features] (Oord et al. 2018 §3.1, 256 units)."""

  features: int = 256

  @nn.compact
  def __call__(self, z):
    return nn.RNN(nn.GRUCell(self.features), name="gru")(z)
