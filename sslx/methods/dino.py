"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Self-distillation with no labels: a student g_θs and a teacher g_θt of the same architecture
(backbone — a ViT, or a ResNet — plus :class:`sslx.models.dino_head.DINOHead` with K outputs)
both output K-dim logits; the student is trained to match the teacher's distribution

    P_t(x) = softmax((g_θt(x) − c) / τ_t),   P_s(x) = softmax(g_θs(x) / τ_s)        (eq. 1)

across views (multi-crop, §3.1): the teacher sees only the G = 2 global crops, the student all
G + N crops, and the loss sums the cross-entropy over every (teacher global view i, student
view j ≠ i) pair (eq. 3), here averaged over the G·(G + N − 1) pairs and the batch:

    L = 1/|pairs| · Σ_{(i, j), j≠i} mean_b [ −Σ_k P_t(x_i)_k · log P_s(x_j)_k ].

Collapse is avoided by *centering* and *sharpening* the teacher (§3.1, "Avoiding collapse"):
c is an EMA of the mean teacher logits over the (global) batch,

    c ← m·c + (1 − m)·1/(G·B) Σ_b g_θt(x_b)                                      (eq. 4)

(m = 0.9), and τ_t = 0.04 is low (optionally warmed up linearly from 0.04 to 0.07), τ_s = 0.1.
Centering alone pushes toward the uniform distribution and sharpening alone toward one
dominant dimension; together they balance. A collapsed network (constant output) gets, once
c has caught up with that constant, a *uniform* teacher and a loss of exactly log K.

The teacher is an EMA of the student, θt ← λ·θt + (1 − λ)·θs, λ on a cosine schedule from
0.996 to 1 (§3.1, as BYOL), in :meth:`DINO.after_update`; it gets no gradient. Teacher
params, teacher BatchNorm statistics (ResNet backbones) and the center are explicit pytrees in
``method_state`` and so are checkpointed with everything else:

  params        {"backbone", "head"}                      the student
  method_state  {"teacher": {"params", "batch_stats"}, "center": [1, K]}

Evaluation (k-NN / linear) uses the *teacher* backbone's ``pre_logits`` (the CLS token for a
ViT), as the paper does (``eval_encoder="teacher"``; "student" evaluates the student).
Attention maps (sslx.visualize) use the teacher, like the paper's figures.

Config (``config.method``):
  out_dim (K, 65536), hidden_dim (2048), bottleneck_dim (256), head_layers (3), head_bn,
  norm_last_layer (True), freeze_last_layer_steps (0; DINO freezes the prototypes for the
  first epoch: no gradient, no update, and their optimizer state untouched, so Adam starts
  fresh when they unfreeze — :meth:`EMATeacher.wrap_optimizer`), student_temp (0.1), teacher_temp (0.04), warmup_teacher_temp (0.04),
  warmup_teacher_temp_fraction (fraction of training for the linear τ_t warm-up; 0 = none),
  center_momentum (0.9), base_momentum (0.996), collapse_std (0.05), eval_encoder
  ("teacher" | "student").
