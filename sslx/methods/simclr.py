"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"; v2: Chen et al. 2020b).

Two augmented views of every image go through the encoder in ONE forward pass, so BatchNorm
statistics are taken over all 2N views of the global batch (the paper's global BN: under jit
over a sharded batch XLA reduces across devices). A projection head maps the encoder's
`pre_logits` to the space where NT-Xent is taken; evaluation uses the features *before* the
projector (paper §4.2).

Config (`config.method`):
  temperature:      τ of NT-Xent (0.5 in the paper at batch 4096; 0.2 for CIFAR recipes)
  projector_hidden: hidden widths of the MLP head: (2048,) is v1's 2-layer head,
                    (2048, 2048) v2's 3-layer head
  projector_dim:    output width (128)
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import augment, losses, models
from sslx.methods import base


class EncoderWithProjector(nn.Module):
  encoder: nn.Module
  projector: nn.Module

  def __call__(self, x, train: bool = True):
    features = self.encoder(x, train=train)["pre_logits"]
    return features, self.projector(features, train=train)

  def encode(self, x, train: bool = False):
    return self.encoder(x, train=train)["pre_logits"]


@dataclasses.dataclass(frozen=True)
class SimCLR:
  net: EncoderWithProjector
  view: augment.ViewParams | None
  preprocess: base.Preprocess
  temperature: float

  def init(self, rng, images) -> base.Variables:
    x = self.preprocess(images[:2])
    if self.view is not None:
      size = self.view.crop_size
      x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
    variables = self.net.init(rng, x, train=False)
    return base.Variables(variables["params"], variables.get("batch_stats", {}), {})

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step  # SimCLR has no schedule inside the loss.
    views = base.two_views(rng, images, self.view, self.preprocess)
    (features, z), updates = self.net.apply(
        {"params": params, "batch_stats": batch_stats}, views, train=True,
        mutable=["batch_stats"])
    loss, acc = losses.nt_xent(z, self.temperature)
    n = images.shape[0]
    metrics = {"loss": loss, "contrastive_acc": acc,
               "embedding_std": jnp.mean(jnp.std(losses.l2_normalize(z), axis=0))}
    return loss, base.LossAux(updates["batch_stats"], method_state, metrics, features[:n])

  def encode(self, params, batch_stats, images):
    return self.net.apply({"params": params, "batch_stats": batch_stats},
                          self.preprocess(images), method=EncoderWithProjector.encode)


def create(config, total_steps: int) -> SimCLR:
  del total_steps  # no schedule inside SimCLR's loss
  m = config.method
  encoder = models.create_model(config.model.name, **base.model_kwargs(config.model))
  projector = models.MLPHead(hidden_dims=tuple(m.get("projector_hidden", (2048,))),
                             out_dim=m.get("projector_dim", 128))
  return SimCLR(net=EncoderWithProjector(encoder, projector),
                view=base.view_params(config.augment),
                preprocess=base.Preprocess.from_config(config.dataset),
                temperature=float(m.temperature))
