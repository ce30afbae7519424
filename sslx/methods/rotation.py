"""Rotation prediction (Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning
by Predicting Image Rotations", ICLR).

Every image of the batch is shown in all four rotations 0°, 90°, 180°, 270° (the paper's §3:
"we found it beneficial to feed all four rotated copies of an image simultaneously in the same
mini-batch"), and a 4-way classifier on the encoder's `pre_logits` predicts which one it saw.
The four copies go through the encoder in ONE forward pass ([4B, S, S, 3]), so BatchNorm sees
all of them.

Rotations are exact (`jnp.rot90`: a permutation of pixels, no interpolation), so the network
cannot read the rotation off resampling artefacts; on square images all four copies keep the
same shape. Evaluation encodes the upright image (`encode`).

Config (`config.method`):
  head_hidden: hidden widths of the rotation classifier on top of `pre_logits` (() = linear)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sslx import augment, losses, models
from sslx.methods import base
from sslx.methods.common import EncoderWithHead

NUM_ROTATIONS = 4


def rotate_all(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """All four rotations of a batch, rotation-major.

  Args:
    x: [B, S, S, C] (square images).
  Returns:
    (images [4B, S, S, C], labels [4B] int32): rows k·B..(k+1)·B−1 are the batch rotated by
    k·90° counter-clockwise (`jnp.rot90` over the spatial axes), labelled k.
  """
  b = x.shape[0]
  rotated = [jnp.rot90(x, k=k, axes=(1, 2)) for k in range(NUM_ROTATIONS)]
  labels = jnp.repeat(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), b)
  return jnp.concatenate(rotated, axis=0), labels


@dataclasses.dataclass(frozen=True)
class Rotation(base.Method):
  net: EncoderWithHead
  view: augment.ViewParams | None
  preprocess: base.Preprocess

  def init(self, rng, images) -> base.Variables:
    size = None if self.view is None else self.view.crop_size
    variables = base.init_net(self.net, self.preprocess, rng, images, size)
    return base.Variables(variables["params"], variables.get("batch_stats", {}), {})

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    if self.view is None:
      x = self.preprocess(images)
    else:
      x = self.preprocess(augment.augment_batch(rng, images, self.view))
    rotated, labels = rotate_all(x)
    (features, logits), updates = self.net.apply(
      {"params": params, "batch_stats": batch_stats}, rotated, train=True, mutable=["batch_stats"]
    )
    loss, acc = losses.softmax_cross_entropy(logits, labels)
    n = images.shape[0]
    metrics = {"loss": loss, "rotation_acc": acc}
    # Rows 0..B−1 are the upright copies: the online probe watches those.
    return loss, base.LossAux(updates["batch_stats"], method_state, metrics, features[:n])


# A linear rotation classifier on the encoder's features.
# fmt: off
DEFAULTS = dict(
  head_hidden=(),
)
# fmt: on


def create(config, total_steps: int) -> Rotation:
  del total_steps  # no schedule inside the loss
  m = config.method
  encoder = base.encoder_from_config(config)
  hidden = tuple(m.head_hidden)
  head = models.MLPHead(hidden_dims=hidden, out_dim=NUM_ROTATIONS)
  return Rotation(
    net=EncoderWithHead(encoder, head),
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
  )
