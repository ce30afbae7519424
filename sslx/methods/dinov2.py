"""DINOv2-style self-distillation (Oquab et al. 2023, "DINOv2: Learning Robust Visual Features
without Supervision", §4), i.e. DINO + iBOT + KoLeo, with Sinkhorn-Knopp centering optional.

Student and EMA teacher are ViTs with a :class:`~sslx.models.dino_head.DINOHead` on the CLS
token and an iBOT head on the patch tokens (shared with the DINO head unless
``separate_ibot_head``). The demo CNN (:class:`~sslx.models.convnet.ConvNet`) also works: its
pooled features take the CLS token's place, the cells of its last block (a 4x4 grid of 8 px
cells on 32 px crops) the patch tokens', and a learned pixel colour over a masked cell the mask
token's (dense masking, as SimMIM masks convolutional encoders). The loss is

    L = w_dino·L_DINO + w_ibot·L_iBOT + w_koleo·Σ_{global crops} L_KoLeo

* **L_DINO** (image level): DINO's cross-view loss (sslx.methods.dino, eq. 3 there): teacher
  CLS distributions of the 2 *unmasked* global crops against the student CLS distributions of
  every other view (its masked global crops and the N local crops), averaged over pairs.
* **L_iBOT** (patch level; Zhou et al. 2022, "iBOT", eq. 2): random patches of the student's
  global crops are replaced by a learned mask token (BEiT/iBOT, before the position embedding);
  the teacher sees the same crops unmasked. At each *masked* position the student's patch
  distribution is trained toward the teacher's at the same position of the same crop:

      L_iBOT = mean over crops and images of
               [ Σ_{n masked} −P_t(patch n)·log P_s(masked patch n) ] / max(#masked, 1).

  Unmasked positions do not enter the loss. Masks: each global crop is masked with
  probability ``mask_probability`` (0.5), then a fraction r ~ U(``mask_ratio``) = U(0.1, 0.5)
  of its patches (random positions; DINOv2 samples blocks — random positions keep the shapes
  trivially static). For compute, the heads run only on the ⌊r_max·N⌋ first masked positions
  of each crop (a static count), with a validity weight.
* **L_KoLeo** (Sablayrolles et al. 2019; DINOv2 §4, eq. 5) spreads the student's L2-normalised
  CLS features of each global crop over the batch:
  L_KoLeo = −1/n Σ_i log(d_{n,i}), d_{n,i} = min_{j≠i} ||x_i − x_j||, within consecutive
  groups of ``koleo_group_size`` images (DINOv2 computes it per GPU; 64 is its per-GPU batch),
  averaged over the groups, so the loss and its weight do not depend on the device count.
* **Centering**: ``centering="center"`` (DINO: running center c, eq. 4 there; a separate center
  for the patch distributions, updated with the masked teacher patches) or
  ``centering="sinkhorn_knopp"`` (SwAV's Sinkhorn-Knopp, DINOv2's choice): the teacher
  distributions Q = exp(t/τ_t) are alternately normalised over prototypes and over samples
  (3 iterations) so every sample's row sums to 1 and every prototype gets an equal share
  B/K of the batch — over the *global* batch.

Layout: params {"backbone", "dino_head"[, "ibot_head"]}; method_state {"teacher": {"params",
"batch_stats"}, "center": [1, K], "patch_center": [1, K_patch]}. The teacher moves only by EMA
(:meth:`DINOv2.after_update`); evaluation uses the teacher backbone's CLS token, as the paper
(``eval_encoder``: "teacher" | "student").

DINOv2 recipe pieces not reproduced here: block masking, layer-wise lr decay, SwiGLU FFN and
registers (the trainer and ViT do not have them). The weight-decay schedule and gradient
clipping are the optimizer's (`optimizer.weight_decay_end`, `optimizer.grad_clip_norm`).

Config (``config.method``): DINO's keys (out_dim, hidden_dim, bottleneck_dim, head_layers,
norm_last_layer, freeze_last_layer_steps, student_temp, teacher_temp, warmup_teacher_temp,
warmup_teacher_temp_fraction, center_momentum, base_momentum) plus patch_out_dim (= out_dim),
separate_ibot_head (False), centering ("center" | "sinkhorn_knopp"), sinkhorn_iterations (3),
dino_loss_weight (1), ibot_loss_weight (1), koleo_loss_weight (0.1), koleo_group_size (64;
0 = the whole global batch), mask_probability (0.5),
mask_ratio ((0.1, 0.5)).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import losses, models, multicrop
from sslx.methods import base
from sslx.methods.common import embedding_std_metrics, std_warning
from sslx.methods.dino import (
  EMATeacher,
  cross_view_loss,
  ema_teacher_settings,
  entropy_fraction,
  entropy_warning,
  head_from_config,
  join_views,
  teacher_softmax,
  update_center,
)
from sslx.models.convnet import ConvNet
from sslx.models.vit import ViT


def masked_backbone(net: ViT | ConvNet) -> ViT | ConvNet:
  """`net` with iBOT's learned mask token: ``token_mask`` [B, N] bool (True = masked) replaces
  those patches -- a ViT's patch embeddings before the position embedding (a ``mask_token``
  [1, 1, dim]), a ConvNet's pixel cells before the first convolution (a ``mask_token`` [3]
  colour) -- both zeros at init, as DINOv2, so the network still outputs a token at every
  masked position. Parameters are the network's (same names) plus ``mask_token``; with no mask
  the function is exactly the network's (dtype and remat settings kept)."""
  if not isinstance(net, ViT | ConvNet):
    raise ValueError(
      "DINOv2 needs a backbone with patch tokens: a ViT (model.name=vit_*) or the demo CNN "
      f"(model.name=convnet), got {type(net).__name__}"
    )
  return net.clone(mask_token=True, num_classes=0)


