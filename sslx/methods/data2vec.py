"""data2vec for images (Baevski et al. 2022, "data2vec: A General Framework for
Self-supervised Learning in Speech, Vision and Language").

  student: the ViT on the image with blockwise-masked patches replaced by a learned mask
           token (all N tokens stay in the sequence, §3.2 "Vision"; masking as BEiT, 60%)
  teacher: an EMA copy of the student's encoder on the *unmasked* image (§3.3), in
           `method_state["teacher"]`, updated in `after_update` with Δ ← τΔ + (1 − τ)θ,
           τ rising linearly from τ0 to τe over `ema_anneal_steps`, then constant (§3.3)
  targets: y_t = (1/K) Σ_{l=L−K+1}^{L} norm(a_t^l), a^l the output of block l's FFN *before*
           its last residual connection, norm = instance norm over the patch tokens of each
           image (per channel; "target_norm": "instance"), or a parameter-free layer norm
           ("layer") (§3.3 "Targets")
  loss:    smooth L1 (β) between a linear regression head on the student's final tokens and
           y_t, at masked positions only (§3.3 "Objective").

Parameters: {"encoder": ViT params, "mask_token": [1, 1, D], "head": Dense D→D}. `encode`
applies only `params["encoder"]` to the full image and returns the ViT's `pre_logits` (the
presets use `model.pool="mean"`: the mean of patch tokens, data2vec's linear-probe feature).

Config (`config.method`): mask_ratio (0.6), top_k (6 of 12 blocks for ViT-B), target_norm,
loss_beta (β of smooth L1; 2.0), ema_decay / ema_end_decay / ema_anneal_steps
(0.9998 → 0.9999 over 100k updates for ViT-B/16 in the released recipe; smaller for short runs).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import augment, masking, models
from sslx.methods import base
from sslx.models import vit as vit_lib


def instance_norm(x, eps: float = 1e-5):
  """[B, T, D] → normalised over T per (image, channel) (data2vec's instance norm)."""
  mean = x.mean(axis=1, keepdims=True)
  var = x.var(axis=1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def layer_norm(x, eps: float = 1e-5):
  """Parameter-free layer norm over the channel axis."""
  mean = x.mean(axis=-1, keepdims=True)
  var = x.var(axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def smooth_l1(pred, target, beta: float):
  """Elementwise smooth L1 (Huber / β): ½(x)²/β if |x| < β else |x| − ½β (data2vec eq. 2)."""
  d = jnp.abs(pred - target)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def masked_smooth_l1(pred, target, mask, beta: float):
  """Mean over masked positions ([B, N] bool, True = masked) and channels."""
  per_token = jnp.mean(smooth_l1(pred, target, beta), axis=-1)
  w = mask.astype(per_token.dtype)
  return jnp.sum(per_token * w) / jnp.maximum(jnp.sum(w), 1.0)


def ema_decay(step, start: float, end: float, anneal_steps: int):
  """τ: linear from `start` to `end` over `anneal_steps` updates, then `end` (§3.3)."""
  frac = jnp.clip(step / max(anneal_steps, 1), 0.0, 1.0)
  return start + (end - start) * frac


@dataclasses.dataclass(frozen=True)
class Data2Vec(base.MaskedImageMethod):
  encoder: vit_lib.ViT
  head: nn.Dense
  view: augment.ViewParams | None
  preprocess: base.Preprocess
  mask_ratio: float
  top_k: int
  target_norm: str
  loss_beta: float
  ema_start: float
  ema_end: float
  ema_anneal_steps: int

  def init(self, rng, images) -> base.Variables:
    s = self.view.crop_size if self.view is not None else images.shape[1]
    x = jnp.zeros((2, s, s, 3), jnp.float32)
    enc_rng, tok_rng, head_rng = jax.random.split(rng, 3)
    enc = self.encoder.init(enc_rng, x, train=False)["params"]
    d = self.encoder.dim
    params = {
      "encoder": enc,
      "mask_token": jax.random.normal(tok_rng, (1, 1, d)) * 0.02,
      "head": self.head.init(head_rng, jnp.zeros((1, d)))["params"],
    }
    teacher = jax.tree.map(jnp.array, enc)
    return base.Variables(params, {}, {"teacher": teacher})

  def inputs(self, rng, images):
    if self.view is None:
      return self.preprocess(images)
    return self.preprocess(augment.augment_batch(rng, images, self.view))

  def mask(self, rng, x):
    p = self.encoder.patch_size
    grid = (x.shape[1] // p, x.shape[2] // p)
    return masking.blockwise_masking(rng, x.shape[0], grid, self.mask_ratio)

  def targets(self, teacher_params, x):
    """[B, N, D] y_t: the average of the teacher's top-K normalised FFN outputs (patches)."""
    out = masking.vit_forward(self.encoder, teacher_params, x)
    norm = instance_norm if self.target_norm == "instance" else layer_norm
    layers = [norm(a[:, 1:]) for a in out["ffn_outputs"][-self.top_k :]]
    return jax.lax.stop_gradient(sum(layers) / len(layers))

  def predict(self, params, x, mask):
    """Student: ([B, N, D] regression-head predictions per patch, [B, D] pre_logits)."""
    out = masking.vit_forward(self.encoder, params["encoder"], x, mask, params["mask_token"])
    pred = self.head.apply({"params": params["head"]}, out["tokens"][:, 1:])
    return pred, out["pre_logits"]

  def loss(self, params, batch_stats, method_state, images, rng, step):
    aug_rng, mask_rng = jax.random.split(rng)
    x = self.inputs(aug_rng, images)
    mask = self.mask(mask_rng, x)
    y = self.targets(method_state["teacher"], x)
    pred, features = self.predict(params, x, mask)
    loss = masked_smooth_l1(pred, y, mask, self.loss_beta)
    metrics = {
      "loss": loss,
      "ema_decay": ema_decay(step, self.ema_start, self.ema_end, self.ema_anneal_steps),
      "target_std": jnp.mean(jnp.std(y, axis=(0, 1))),
      "pred_std": jnp.mean(jnp.std(pred, axis=(0, 1))),
    }
    return loss, base.LossAux(batch_stats, method_state, metrics, features)

  def after_update(self, params, method_state, step):
    tau = ema_decay(step, self.ema_start, self.ema_end, self.ema_anneal_steps)
    teacher = jax.tree.map(
      lambda t, s: tau * t + (1.0 - tau) * s, method_state["teacher"], params["encoder"]
    )
    return dict(method_state, teacher=teacher)

  def encode(self, params, batch_stats, images):
    """[B, D] student-encoder features of the full image (no mask token, no head)."""
    del batch_stats
    return self.encoder.apply({"params": params["encoder"]}, self.preprocess(images), train=False)[
      "pre_logits"
    ]

  def collapse_warning(self, metrics: dict) -> str | None:
    if metrics.get("pred_std", 1.0) < 1e-3:
      return (
        f"prediction std {metrics['pred_std']:.2e}: the student's outputs are "
        "collapsing to a constant"
      )
    return None


def create(config, total_steps: int) -> Data2Vec:
  m = config.method
  encoder = models.create_model(config.model.name, **base.model_kwargs(config.model))
  if not isinstance(encoder, vit_lib.ViT):
    raise ValueError(f"data2vec needs a ViT encoder (model.name vit_*), got {config.model.name!r}")
  top_k = int(m.top_k)
  if not 1 <= top_k <= encoder.depth:
    raise ValueError(f"method.top_k={top_k} must be in [1, model.depth={encoder.depth}]")
  norm = m.get("target_norm", "instance")
  if norm not in ("instance", "layer"):
    raise ValueError(f"method.target_norm={norm!r}; valid: 'instance', 'layer'")
  anneal = int(m.get("ema_anneal_steps", 0)) or int(total_steps)
  return Data2Vec(
    encoder=encoder,
    head=vit_lib.FlatDense(encoder.dim),
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
    mask_ratio=float(m.mask_ratio),
    top_k=top_k,
    target_norm=norm,
    loss_beta=float(m.get("loss_beta", 2.0)),
    ema_start=float(m.ema_decay),
    ema_end=float(m.ema_end_decay),
    ema_anneal_steps=anneal,
  )
