"""Networks around an encoder for the pretext tasks (rotation needs none of these).

Each wraps the configured encoder (`config.model`, any registered model returning
``pre_logits`` / ``feature_map``) and adds the task's head; ``encode`` is the encoder's
``pre_logits`` on one whole image, what evaluation uses. These are built by the methods from
their config, not selected by ``model.name``, so they are not registered.

  TileSetClassifier   jigsaw (Noroozi & Favaro 2016) and relative patch location (Doersch et
                      al. 2015): a siamese encoder over K tiles/patches, a per-tile fc, the
                      concatenation, then an MLP classifier.
  InpaintingGenerator context encoder (Pathak et al. 2016): encoder -> channel-wise fc ->
                      up-convolutional decoder.
  PatchDiscriminator  the context encoder's adversary (DCGAN-style, no BatchNorm).
  ColorizationNet     colorization (Zhang et al. 2016): encoder on L -> upsampling decoder ->
                      per-pixel logits over the ab bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from sslx.models.heads import MLPHead


def upsample(y, widths: Sequence[int], train: bool):
  """Stride-2 4×4 up-convolutions, each followed by BatchNorm and ReLU (DCGAN's decoder);
  called from a compact module, whose parameters they become (`up{i}`, `up_bn{i}`)."""
  for i, width in enumerate(widths):
    y = nn.ConvTranspose(
      width, (4, 4), strides=(2, 2), padding="SAME", use_bias=False, name=f"up{i}"
    )(y)
    y = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"up_bn{i}")(y)
    y = nn.relu(y)
  return y


class TileSetClassifier(nn.Module):
  """Siamese encoder over K tiles, classification of their arrangement.

  Input [B, K, T, T, C] -> encoder on [B·K, T, T, C] (one pass, shared weights) ->
  Dense(tile_dim) per tile -> concat [B, K·tile_dim] -> MLPHead(hidden, num_classes).
  Returns (per-tile pre_logits [B, K, D], logits [B, num_classes], or [B·G, ...] by `groups`).
  """

  encoder: nn.Module
  num_classes: int
  tile_dim: int = 256
  hidden: Sequence[int] = (512,)

  @nn.compact
  def __call__(self, tiles, train: bool = True, groups=None):
    """`groups`: None classifies all K tiles of an example together; a static tuple of
    index tuples classifies each group of those tiles on its own (every group the same
    size), so tiles shared by several groups are encoded once: logits [B·len(groups), ...]."""
    b, k = tiles.shape[:2]
    feats = self.encoder(tiles.reshape((b * k,) + tiles.shape[2:]), train=train)["pre_logits"]
    z = nn.relu(nn.Dense(self.tile_dim, name="tile_fc")(feats))  # Noroozi's fc6, per tile
    z = z.reshape(b, k, self.tile_dim)
    if groups is not None:
      z = z[:, jnp.asarray(groups)]  # [B, G, n, tile_dim]
    z = z.reshape(-1, z.shape[-2] * self.tile_dim)  # [B·G, n·tile_dim] (or [B, K·tile_dim])
    logits = MLPHead(hidden_dims=tuple(self.hidden), out_dim=self.num_classes, name="classifier")(
      z, train=train
    )
    return feats.reshape(b, k, -1), logits

  def encode(self, x, train: bool = False):
    return self.encoder(x, train=train)["pre_logits"]


class InpaintingGenerator(nn.Module):
  """Context-encoder generator (Pathak et al. 2016, §3.1).

  encoder feature_map [B, h, w, C] -> channel-wise fully-connected layer (each channel's h·w
  map fully connected to itself, no cross-channel parameters; then a 1×1 conv to mix
  channels, the paper's bottleneck) -> `num_up` stride-2 up-convolutions (BN, ReLU) ->
  3-channel output (no activation: the target is the normalised image).
  Returns (pre_logits [B, D], prediction [B, h·2^num_up, w·2^num_up, 3]).
  """

  encoder: nn.Module
  decoder_widths: Sequence[int] = (128, 64, 32)

  @nn.compact
  def __call__(self, x, train: bool = True):
    out = self.encoder(x, train=train)
    fmap = out["feature_map"]
    b, h, w, c = fmap.shape
    # Channel-wise fc: [B, C, h·w] x [C, h·w, h·w] (paper §3.1).
    kernel = self.param(
      "channel_fc", nn.initializers.lecun_normal(batch_axis=(0,)), (c, h * w, h * w)
    )
    flat = jnp.transpose(fmap.reshape(b, h * w, c), (0, 2, 1))
    mixed = jnp.einsum("bcp,cpq->bcq", flat, kernel)
    y = jnp.transpose(mixed, (0, 2, 1)).reshape(b, h, w, c)
    y = nn.relu(nn.Conv(c, (1, 1), name="channel_mix")(y))
    y = upsample(y, self.decoder_widths, train)
    y = nn.ConvTranspose(3, (4, 4), strides=(2, 2), padding="SAME", name="to_rgb")(y)
    return out["pre_logits"], y

  def encode(self, x, train: bool = False):
    return self.encoder(x, train=train)["pre_logits"]


class PatchDiscriminator(nn.Module):
  """DCGAN-style discriminator: stride-2 4×4 convs with LeakyReLU(0.2), then one logit.
  No BatchNorm, so it has no batch statistics to share between real and fake batches.
  Input [B, S, S, 3] -> [B] logits."""

  widths: Sequence[int] = (32, 64, 128)

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    for i, w in enumerate(self.widths):
      x = nn.Conv(w, (4, 4), strides=(2, 2), padding="SAME", name=f"conv{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(1, name="logit")(x)[:, 0]


class ColorizationNet(nn.Module):
  """Zhang et al. 2016 in miniature: encoder on the L channel, then stride-2 up-convolutions
  back to `out_size` and a 1×1 conv to `num_bins` logits per pixel (the paper predicts at
  1/4 of the input resolution).
  Input [B, S, S, 1] -> (pre_logits [B, D], logits [B, out, out, num_bins])."""

  encoder: nn.Module
  num_bins: int = 313
  decoder_widths: Sequence[int] = (128, 128)

  @nn.compact
  def __call__(self, x, train: bool = True):
    out = self.encoder(x, train=train)
    y = out["feature_map"]
    y = upsample(y, self.decoder_widths, train)
    logits = nn.Conv(self.num_bins, (1, 1), name="bins")(y)
    return out["pre_logits"], logits

  def encode(self, x, train: bool = False):
    return self.encoder(x, train=train)["pre_logits"]
