"""data2vec for images (Baevski et al. 2022, "data2vec: A General Framework for
Self-supervised Learning in Speech, Vision and Language").

  student: the ViT on the image with blockwise-masked patches replaced by a learned mask
           token (all N tokens stay in the sequence, §3.2 "Vision"; masking as BEiT, 60%):
           the ViT's own masked forward, in training mode (stochastic depth applies)
  teacher: an EMA copy of the student's encoder on the *unmasked* image (§3.3; in eval
           mode, no stochastic depth), in
           `method_state["teacher"]`, updated in `after_update` with Δ ← τΔ + (1 − τ)θ,
           τ rising linearly from τ0 to τe over `ema_anneal_steps`, then constant (§3.3)
  targets: the vision recipe of the released code (data2vec_vision: `layer_results="end"`,
           a layer norm on each target layer, `post_target_layer_norm`):
             y_t = LN( (1/K) Σ_{l=L−K+1}^{L} LN(a_t^l) ),
           a^l the output of block l (the residual stream after it, before the ViT's final
           norm), LN a parameter-free layer norm over channels (eps 1e-5) ("target_norm":
           "layer"). "instance" is the speech recipe's normalisation instead: an instance norm
           over the patch tokens of each image per channel on each layer, then the average
           (§3.3 "Targets"); "instance_layer" is data2vec 2.0's image recipe (its released
           `instance_norm_target_layer` and `layer_norm_targets`): that average, layer-normed
  loss:    smooth L1 (β) between a linear regression head on the student's final tokens and
           y_t, at masked positions only (§3.3 "Objective").

`student="visible"` is data2vec 2.0's student instead (Baevski et al. 2023, "Efficient
Self-supervised Learning with Contextualized Target Representations for Vision, Speech and
Language", §3): the encoder sees only the visible patches (no mask tokens, as MAE's), and a
light decoder fills the masked positions with a learned token, adds position embeddings and
predicts y_t for every patch; the loss is still taken at masked positions. The decoder here is
MAE's transformer decoder (`decoder_dim/depth/heads`) with D outputs per patch where the paper
uses a few convolutions. The encoder thus never trains on mask tokens it will not meet at
evaluation, the first-run default's choice. Parameters are then {"encoder", "decoder"}.

Parameters: {"encoder": ViT params, "mask_token": [1, 1, D], "head": Dense D→D}. `encode`
applies only `params["encoder"]` to the full image and returns the ViT's `pre_logits` (the
presets use `model.pool="mean"`: the mean of patch tokens, data2vec's linear-probe feature).
Evaluation uses the student (`method.eval_encoder="student"`, the paper's; "teacher" evaluates
the EMA encoder instead).

Config (`config.method`): mask_ratio (0.6), top_k (6 of 12 blocks for ViT-B), target_norm
("layer" | "instance" | "instance_layer"), loss_beta (β of smooth L1; 2.0; 0: squared
error), ema_decay / ema_end_decay / ema_anneal_steps (0.9998 constant for ViT-B/16 in the
released recipe; smaller for short runs), eval_encoder ("student" | "teacher"), student
("masked": data2vec's ViT on all tokens with mask tokens | "visible": data2vec 2.0's encoder
on the visible patches and a decoder), decoder_dim / decoder_depth / decoder_heads (the
"visible" student's decoder), num_masks (data2vec 2.0's multi-mask training, M: each image's
teacher targets are computed once and the student sees M independently masked copies of it,
the loss averaged over all; 1: off).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import augment, losses, masking, models
from sslx.methods import base, mae
from sslx.models import vit as vit_lib

EVAL_ENCODERS = ("student", "teacher")
STUDENTS = ("masked", "visible")


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


TARGET_NORMS = ("layer", "instance", "instance_layer")


def average_targets(layers, target_norm: str = "layer"):
  """data2vec's target from the top-K layer outputs (each [B, N, D]): "layer" (vision):
  LN(mean_l LN(a^l)); "instance" (speech): mean_l IN(a^l); "instance_layer" (data2vec 2.0's
  image recipe): LN(mean_l IN(a^l)). Parameter-free norms, eps 1e-5."""
  if target_norm == "layer":
    return layer_norm(sum(layer_norm(a) for a in layers) / len(layers))
  if target_norm == "instance":
    return sum(instance_norm(a) for a in layers) / len(layers)
  if target_norm == "instance_layer":
    return layer_norm(sum(instance_norm(a) for a in layers) / len(layers))
  raise ValueError(f"target_norm={target_norm!r}; valid: {TARGET_NORMS}")


def smooth_l1(pred, target, beta: float):
  """Elementwise smooth L1 (Huber / β): ½(x)²/β if |x| < β else |x| − ½β (data2vec eq. 2);
  β = 0 is data2vec's L2 loss, x² (fairseq's `mse_loss`), not the β → 0 limit's |x|."""
  if beta == 0:
    return jnp.square(pred - target)
  d = jnp.abs(pred - target)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def _check_beta(beta: float) -> float:
  if beta < 0:
    raise ValueError(f"method.loss_beta={beta} must be >= 0 (0: the squared error)")
  return beta