Views come from ``config.augment`` via :class:`sslx.multicrop.MultiCrop` (2 global crops +
``num_local_crops``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx import models, multicrop
from sslx.methods import base
from sslx.methods.common import cosine_momentum, ema, embedding_std_metrics, std_warning
from sslx.models.dino_head import DINOHead


class DINONet(nn.Module):
  """Backbone + DINO head; local crops (another resolution) go through the backbone in a
  second pass and the head sees all views at once (DINO's MultiCropWrapper)."""

  backbone: nn.Module
  head: nn.Module

  def __call__(
    self, global_x, local_x=None, train: bool = True, freeze_last_layer=False, num_global=2
  ):
    """global_x [B·G, Sg, Sg, 3], local_x [B·N, Sl, Sl, 3] or None, both image-major →
    (backbone features of the global crops [B·G, D], head logits [B·(G + N), K], image-major:
    row i·(G + N) + v is view v of image i, the G global views first)."""
    feats = self.backbone(global_x, train=train)["pre_logits"]
    allf = feats
    if local_x is not None:
      local = self.backbone(local_x, train=train)["pre_logits"]
      allf = join_views(feats, local, num_global)
    return feats, self.head(allf, train=train, freeze_last_layer=freeze_last_layer)

  def encode(self, x, train: bool = False):
    return self.backbone(x, train=train)["pre_logits"]

  def attention(self, x):
    """Last block's attention [B, heads, T, T] (ViT backbones only)."""
    return self.backbone(x, train=False, return_attention=True)["attention"]


def join_views(global_rows, local_rows, num_global: int):
  """Global [B·G, ...] and local [B·N, ...] image-major rows -> [B·(G + N), ...], each
  image's G global then N local views: joined image by image, so a sharded batch keeps every
  image's rows on its device (a concatenation of the two row blocks would not)."""
  b = global_rows.shape[0] // num_global
  joined = jnp.concatenate(
    [
      multicrop.per_image(global_rows, num_global),
      local_rows.reshape((b, -1) + local_rows.shape[1:]),
    ],
    axis=1,
  )
  return multicrop.flat_views(joined)


# ---------------------------------------------------------------------------------------------
# The loss, as pure functions (tested against numpy).


def teacher_softmax(teacher_logits: jax.Array, center: jax.Array, temperature) -> jax.Array:
  """Centering and sharpening (eq. 1 with the center of §3.1): softmax((t − c) / τ_t).

  teacher_logits [M, K], center [1, K] → probabilities [M, K]."""
  return jax.nn.softmax((teacher_logits.astype(jnp.float32) - center) / temperature, axis=-1)


def cross_view_loss(
  student_logits: jax.Array, teacher_probs: jax.Array, num_global: int, student_temp: float
) -> jax.Array:
  """DINO eq. 3 averaged over pairs: mean over (i, j ≠ i) and the batch of
  H(P_t(x_i), P_s(x_j)).

  Args:
    student_logits: [B·V, K], image-major (row b·V + v is view v of image b); the first
      G views of each image are the global crops.
    teacher_probs: [B·G, K] centred and sharpened teacher distributions of the global crops,
      image-major.
    num_global: G.
    student_temp: τ_s.
  """
  k = student_logits.shape[-1]
  g = num_global
  b = teacher_probs.shape[0] // g
  v = student_logits.shape[0] // b
  log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
  # [G, V] cross-entropies summed over the batch: each device contracts its own images and
  # only the G x V sums are reduced across devices.
  ce = -jnp.einsum("bik,bjk->ij", teacher_probs.reshape(b, g, k), log_p.reshape(b, v, k)) / b
  pairs = multicrop.teacher_student_pairs(g, v)
  mask = np.zeros((g, v), np.float32)
  mask[tuple(np.array(pairs).T)] = 1.0  # j ≠ i
  return jnp.sum(ce * mask) / len(pairs)


def update_center(center: jax.Array, teacher_logits: jax.Array, momentum: float) -> jax.Array:
  """Eq. 4: c ← m·c + (1 − m)·mean over the global batch of the teacher logits. [1, K]."""
  mean = jnp.mean(teacher_logits.astype(jnp.float32), axis=0, keepdims=True)
  return momentum * center + (1.0 - momentum) * mean


def teacher_temperature(step, total_steps: int, start: float, end: float, warmup_fraction: float):
  """τ_t over W = round(warmup_fraction · total_steps) warm-up steps: the official code's
  ``linspace(start, end, W)`` (τ_t = `end` already at step W − 1), then `end` (DINO: 0.04 →
  0.07 over 30 epochs as an option; constant 0.04 by default)."""
  warm = int(round(warmup_fraction * total_steps))
  if warm <= 1:
    return jnp.asarray(end, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / (warm - 1), 0.0, 1.0)
  return start + (end - start) * frac


def entropy_fraction(probs: jax.Array) -> jax.Array:
  """Mean entropy of the rows of probs [M, K] divided by log K: 1 for uniform (collapse by
  centering), 0 for one-hot on one dimension (collapse by sharpening)."""
  h = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)
  return jnp.mean(h) / math.log(probs.shape[-1])