def cls_features(out: dict) -> jax.Array:
  """The image-level features of a backbone's outputs: a ViT's CLS token (after the final
  norm), a CNN's pooled features."""
  return out["tokens"][:, 0] if "tokens" in out else out["pre_logits"]


class DINOv2Net(nn.Module):
  backbone: ViT | ConvNet
  dino_head: nn.Module
  ibot_head: nn.Module | None = None  # None: the DINO head also maps patch tokens

  def __call__(
    self,
    global_x,
    local_x=None,
    token_mask=None,
    patch_ids=None,
    train: bool = True,
    freeze_last_layer=False,
    num_global=2,
  ):
    """Args (rows image-major, as :mod:`sslx.multicrop` makes them):
      global_x [B·G, S, S, 3]; local_x [B·N, s, s, 3] or None;
      token_mask [B·G, P] bool (student: masked patches) or None (teacher);
      patch_ids [B·G, M] int: the patch positions whose head outputs are returned.

    Returns: (CLS features of the global crops [B·G, D], CLS logits [B·(G + N), K] (each
      image's G global views, then its N local ones), patch logits [B·G, M, K_patch] at
      `patch_ids`, or None when patch_ids is None).
    """
    out = self.backbone(global_x, train=train, token_mask=token_mask)
    cls = cls_features(out)
    allc = cls
    if local_x is not None:
      allc = join_views(cls, cls_features(self.backbone(local_x, train=train)), num_global)
    cls_logits = self.dino_head(allc, train=train, freeze_last_layer=freeze_last_layer)
    patch_logits = None
    if patch_ids is not None:
      patches = jnp.take_along_axis(out["patch_tokens"], patch_ids[..., None], axis=1)
      m, k, d = patches.shape
      head = self.ibot_head if self.ibot_head is not None else self.dino_head
      patch_logits = head(
        patches.reshape(m * k, d), train=train, freeze_last_layer=freeze_last_layer
      ).reshape(m, k, -1)
    return cls, cls_logits, patch_logits

  def encode(self, x, train: bool = False):
    return cls_features(self.backbone(x, train=train))

  def attention(self, x):
    """Last block's attention [B, heads, T, T] (ViT backbones only)."""
    return self.backbone(x, train=False, return_attention=True)["attention"]