def masked_smooth_l1(pred, target, mask, beta: float):
  """Mean over masked positions ([B, N] bool, True = masked) and channels."""
  return losses.masked_mean(jnp.mean(smooth_l1(pred, target, beta), axis=-1), mask)


def ema_decay(step, start: float, end: float, anneal_steps: int):
  """τ: linear from `start` to `end` over `anneal_steps` updates, then `end` (§3.3)."""
  frac = jnp.clip(step / max(anneal_steps, 1), 0.0, 1.0)
  return start + (end - start) * frac


@dataclasses.dataclass(frozen=True)
class Data2Vec(base.MaskTokenMethod):
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
  eval_encoder: str = "student"
  decoder: mae.MAEDecoder | None = None  # set iff the student sees only visible patches
  num_masks: int = 1  # masked copies of each image per step, one teacher pass (data2vec 2.0)

  def init(self, rng, images) -> base.Variables:
    if self.decoder is None:
      params = self.init_params(rng, images)
    else:
      s = self.view.crop_size if self.view is not None else images.shape[1]
      enc_rng, dec_rng = jax.random.split(rng)
      x = jnp.zeros((2, s, s, 3), jnp.float32)
      n = (s // self.encoder.patch_size) ** 2
      params = {
        "encoder": self.encoder.init(enc_rng, x, train=False)["params"],
        "decoder": mae.init_decoder(self.decoder, dec_rng, self.encoder.dim, n, self.mask_ratio),
      }
    teacher = jax.tree.map(jnp.array, params["encoder"])
    return base.Variables(params, {}, {"teacher": teacher})

  def predict_visible(self, params, x, mask, rng):
    """data2vec 2.0's student: ([B, N, D] decoder predictions, [B, D] pre_logits of the
    visible patches) for normalised x and mask [B, N] (True = masked, the same count per row)."""
    n = mask.shape[1]
    hidden = masking.num_masked(n, self.mask_ratio)
    ids_keep = masking.ids_of_mask(mask, n - hidden, value=False)
    ids_shuffle = jnp.concatenate([ids_keep, masking.ids_of_mask(mask, hidden)], axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    out = self.encoder.apply(
      {"params": params["encoder"]}, x, train=True, mask=ids_keep, rngs={"dropout": rng}
    )
    pred = self.decoder.apply({"params": params["decoder"]}, out["tokens"], ids_restore)
    return pred, out["pre_logits"]

  def inputs(self, rng, images):
    if self.view is None:
      return self.preprocess(images)
    return self.preprocess(augment.augment_batch(rng, images, self.view))

  def targets(self, teacher_params, x):
    """[B, N, D] y_t of the patches from the teacher's top-K block outputs (module docstring)."""
    out = self.encoder.apply({"params": teacher_params}, x, train=False, return_blocks=True)
    top = [a[:, 1:] for a in out["block_outputs"][-self.top_k :]]
    return jax.lax.stop_gradient(average_targets(top, self.target_norm))

  def loss(self, params, batch_stats, method_state, images, rng, step):
    aug_rng, mask_rng, drop_rng = jax.random.split(rng, 3)
    x = self.inputs(aug_rng, images)
    y = self.targets(method_state["teacher"], x)
    if self.num_masks > 1:
      # data2vec 2.0's multi-mask training: M differently masked copies of each image share
      # one teacher pass (its targets are tiled); copies are image-major, [b0, b0, ..., b1, ...]
      x = jnp.repeat(x, self.num_masks, axis=0)
      y = jnp.repeat(y, self.num_masks, axis=0)
    mask = self.mask(mask_rng, x)
    if self.decoder is None:
      pred, features = self.predict(params, x, mask, drop_rng)
    else:
      pred, features = self.predict_visible(params, x, mask, drop_rng)
    loss = masked_smooth_l1(pred, y, mask, self.loss_beta)
    if self.num_masks > 1:  # the online probe's features: one per image (its first copy)
      features = features[:: self.num_masks]
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

  def eval_variables(self, params, batch_stats, method_state):
    """The variables `encode` evaluates: the student's (the paper's) or the EMA teacher's."""
    if self.eval_encoder == "teacher":
      return dict(params, encoder=method_state["teacher"]), batch_stats
    return params, batch_stats

  def collapse_warning(self, metrics: dict) -> str | None:
    if metrics.get("pred_std", 1.0) < 1e-3:
      return (
        f"prediction std {metrics['pred_std']:.2e}: the student's outputs are "
        "collapsing to a constant"
      )
    return None


# data2vec ViT-B (vision release): 60% masking, targets from the top 6 blocks, smooth-L1 β = 2,
# EMA 0.9998 constant; evaluation encodes with the student.
# fmt: off
DEFAULTS = dict(
  mask_ratio=0.6, top_k=6, target_norm="layer", loss_beta=2.0, ema_decay=0.9998,
  ema_end_decay=0.9998, ema_anneal_steps=0, eval_encoder="student", student="masked",
  decoder_dim=256, decoder_depth=2, decoder_heads=8, num_masks=1,
)
# fmt: on


def create(config, total_steps: int) -> Data2Vec:
  m = config.method
  encoder = models.create_model(config.model.name, **base.model_kwargs(config.model))
  if not isinstance(encoder, vit_lib.ViT):
    raise ValueError(f"data2vec needs a ViT encoder (model.name vit_*), got {config.model.name!r}")
  top_k = int(m.top_k)
  if not 1 <= top_k <= encoder.depth:
    raise ValueError(f"method.top_k={top_k} must be in [1, model.depth={encoder.depth}]")
  norm = m.target_norm
  if norm not in TARGET_NORMS:
    raise ValueError(f"method.target_norm={norm!r}; valid: {TARGET_NORMS}")
  eval_encoder = base.check_eval_encoder(m.eval_encoder, EVAL_ENCODERS)
  anneal = int(m.ema_anneal_steps) or int(total_steps)
  if m.student not in STUDENTS:
    raise ValueError(f"method.student={m.student!r}; valid: {STUDENTS}")
  decoder = None
  if m.student == "visible":
    if not 0.0 < float(m.mask_ratio) < 1.0:
      raise ValueError(f"method.mask_ratio={m.mask_ratio} must be in (0, 1) for a visible student")
    decoder = mae.decoder_from_config(config, encoder, out_dim=encoder.dim)
  return Data2Vec(
    encoder=encoder,
    head=vit_lib.FlatDense(encoder.dim),
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
    mask_ratio=float(m.mask_ratio),
    top_k=top_k,
    target_norm=norm,
    loss_beta=_check_beta(float(m.loss_beta)),
    ema_start=float(m.ema_decay),
    ema_end=float(m.ema_end_decay),
    ema_anneal_steps=anneal,
    eval_encoder=eval_encoder,
    decoder=decoder,
    num_masks=_check_num_masks(int(m.num_masks)),
  )


def _check_num_masks(num_masks: int) -> int:
  if num_masks < 1:
    raise ValueError(f"method.num_masks={num_masks} must be >= 1")
  return num_masks