def entropy_warning(metrics: dict, low: float = 0.01, high: float = 0.995) -> str | None:
  h = metrics.get("teacher_entropy")
  if h is None:
    return None
  if h > high:
    return (
      f"teacher collapse toward uniform: its entropy is {h:.3f}·log K (centering "
      "dominates; lower teacher_temp or raise center_momentum)"
    )
  if h < low:
    return (
      f"teacher collapse toward one dimension: its entropy is {h:.3g}·log K (sharpening dominates)"
    )
  return None


# ---------------------------------------------------------------------------------------------
# Freezing the last layer in the optimizer.

LAST_LAYER_PARAMS = ("last_v", "last_g")  # DINOHead's prototypes (and their gain)
_STATISTICS_FIELDS = ("mu", "nu", "trace")  # optax moment states: Adam/Lion/RMS, momentum


def _is_statistics(node) -> bool:
  fields = getattr(node, "_fields", None)
  return fields is not None and any(f in fields for f in _STATISTICS_FIELDS)


class FrozenState(NamedTuple):
  count: jax.Array  # updates seen so far (= the global step)
  inner: Any


def frozen_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
  """`inner` for parameters frozen during the first `steps` updates.

  While frozen the update is zero (no step, no weight decay) and the optimizer's statistics
  (every state node with ``mu``/``nu``/``trace``: Adam's moments *and their count*, SGD/LARS
  momentum) stay exactly as they were, as PyTorch leaves the state of a parameter without a
  gradient. The first update after unfreezing is therefore a fresh optimizer step (Adam's bias
  correction at count 1), while schedule counters inside `inner` (learning rate, weight
  decay) keep following the global step."""

  def init(params):
    return FrozenState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    frozen = state.count < steps
    new_updates, new_inner = inner.update(updates, state.inner, params)
    new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)

    def keep(new, old):
      if _is_statistics(new):
        return jax.tree.map(lambda n, o: jnp.where(frozen, o, n), new, old)
      return new

    new_inner = jax.tree.map(keep, new_inner, state.inner, is_leaf=_is_statistics)
    return new_updates, FrozenState(state.count + 1, new_inner)

  return optax.GradientTransformation(init, update)


def last_layer_labels(params):
  """ "last_layer" for the heads' prototypes (any leaf named in LAST_LAYER_PARAMS), "rest"
  for every other leaf."""

  def label(path, _):
    names = {getattr(k, "key", None) for k in path}
    return "last_layer" if names & set(LAST_LAYER_PARAMS) else "rest"

  return jax.tree_util.tree_map_with_path(label, params)


def freeze_last_layer(tx: optax.GradientTransformation, steps: int):
  """`tx` with the heads' last layers frozen for `steps` updates (DINO: the first epoch): a
  separate optimizer state for them, paused by :func:`frozen_until`. `steps` <= 0: `tx`."""
  if steps <= 0:
    return tx
  return optax.multi_transform(
    {"rest": tx, "last_layer": frozen_until(tx, steps)}, last_layer_labels
  )


# ---------------------------------------------------------------------------------------------