# ---------------------------------------------------------------------------------------------
# Loss pieces (pure; tested against numpy).


def sinkhorn_knopp(
  teacher_logits: jax.Array, temperature, num_iters: int = 3, weights: jax.Array | None = None
) -> jax.Array:
  """Sinkhorn-Knopp teacher distributions (SwAV, Caron et al. 2020, §3.1 and Alg. 1; DINOv2).

  Q = exp(t / τ) over M samples × K prototypes, normalised to total mass 1, then `num_iters`
  times: each prototype's column scaled to mass 1/K, then each sample's row to mass 1/M;
  finally rows are scaled by M so that each sample's distribution sums to 1 (and each
  prototype's column sums to ≈ M/K).

  Args:
    teacher_logits: [M, K] over the global batch.
    temperature: τ_t.
    num_iters: iterations (3 in SwAV/DINOv2).
    weights: optional [M] 0/1 validity (iBOT's masked patches); invalid rows come back 0 and
      M is the number of valid rows.
  Returns:
    [M, K] distributions (rows sum to 1).
  """
  t = teacher_logits.astype(jnp.float32) / temperature
  # A global shift leaves the normalised result unchanged and keeps exp() finite.
  t = t - jax.lax.stop_gradient(jnp.max(t))
  q = jnp.exp(t)
  m, k = q.shape
  if weights is None:
    n = jnp.asarray(m, jnp.float32)
  else:
    w = weights.astype(jnp.float32)
    q = q * w[:, None]
    n = jnp.maximum(jnp.sum(w), 1.0)
  tiny = 1e-30
  q = q / jnp.maximum(jnp.sum(q), tiny)
  for _ in range(num_iters):
    q = q / jnp.maximum(jnp.sum(q, axis=0, keepdims=True), tiny) / k  # prototypes: 1/K each
    q = q / jnp.maximum(jnp.sum(q, axis=1, keepdims=True), tiny) / n  # samples: 1/M each
  return q * n


def ibot_loss(
  student_patch_logits: jax.Array,
  teacher_patch_probs: jax.Array,
  mask: jax.Array,
  student_temp: float,
) -> jax.Array:
  """iBOT's masked-patch loss (Zhou et al. 2022, eq. 2; DINOv2's normalisation).

  Args:
    student_patch_logits: [M, P, K] student logits at P patch positions of M crops.
    teacher_patch_probs: [M, P, K] teacher distributions at the same positions.
    mask: [M, P] bool/0-1: True where the student's patch was masked. Only these positions
      enter the loss.
    student_temp: τ_s.
  Returns:
    mean over the M crops of Σ_{masked n} H(P_t, P_s)_n / max(#masked, 1).
  """
  w = mask.astype(jnp.float32)
  log_p = jax.nn.log_softmax(student_patch_logits.astype(jnp.float32) / student_temp, -1)
  ce = -jnp.sum(teacher_patch_probs * log_p, axis=-1)  # [M, P]
  ce = jnp.where(w > 0, ce, 0.0)  # no leak from others
  per_crop = jnp.sum(ce * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)
  return jnp.mean(per_crop)


def update_patch_center(center, patch_logits, weights, momentum: float) -> jax.Array:
  """iBOT/DINOv2's patch center: c ← m·c + (1 − m)·mean of the teacher logits of the masked
  patches. patch_logits [M, K], weights [M] 0/1 (the masked ones); no masked patch: c kept."""
  w = weights.astype(jnp.float32)[:, None]
  mean = jnp.sum(patch_logits.astype(jnp.float32) * w, 0, keepdims=True) / jnp.maximum(
    jnp.sum(w), 1.0
  )
  return jnp.where(jnp.sum(w) > 0, momentum * center + (1 - momentum) * mean, center)


