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
  projector_bn:     BatchNorm in the projector's hidden layers (True)
  grad_cache_chunk: 0, or the number of views embedded at a time (GradCache, Gao et al. 2021):
                    the loss and its gradient w.r.t. the embeddings are taken over the whole
                    batch, but activations exist for one chunk at a time, so a 4096-image batch
                    runs on a device that holds a 256-image chunk. BatchNorm statistics are
                    then per chunk (as in GradCache); with LayerNorm models the gradients equal
                    the unchunked step (tested).

GradCache here is `lax.scan` over chunks with a `jax.checkpoint`ed body: the forward keeps
only each chunk's embeddings, and reverse mode recomputes one chunk's forward at a time and
backpropagates the full-batch embedding gradient through it — the paper's two passes,
expressed through JAX's autodiff rather than by hand.
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
class SimCLR(base.Method):
  net: EncoderWithProjector
  view: augment.ViewParams | None
  preprocess: base.Preprocess
  temperature: float
  grad_cache_chunk: int = 0

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
    (features, z), new_batch_stats = self.embed(params, batch_stats, views)
    loss, acc = losses.nt_xent(z, self.temperature)
    n = images.shape[0]
    metrics = {
      "loss": loss,
      "contrastive_acc": acc,
      "embedding_std": jnp.mean(jnp.std(losses.l2_normalize(z), axis=0)),
    }
    return loss, base.LossAux(new_batch_stats, method_state, metrics, features[:n])

  def embed(self, params, batch_stats, views):
    """((features [2B, D], z [2B, d]), new batch_stats), whole or in GradCache chunks."""

    def apply(bs, x):
      out, updates = self.net.apply(
        {"params": params, "batch_stats": bs}, x, train=True, mutable=["batch_stats"]
      )
      return out, updates.get("batch_stats", bs)

    chunk = self.grad_cache_chunk
    if not chunk or chunk >= views.shape[0]:
      return apply(batch_stats, views)
    if views.shape[0] % chunk:
      raise ValueError(
        f"method.grad_cache_chunk={chunk} must divide the {views.shape[0]} "
        "views of a batch (2 x batch_size)"
      )
    chunks = views.reshape((views.shape[0] // chunk, chunk) + views.shape[1:])
    body = jax.checkpoint(lambda bs, x: apply(bs, x)[::-1])  # (new bs, out)
    new_bs, (features, z) = jax.lax.scan(body, batch_stats, chunks)
    return (features.reshape((-1,) + features.shape[2:]), z.reshape((-1,) + z.shape[2:])), new_bs

  def encode(self, params, batch_stats, images):
    return self.net.apply(
      {"params": params, "batch_stats": batch_stats},
      self.preprocess(images),
      method=EncoderWithProjector.encode,
    )


def create(config, total_steps: int) -> SimCLR:
  del total_steps  # no schedule inside SimCLR's loss
  m = config.method
  encoder = models.create_model(config.model.name, **base.model_kwargs(config.model))
  projector = models.MLPHead(
    hidden_dims=tuple(m.get("projector_hidden", (2048,))),
    out_dim=m.get("projector_dim", 128),
    use_bn=m.get("projector_bn", True),
    dtype=config.model.get("dtype", "float32"),  # the head computes as the encoder does
  )
  return SimCLR(
    net=EncoderWithProjector(encoder, projector),
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
    temperature=float(m.temperature),
    grad_cache_chunk=int(m.get("grad_cache_chunk", 0)),
  )