def _drop_rng(rng):
  return {"dropout": rng}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EMATeacher(base.Method):
  """What DINO and DINOv2 share around their losses: the student and teacher networks (`net`
  and `teacher_net` with `encode` and `attention` methods), the multi-crop views, the EMA
  teacher update, evaluation features and attention maps, the momentum and
  teacher-temperature schedules and the settings they read (`ema_teacher_settings`);
  `method_state["teacher"]` holds the teacher's params and batch_stats."""

  net: nn.Module
  teacher_net: nn.Module  # same parameters; no stochastic depth in the teacher
  views: multicrop.MultiCrop
  preprocess: base.Preprocess
  total_steps: int
  out_dim: int
  student_temp: float
  teacher_temp: float
  warmup_teacher_temp: float
  warmup_teacher_temp_fraction: float
  center_momentum: float
  base_momentum: float
  freeze_last_layer_steps: int
  collapse_std: float
  eval_encoder: str

  EVAL_ENCODERS = ("teacher", "student")

  def momentum(self, step):
    return cosine_momentum(step, self.total_steps, self.base_momentum)

  def temperature(self, step):
    return teacher_temperature(
      step,
      self.total_steps,
      self.warmup_teacher_temp,
      self.teacher_temp,
      self.warmup_teacher_temp_fraction,
    )

  def init_inputs(self, rng, images):
    """(init rngs, two preprocessed sample images at the global crop size) for `net.init`."""
    x = self.preprocess(images[:2])
    size = self.views.global_size
    if x.shape[1] != size:
      x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
    p_rng, d_rng = jax.random.split(rng)
    return {"params": p_rng, "dropout": d_rng}, x

  def with_teacher(self, variables, **centers: int) -> base.Variables:
    """Initial Variables from the student's flax `variables`: the teacher a copy of the
    student, each named center a zero row of the given width."""
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    state = {"teacher": {"params": copy(params), "batch_stats": copy(batch_stats)}}
    state.update({name: jnp.zeros((1, dim), jnp.float32) for name, dim in centers.items()})
    return base.Variables(params, batch_stats, state)

  def wrap_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The trainer's optimizer with the heads' last layers frozen in the optimizer for the
    first `freeze_last_layer_steps` updates (their Adam state untouched; see frozen_until)."""
    return freeze_last_layer(tx, self.freeze_last_layer_steps)

  def eval_variables(self, params, batch_stats, method_state):
    """The variables evaluation encodes with: the teacher's (the paper's) or the student's."""
    if self.eval_encoder == "teacher":
      teacher = method_state["teacher"]
      return teacher["params"], teacher["batch_stats"]
    return params, batch_stats

  def after_update(self, params, method_state, step):
    """θt ← λ_k·θt + (1 − λ_k)·θs with the updated student θs (DINO §3.1)."""
    teacher = method_state["teacher"]
    new = ema(teacher["params"], params, self.momentum(step))
    return dict(method_state, teacher=dict(teacher, params=new))

  def encode(self, params, batch_stats, images):
    return self.net.apply(
      {"params": params, "batch_stats": batch_stats},
      self.preprocess(images),
      method=type(self.net).encode,
    )

  def attention_maps(self, params, batch_stats, method_state, images, which: str = "teacher"):
    """Last-layer attention [B, heads, T, T] of the teacher (default) or student ViT."""
    variables = (
      {
        "params": method_state["teacher"]["params"],
        "batch_stats": method_state["teacher"]["batch_stats"],
      }
      if which == "teacher"
      else {"params": params, "batch_stats": batch_stats}
    )
    return self.net.apply(variables, self.preprocess(images), method=type(self.net).attention)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DINO(EMATeacher):
  """DINO: EMATeacher's fields (net and teacher_net are DINONets) and the loss above."""

  def _crops(self, rng, images):
    crops = self.views(rng, images)
    local = crops.local_crops
    return (self.preprocess(crops.global_crops), None if local is None else self.preprocess(local))

  def init(self, rng, images) -> base.Variables:
    rngs, x = self.init_inputs(rng, images)
    return self.with_teacher(self.net.init(rngs, x, train=False), center=self.out_dim)

  def loss(self, params, batch_stats, method_state, images, rng, step):
    """DINO loss on multi-crop views of `images` [B, H, W, 3] (uint8)."""
    aug_rng, drop_rng = jax.random.split(rng)
    g, loc = self._crops(aug_rng, images)
    freeze = jnp.asarray(step) < self.freeze_last_layer_steps
    (feats, s_out), updates = self.net.apply(
      {"params": params, "batch_stats": batch_stats},
      g,
      loc,
      train=True,
      freeze_last_layer=freeze,
      num_global=self.views.num_global,
      mutable=["batch_stats"],
      rngs=_drop_rng(drop_rng),
    )
    method_state = jax.lax.stop_gradient(method_state)  # teacher and centers: no gradient
    teacher = method_state["teacher"]
    (_, t_out), t_updates = self.teacher_net.apply(
      {"params": teacher["params"], "batch_stats": teacher["batch_stats"]},
      g,
      None,
      train=True,
      mutable=["batch_stats"],
    )
    t_out = jax.lax.stop_gradient(t_out)  # no teacher gradient
    center = method_state["center"]
    temp = self.temperature(step)
    probs = teacher_softmax(t_out, center, temp)
    loss = cross_view_loss(s_out, probs, self.views.num_global, self.student_temp)
    new_state = {
      "teacher": {"params": teacher["params"], "batch_stats": t_updates.get("batch_stats", {})},
      "center": update_center(center, t_out, self.center_momentum),
    }
    metrics = {
      "loss": loss,
      "teacher_temp": temp,
      "teacher_entropy": entropy_fraction(probs),
      "teacher_momentum": self.momentum(step),
      **embedding_std_metrics(feats),
    }
    feats = multicrop.first_view(feats, self.views.num_global)
    return loss, base.LossAux(updates.get("batch_stats", {}), new_state, metrics, feats)

  def collapse_warning(self, metrics: dict) -> str | None:
    return entropy_warning(metrics) or std_warning(metrics, self.collapse_std)