def koleo_loss(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """KoLeo (Sablayrolles et al. 2019; DINOv2 eq. 5): −mean_i log(min_{j≠i} ||x̂_i − x̂_j||)
  over the rows of x [n, D] after L2 normalisation (the global batch)."""
  x = losses.l2_normalize(x.astype(jnp.float32), eps=eps * eps)
  dots = x @ x.T
  n = x.shape[0]
  dots = jnp.where(jnp.eye(n, dtype=bool), -2.0, dots)  # never yourself
  nearest = jax.lax.stop_gradient(jnp.argmax(dots, axis=1))  # max cos = min dist
  dist = jnp.linalg.norm(x - x[nearest] + eps, axis=-1)  # torch pairwise_distance
  return -jnp.mean(jnp.log(dist + eps))


def grouped_koleo_loss(x: jax.Array, group_size: int) -> jax.Array:
  """KoLeo over consecutive groups of `group_size` rows of x [n, D], averaged over the groups
  (DINOv2 computes it on each GPU's batch): the value and its weight do not change with the
  number of devices. n <= group_size: one group, the whole batch."""
  n = x.shape[0]
  if group_size <= 0 or n <= group_size:
    return koleo_loss(x)
  if n % group_size:
    raise ValueError(f"KoLeo: {n} rows are not a multiple of method.koleo_group_size={group_size}")
  groups = x.reshape(n // group_size, group_size, x.shape[-1])
  return jnp.mean(jax.vmap(koleo_loss)(groups))


def random_token_masks(
  rng, num_images: int, num_patches: int, probability: float, ratio: tuple[float, float]
) -> jax.Array:
  """[num_images, num_patches] bool: each image is masked with `probability`, then
  ⌊r·P⌋ random patches with r ~ U(ratio)."""
  k_apply, k_ratio, k_pos = jax.random.split(rng, 3)
  apply = jax.random.uniform(k_apply, (num_images,)) < probability
  r = jax.random.uniform(k_ratio, (num_images,), minval=ratio[0], maxval=ratio[1])
  count = jnp.where(apply, jnp.floor(r * num_patches), 0.0).astype(jnp.int32)
  scores = jax.random.uniform(k_pos, (num_images, num_patches))
  rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
  return rank < count[:, None]


def masked_positions(token_mask: jax.Array, max_masked: int) -> tuple[jax.Array, jax.Array]:
  """The first `max_masked` masked positions of each row (in index order), padded with
  unmasked ones: (ids [M, max_masked] int32, valid [M, max_masked] bool)."""
  ids = jnp.argsort(~token_mask, axis=1, stable=True)[:, :max_masked].astype(jnp.int32)
  return ids, jnp.take_along_axis(token_mask, ids, axis=1)


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class DINOv2(EMATeacher):
  """EMATeacher's fields (net and teacher_net are DINOv2Nets) and those of iBOT and KoLeo."""

  patch_out_dim: int
  patch_size: int
  centering: str
  sinkhorn_iterations: int
  dino_loss_weight: float
  ibot_loss_weight: float
  koleo_loss_weight: float
  koleo_group_size: int
  mask_probability: float
  mask_ratio: tuple[float, float]

  @property
  def num_patches(self) -> int:
    return (self.views.global_size // self.patch_size) ** 2

  @property
  def max_masked(self) -> int:
    return int(self.mask_ratio[1] * self.num_patches)

  def init(self, rng, images) -> base.Variables:
    rngs, x = self.init_inputs(rng, images)
    ids = jnp.zeros((2, max(self.max_masked, 1)), jnp.int32)
    variables = self.net.init(
      rngs,
      x,
      token_mask=jnp.zeros((2, self.num_patches), bool),
      patch_ids=ids,
      train=False,
    )
    return self.with_teacher(variables, center=self.out_dim, patch_center=self.patch_out_dim)

  def loss(self, params, batch_stats, method_state, images, rng, step):
    n = images.shape[0]
    aug_rng, mask_rng, drop_rng = jax.random.split(rng, 3)
    crops = self.views(aug_rng, images)
    g = self.preprocess(crops.global_crops)
    loc = None if crops.local_crops is None else self.preprocess(crops.local_crops)
    num_g = self.views.num_global
    token_mask = random_token_masks(
      mask_rng, num_g * n, self.num_patches, self.mask_probability, self.mask_ratio
    )
    use_ibot = self.max_masked > 0 and self.ibot_loss_weight > 0
    ids = valid = None
    if use_ibot:
      ids, valid = masked_positions(token_mask, self.max_masked)
    freeze = jnp.asarray(step) < self.freeze_last_layer_steps
    (cls, s_cls, s_patch), updates = self.net.apply(
      {"params": params, "batch_stats": batch_stats},
      g,
      loc,
      token_mask=token_mask,
      patch_ids=ids,
      train=True,
      freeze_last_layer=freeze,
      num_global=num_g,
      mutable=["batch_stats"],
      rngs={"dropout": drop_rng},
    )
    method_state = jax.lax.stop_gradient(method_state)  # teacher and centers: no gradient
    teacher = method_state["teacher"]
    (_, t_cls, t_patch), t_updates = self.teacher_net.apply(
      {"params": teacher["params"], "batch_stats": teacher["batch_stats"]},
      g,
      None,
      token_mask=None,
      patch_ids=ids,
      train=True,
      mutable=["batch_stats"],
    )
    t_cls = jax.lax.stop_gradient(t_cls)
    temp = self.temperature(step)
    center, patch_center = method_state["center"], method_state["patch_center"]
    if self.centering == "sinkhorn_knopp":
      t_probs = sinkhorn_knopp(t_cls, temp, self.sinkhorn_iterations)
    else:
      t_probs = teacher_softmax(t_cls, center, temp)
    dino = cross_view_loss(s_cls, t_probs, num_g, self.student_temp)
    metrics = {
      "dino_loss": dino,
      "teacher_temp": temp,
      "teacher_entropy": entropy_fraction(t_probs),
      "teacher_momentum": self.momentum(step),
      "masked_fraction": jnp.mean(token_mask.astype(jnp.float32)),
      **embedding_std_metrics(cls),
    }
    loss = self.dino_loss_weight * dino
    new_center = update_center(center, t_cls, self.center_momentum)
    new_patch_center = patch_center
    if use_ibot:
      t_patch = jax.lax.stop_gradient(t_patch)
      m, k, kp = t_patch.shape
      flat, w = t_patch.reshape(m * k, kp), valid.reshape(m * k)
      if self.centering == "sinkhorn_knopp":
        tp_probs = sinkhorn_knopp(flat, temp, self.sinkhorn_iterations, weights=w)
      else:
        tp_probs = teacher_softmax(flat, patch_center, temp)
      ibot = ibot_loss(s_patch, tp_probs.reshape(m, k, kp), valid, self.student_temp)
      new_patch_center = update_patch_center(patch_center, flat, w, self.center_momentum)
      loss = loss + self.ibot_loss_weight * ibot
      metrics["ibot_loss"] = ibot
    if self.koleo_loss_weight > 0:
      per_view = multicrop.per_image(cls, num_g)  # [B, G, D]
      koleo = sum(grouped_koleo_loss(per_view[:, i], self.koleo_group_size) for i in range(num_g))
      loss = loss + self.koleo_loss_weight * koleo
      metrics["koleo_loss"] = koleo
    metrics["loss"] = loss
    new_state = {
      "teacher": {"params": teacher["params"], "batch_stats": t_updates.get("batch_stats", {})},
      "center": new_center,
      "patch_center": new_patch_center,
    }
    features = multicrop.first_view(cls, num_g)
    return loss, base.LossAux(updates.get("batch_stats", {}), new_state, metrics, features)

  def collapse_warning(self, metrics: dict) -> str | None:
    if self.centering == "sinkhorn_knopp":
      return std_warning(metrics, self.collapse_std)  # SK keeps the entropy high by design
    return entropy_warning(metrics) or std_warning(metrics, self.collapse_std)


CENTERINGS = ("center", "sinkhorn_knopp")


# What `python -m sslx.main` draws from the final checkpoint: the teacher's last-layer
# attention of each head on test images (DINO Fig. 1, 3).
PICTURES = ("attention",)


# DINOv2's settings: DINO's head and teacher plus an iBOT head of patch_out_dim prototypes
# (shared with the DINO head unless separate_ibot_head), centering by the mean or by
# Sinkhorn-Knopp, loss weights DINO 1 / iBOT 1 / KoLeo 0.1 (KoLeo over groups of 64, the
# per-GPU batch), half of the global crops masked at 10-50% of their patches, the teacher
# temperature warmed from 0.04 to 0.07 over the first 30% of the run (30 of 100 epochs).
# fmt: off
DEFAULTS = dict(
  out_dim=65536, patch_out_dim=65536, separate_ibot_head=False, hidden_dim=2048,
  bottleneck_dim=256, head_layers=3, head_bn=False, norm_last_layer=True,
  freeze_last_layer_steps=0, student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
  warmup_teacher_temp_fraction=0.3, center_momentum=0.9, base_momentum=0.992,
  centering="center", sinkhorn_iterations=3, dino_loss_weight=1.0, ibot_loss_weight=1.0,
  koleo_loss_weight=0.1, koleo_group_size=64, mask_probability=0.5, mask_ratio=(0.1, 0.5),
  collapse_std=0.05, eval_encoder="teacher",
)
# fmt: on


def create(config, total_steps: int) -> DINOv2:
  m = config.method
  backbone = masked_backbone(
    models.create_model(config.model.name, **base.model_kwargs(config.model))
  )
  centering = m.centering
  if centering not in CENTERINGS:
    raise ValueError(f"method.centering={centering!r}; valid choices: {list(CENTERINGS)}")
  global_size = multicrop.MultiCrop.from_config(config.augment, num_global=2).global_size
  if global_size % backbone.patch_size:
    raise ValueError(
      f"global crop size {global_size} is not divisible by the patch size {backbone.patch_size}"
    )
  dtype = config.model.get("dtype", "float32")
  dino_head = head_from_config(m, dtype)
  patch_out = int(m.patch_out_dim)
  ibot_head = None
  if m.separate_ibot_head:
    ibot_head = head_from_config(dict(m.to_dict(), out_dim=patch_out), dtype)
  elif patch_out != dino_head.out_dim:
    raise ValueError("patch_out_dim differs from out_dim: set separate_ibot_head=True")
  koleo_group = int(m.koleo_group_size)
  batch = int(config.batch_size)
  if koleo_group < 0 or (0 < koleo_group < batch and batch % koleo_group):
    raise ValueError(
      f"method.koleo_group_size={koleo_group} must divide batch_size={batch} (or be >= it, "
      "or 0 for the whole batch)"
    )
  net = lambda b: DINOv2Net(b, dino_head, ibot_head)  # noqa: E731
  return DINOv2(
    **ema_teacher_settings(config, total_steps, backbone, net),
    patch_out_dim=patch_out,
    patch_size=backbone.patch_size,
    **base.read_settings(
      DINOv2,
      m,
      "centering sinkhorn_iterations dino_loss_weight ibot_loss_weight koleo_loss_weight "
      "koleo_group_size mask_probability mask_ratio",
    ),
  )