def no_drop_path(backbone: nn.Module) -> nn.Module:
  """The teacher's copy of a backbone: same parameters, stochastic depth off (DINO builds
  its teacher without drop-path)."""
  if getattr(backbone, "drop_path_rate", 0.0):
    return backbone.clone(drop_path_rate=0.0)
  return backbone


def head_from_config(m, dtype: str = "float32") -> DINOHead:
  """The projection head `config.method` (or a dict of its settings) describes, computing in
  the encoder's `dtype`."""
  return DINOHead(
    dtype=dtype,
    out_dim=int(m["out_dim"]),
    hidden_dim=int(m["hidden_dim"]),
    bottleneck_dim=int(m["bottleneck_dim"]),
    nlayers=int(m["head_layers"]),
    use_bn=bool(m["head_bn"]),
    norm_last_layer=bool(m["norm_last_layer"]),
  )


# What `python -m sslx.main` draws from the final checkpoint: the teacher's last-layer
# attention of each head on test images (DINO Fig. 1, 3).
PICTURES = ("attention",)


# The paper's ViT-S/16 settings (§4, Appendix): a 3-layer head (2048 hidden, 256 bottleneck,
# 65,536 prototypes, weight-normalised last layer), τ_s 0.1, τ_t 0.04, center momentum 0.9,
# teacher momentum 0.996 → 1; evaluation uses the teacher. The cifar10/imagenet presets freeze
# the last layer for the first epoch (freeze_last_layer_steps).
# fmt: off
DEFAULTS = dict(
  out_dim=65536, hidden_dim=2048, bottleneck_dim=256, head_layers=3, head_bn=False,
  norm_last_layer=True, freeze_last_layer_steps=0, student_temp=0.1, teacher_temp=0.04,
  warmup_teacher_temp=0.04, warmup_teacher_temp_fraction=0.0, center_momentum=0.9,
  base_momentum=0.996, collapse_std=0.05, eval_encoder="teacher",
)
# fmt: on


def ema_teacher_settings(config, total_steps: int, backbone: nn.Module, net) -> dict:
  """EMATeacher's fields from `config`: the student `net(backbone)` and the teacher
  `net(no_drop_path(backbone))`, the views, preprocessing and the typed settings of
  `config.method` the two methods share."""
  m = config.method
  return dict(
    net=net(backbone),
    teacher_net=net(no_drop_path(backbone)),
    views=multicrop.MultiCrop.from_config(config.augment, num_global=2),
    preprocess=base.Preprocess.from_config(config.dataset),
    total_steps=int(total_steps),
    **base.read_settings(
      EMATeacher,
      m,
      "out_dim student_temp teacher_temp warmup_teacher_temp warmup_teacher_temp_fraction "
      "center_momentum base_momentum freeze_last_layer_steps collapse_std",
    ),
    eval_encoder=base.check_eval_encoder(m.eval_encoder, EMATeacher.EVAL_ENCODERS),
  )


def create(config, total_steps: int) -> DINO:
  backbone = models.create_model(config.model.name, **base.model_kwargs(config.model))
  head = head_from_config(config.method, config.model.get("dtype", "float32"))
  return DINO(**ema_teacher_settings(config, total_steps, backbone, lambda b: DINONet(b, head)))
