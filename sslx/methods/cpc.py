r"""CPC: Contrastive Predictive Coding (Oord et al. 2018, "Representation Learning with
Contrastive Predictive Coding"; images as in Hénaff et al. 2019, "Data-Efficient Image
Recognition with Contrastive Predictive Coding").

An encoder maps each element of a sequence to z_t, an autoregressive network summarises
z_{<=t} into a context c_t, and for every step k ahead a linear map W_k predicts z_{t+k}. The
score of a candidate z is the log-bilinear f_k(z, c_t) = zᵀ W_k c_t (paper eq. 3) and InfoNCE
picks the true z_{t+k} among the negatives (eq. 4):

    L_k = −E log exp(z_{t+k}ᵀ W_k c_t) / Σ_{z_j ∈ Z_k} exp(z_jᵀ W_k c_t),   L = mean_k L_k

where Z_k is every target at offset k in the global batch: the true one, the other positions
of the same sequence and all positions of the other sequences ("negatives drawn from other
positions and other images in the global batch"). For N_k = B·(T − k)·C targets this is one
[N_k, N_k] logit matrix per k with the positives on its diagonal (`predictive_info_nce`).
Memory grows as N_k²: 512 images x 6 rows x 7 columns at k = 1 is a 21,504² matrix (1.8 GB
in float32); the cpu preset (batch 128, 5x5 grid, k >= 3) stays at 1,280² per direction.

Images (this method, `create(config, total_steps)`):
  x [B, S, S, 3] → overlapping P x P patches at stride s, a G x G grid with
  G = (S − P) / s + 1 (Oord: 64 px patches at stride 32 on 256 px → 7 x 7; scaled down for
  32 px images: 8 px at stride 4 → 7 x 7) → z [B, G, G, D] from the patch encoder
  (`config.model`, applied to each patch independently; `cpc_convnet` by default) →
  c [B, G, G, H] from `RowCausalContext`, a stack of convolutions padded only on top: c at row
  r sees rows <= r, every column → W_k c at row r predicts z at row r + k, same column.
  With P = 2s the patch k = 1 row below shares half its pixels with the context's own row;
  `first_step=2` predicts only non-overlapping rows (k = 2..K).
  The encoder must have no BatchNorm: batch statistics over all patches would let the future
  rows leak into c_t (Hénaff et al. §4.1 use layer norm instead); `init` refuses one.
  Augmentation: one SimCLR-style view of the whole image (`config.augment`) before cutting the
  patches, then optionally every patch on its own (`method.patch_augment`, a dict of
  `augment.ViewParams` fields; the crop defaults to the whole patch): Hénaff et al.'s
  patch-wise augmentation, which stops the context from recognising an image's patches by
  their shared colours instead of their content.

Score: the paper's zᵀ W_k c_t is unchanged, for a given prediction, when the same vector is
added to every candidate z (all logits of a row shift together), so nothing stops z from
drifting along a shared direction, and cosine k-NN on z then mostly measures that drift (in the
cpu demo, k-NN of the learned z stayed at the random-init level). `temperature=τ` scores
cos(z, W_k c_t) / τ instead, shaping the angles k-NN reads; the cpu preset uses τ = 0.1.

Evaluation (`encode`): the patch embeddings z of the unaugmented image, read out as
`method.feature` says: "mean" (default), their mean over the G x G grid, [B, D], what a
linear classifier on CPC features is trained on; "grid", the whole grid flattened in row-major
order, [B, G·G·D], the layout kept, as the classifiers Hénaff et al. train on the spatial grid
of z see it. The untrained-encoder baseline gets the same readout, and the online probe
watches it on the training patches (its head is sized by it, but evaluation commands do not
read the head: a checkpoint trained with one readout evaluates with the other).

1-D sequences: `CPC1DNet` (a strided conv `SignalEncoder` and a `GRUContext`) and the pure
function `cpc_1d_loss(net, params, signals)` for any [B, T, C] signal, e.g. raw audio; the
same `predictive_info_nce` over time steps.

Config (`config.method`):
  patch_size, patch_stride:  P and s (8 and 4 for 32 px images)
  encoder_input_size:        0, or the size every patch is resized to (bilinear) before the
                             encoder, so that a deeper patch encoder sees maps larger than 1x1
  feature:                   "mean" or "grid": the evaluation readout of z (above)
  steps_ahead:               K, the farthest row predicted (must be < G; `create` checks)
  first_step:                the nearest row predicted (1, or 2 to skip overlapping patches)
  patch_augment:             per-patch augmentation ({} or None: off)
  temperature:               0 for the paper's score zᵀ W_k c; τ > 0 for cos(z, W_k c) / τ
  directions:                1 (top to bottom, Oord et al.) .. 4: also bottom-up, right-left and
                             left-right, each with its own context network and predictors (CPC
                             v2); the loss is the mean over directions
  context_dim, context_layers, context_kernel_rows: H and the depth/height of the masked
                             convolutions of the context network
Note: the trainer's images/s counts two views per image; CPC uses one, so images seen per
second is half the figure it prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import augment, losses
from sslx.methods import base
from sslx.models import cpc_nets


def grid_size(image_size: int, patch_size: int, stride: int) -> int:
  """Patches per side: G = (S − P) // s + 1."""
  return (image_size - patch_size) // stride + 1


def patch_grid(images: jax.Array, patch_size: int, stride: int) -> jax.Array:
  """[B, S, S, C] → [B, G, G, P, P, C]: patch (i, j) is images[:, i·s:i·s + P, j·s:j·s + P]."""
  g = grid_size(images.shape[1], patch_size, stride)
  idx = (jnp.arange(g) * stride)[:, None] + jnp.arange(patch_size)[None, :]  # [G, P]
  # One gather: out[b, i, j, u, v] = images[b, idx[i, u], idx[j, v]].
  return images[:, idx[:, None, :, None], idx[None, :, None, :]]


def predictive_info_nce(
  z: jax.Array,
  predictions: Sequence[jax.Array],
  steps: Sequence[int],
  temperature: float | None = None,
) -> tuple[jax.Array, jax.Array, list]:
  """InfoNCE of predictions k steps ahead against all targets at that offset (eq. 4).

  Args:
    z: [B, T, ..., D] targets; axis 1 is time (image rows), further axes (image columns) are
      positions at the same time.
    predictions: one [B, T, ..., D] array per entry of `steps`: W_k c_t at every t.
    steps: the offsets k (each 1 <= k < T).
    temperature: None for the paper's log-bilinear score zᵀ W_k c_t; τ > 0 for the cosine
      score cos(z, W_k c_t) / τ (both sides l2-normalised, as MoCo/SimCLR score).

  Returns:
    (loss, accuracy, per-step accuracies): the mean over k of the cross-entropy that picks, for
    every valid (b, t, ...), the true z[b, t + k, ...] among all N_k = B·(T − k)·... targets
    at offset k; accuracy is the fraction picked right (chance 1 / N_k).
  """
  t = z.shape[1]
  d = z.shape[-1]
  total, accs = 0.0, []
  for k, pred in zip(steps, predictions):
    if not 1 <= k < t:
      raise ValueError(f"cannot predict {k} steps ahead on a sequence of {t} steps")
    p = pred[:, : t - k].reshape(-1, d).astype(jnp.float32)  # [N_k, D]: W_k c_t
    target = z[:, k:].reshape(-1, d).astype(jnp.float32)  # [N_k, D]: z_{t+k}, aligned
    if temperature:
      p = losses.l2_normalize(p) / temperature
      target = losses.l2_normalize(target)
    logits = p @ target.T  # f_k of every pair (eq. 3)
    loss_k, acc_k = losses.softmax_cross_entropy(logits, jnp.arange(p.shape[0]))
    total = total + loss_k
    accs.append(acc_k)
  return total / len(steps), sum(accs) / len(accs), accs


class Predictors(nn.Module):
  """One linear W_k (no bias) per step ahead: c [..., H] → [W_k c for k in steps]."""

  steps: Sequence[int]
  dim: int

  @nn.compact
  def __call__(self, c):
    return [nn.Dense(self.dim, use_bias=False, name=f"W_{k}")(c) for k in self.steps]


class CPCNet(nn.Module):
  """CPC's network (Oord et al. 2018 §2): z = embed(x) by the encoder, c = context(z) (never
  looking ahead), predictions W_k c for k in `steps`. Subclasses have the fields `encoder`,
  `context` and `steps`, and define `embed`."""

  def embed(self, x):
    raise NotImplementedError

  @nn.compact
  def __call__(self, x):
    z = self.embed(x)
    c = self.context(z)
    return z, c, Predictors(tuple(self.steps), z.shape[-1], name="predict")(c)

  def contexts(self, x):
    """c ([B, G, G, H] or [B, T', H]): row r (step t) depends on rows (steps) <= r only."""
    return self.context(self.embed(x))


# Quarter turns of the z grid, one per prediction direction, in the order `directions` adds
# them: top→bottom (Oord et al.), bottom→top, right→left, left→right. rot90 by k maps the
# original grid so that predicting "down" in the turned grid is that direction in the original.
DIRECTION_TURNS = (0, 2, 1, 3)
DIRECTION_NAMES = ("top_down", "bottom_up", "right_left", "left_right")


class CPCImageNet(CPCNet):
  """Patch encoder + row-causal context + predictors over a [B, G, G, P, P, 3] patch grid.

  With `directions` > 1 the same z grid is also predicted turned by quarter turns
  (`DIRECTION_TURNS`), each direction with its own context network and predictors (Hénaff et
  al. 2019 §3: predictions in all four directions); direction 0 keeps the names "context" and
  "predict", so a one-direction network's parameters are those of Oord et al.'s."""

  encoder: nn.Module
  context: nn.Module
  steps: Sequence[int]
  directions: int = 1
  input_size: int = 0  # > 0: every patch resized to this many px before the encoder

  @nn.compact
  def __call__(self, x):
    """(z [B, G, G, D], [(z turned, c, predictions) per direction])."""
    z = self.embed(x)
    out = []
    for k in DIRECTION_TURNS[: self.directions]:
      zk = jnp.rot90(z, k, axes=(1, 2))
      context = self.context if k == 0 else self.context.clone(parent=self, name=f"context_rot{k}")
      c = context(zk)
      name = "predict" if k == 0 else f"predict_rot{k}"
      out.append((zk, c, Predictors(tuple(self.steps), z.shape[-1], name=name)(c)))
    return z, out

  def embed(self, patches):
    """z [B, G, G, D]: every patch encoded on its own."""
    b, g1, g2 = patches.shape[:3]
    flat = patches.reshape((b * g1 * g2,) + patches.shape[3:])
    if self.input_size and self.input_size != flat.shape[1]:
      n, c = flat.shape[0], flat.shape[-1]
      flat = jax.image.resize(flat, (n, self.input_size, self.input_size, c), "bilinear")
    return self.encoder(flat, train=True)["pre_logits"].reshape(b, g1, g2, -1)


@dataclasses.dataclass(frozen=True)
class CPC(base.Method):
  net: CPCImageNet
  view: augment.ViewParams | None
  patch_view: augment.ViewParams | None
  preprocess: base.Preprocess
  patch_size: int
  patch_stride: int
  steps: tuple
  temperature: float | None
  feature: str = "mean"
  patch_subcrop: int = 0

  def _patches(self, x):
    return patch_grid(x, self.patch_size, self.patch_stride)

  def init(self, rng, images) -> base.Variables:
    x = self.preprocess(images[:2])
    if self.view is not None:
      size = self.view.crop_size
      x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
    variables = self.net.init(rng, self._patches(x))
    if variables.get("batch_stats"):
      raise ValueError(
        "CPC needs a patch encoder without BatchNorm (statistics over all patches would leak "
        "the rows below into the context); use model.name='cpc_convnet'"
      )
    return base.Variables(variables["params"], {}, {})

  def loss(self, params, batch_stats, method_state, images, rng, step):
    """Mean over k of InfoNCE of W_k c_t against every patch embedding k rows below.

    Args:
      images: [B, S, S, 3] uint8, the global batch.
    """
    del step
    image_rng, patch_rng, sub_rng = jax.random.split(rng, 3)
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
    if self.view is not None:
      x = augment.augment_batch(image_rng, x, self.view)  # [B, S, S, 3] in [0, 1]
    patches = self._patches(x)  # [B, G, G, P, P, 3]
    if self.patch_view is not None:
      # Every patch its own colour jitter / grayscale (Hénaff et al. §4.1): the patches of
      # one image no longer share colour statistics the context could match instead of content.
      flat = patches.reshape((-1,) + patches.shape[3:])
      patches = augment.augment_batch(patch_rng, flat, self.patch_view).reshape(patches.shape)
    patches = self.preprocess(patches)
    if self.patch_subcrop:
      patches = patches * subcrop_mask(
        sub_rng, patches.shape[:3], self.patch_size, self.patch_subcrop
      )
    z, per_direction = self.net.apply({"params": params}, patches)
    metrics = {}
    loss = acc = 0.0
    for name, (zd, c, predictions) in zip(DIRECTION_NAMES, per_direction):
      loss_d, acc_d, accs = predictive_info_nce(zd, predictions, self.steps, self.temperature)
      loss, acc = loss + loss_d, acc + acc_d
      if name == "top_down":
        metrics["context_std"] = jnp.mean(jnp.std(c.reshape(-1, c.shape[-1]), axis=0))
        metrics.update({f"contrastive_acc_k{k}": a for k, a in zip(self.steps, accs)})
      else:
        metrics[f"loss_{name}"] = loss_d
    loss, acc = loss / len(per_direction), acc / len(per_direction)
    metrics.update(
      loss=loss,
      contrastive_acc=acc,
      embedding_std=jnp.mean(jnp.std(z.reshape(-1, z.shape[-1]), axis=0)),
    )
    return loss, base.LossAux(batch_stats, method_state, metrics, self.readout(z))

  def readout(self, z):
    """z [B, G, G, D] → the image's feature: [B, D] ("mean") or [B, G·G·D] ("grid")."""
    if self.feature == "grid":
      return z.reshape(z.shape[0], -1)
    return jnp.mean(z, axis=(1, 2))

  def encode(self, params, batch_stats, images):
    """The readout (`method.feature`) of the unaugmented image's patch embeddings."""
    del batch_stats
    z = self.net.apply(
      {"params": params}, self._patches(self.preprocess(images)), method=CPCImageNet.embed
    )
    return self.readout(z)


def subcrop_mask(rng, grid_shape: tuple, patch: int, keep: int) -> jax.Array:
  """[*grid_shape, P, P, 1] float: 1 on a random `keep` x `keep` window of each patch, 0 on
  the border around it (Oord et al. 2018 §3.2: a random 60x60 sub-crop of every 64 px patch,
  padded back). Applied to normalised patches, the border reads as the dataset's mean colour,
  so neighbouring patches no longer continue each other's edge pixels."""
  oy, ox = jax.random.randint(rng, (2, *grid_shape, 1, 1), 0, patch - keep + 1)
  i = jnp.arange(patch)
  rows = (i[:, None] >= oy) & (i[:, None] < oy + keep)
  cols = (i[None, :] >= ox) & (i[None, :] < ox + keep)
  return (rows & cols)[..., None].astype(jnp.float32)


def check_steps(first_step: int, steps_ahead: int, rows: int, what: str) -> tuple:
  """The offsets k = first_step..steps_ahead, refused unless 1 <= first_step <= K < rows."""
  if not 1 <= first_step <= steps_ahead:
    raise ValueError(f"method.first_step={first_step} must be in [1, steps_ahead={steps_ahead}]")
  if steps_ahead >= rows:
    raise ValueError(
      f"method.steps_ahead={steps_ahead} is larger than the grid allows: {what} has {rows} "
      f"rows, so at most {rows - 1} rows ahead can be predicted; lower steps_ahead or use "
      "a smaller patch_size / patch_stride"
    )
  return tuple(range(first_step, steps_ahead + 1))


# The evaluation readouts of the patch embeddings z (see the module docstring).
FEATURES = ("mean", "grid")

# temperature 0 = the paper's bilinear score zᵀ W_k c; > 0 = a cosine score at that τ.
# patch_augment: per-patch ViewParams settings ({} = none).
# fmt: off
DEFAULTS = dict(
  patch_size=8, patch_stride=4, first_step=1, steps_ahead=3, context_dim=256, context_layers=3,
  context_kernel_rows=3, temperature=0.0, patch_augment={}, directions=1, encoder_input_size=0,
  feature="mean", patch_subcrop=0,
)
# fmt: on


def create(config, total_steps: int) -> CPC:
  del total_steps  # no schedule inside CPC's loss
  m = config.method
  view = base.view_params(config.augment)
  size = base.crop_size(view, config)
  patch, stride = int(m.patch_size), int(m.patch_stride)
  if not 0 < patch <= size or stride <= 0:
    raise ValueError(
      f"method.patch_size={patch} / patch_stride={stride} do not fit {size} px images"
    )
  g = grid_size(size, patch, stride)
  steps = check_steps(
    int(m.first_step),
    int(m.steps_ahead),
    g,
    f"the {g}x{g} grid of {patch} px patches at stride {stride} on {size} px images",
  )
  input_size = int(m.encoder_input_size)
  if input_size < 0:
    raise ValueError(
      f"method.encoder_input_size={input_size} must be 0 (patches encoded at their own "
      f"{patch} px) or the size in px every patch is resized to before the encoder"
    )
  directions = int(m.directions)
  if not 1 <= directions <= len(DIRECTION_TURNS):
    raise ValueError(
      f"method.directions={directions} must be 1..4 ({', '.join(DIRECTION_NAMES)}, added in "
      "that order)"
    )
  encoder = base.encoder_from_config(config)
  context = cpc_nets.RowCausalContext(
    features=int(m.context_dim),
    layers=int(m.context_layers),
    kernel_rows=int(m.context_kernel_rows),
  )
  patch_view = None
  patch_cfg = m.patch_augment
  patch_cfg = patch_cfg.to_dict() if hasattr(patch_cfg, "to_dict") else dict(patch_cfg or {})
  if patch_cfg:
    patch_cfg.setdefault("crop_scale", (1.0, 1.0))
    patch_cfg.setdefault("crop_ratio", (1.0, 1.0))
    patch_view = augment.ViewParams(crop_size=patch, **patch_cfg)
  return CPC(
    net=CPCImageNet(encoder, context, steps, directions, input_size),
    view=view,
    patch_view=patch_view,
    preprocess=base.Preprocess.from_config(config.dataset),
    patch_size=patch,
    patch_stride=stride,
    steps=steps,
    temperature=float(m.temperature) or None,
    feature=base.check_choice("feature", str(m.feature), FEATURES),
    patch_subcrop=_check_subcrop(int(m.patch_subcrop), patch),
  )


def _check_subcrop(keep: int, patch: int) -> int:
  if not 0 <= keep <= patch:
    raise ValueError(
      f"method.patch_subcrop={keep} must be 0 (off) or a window of at most patch_size={patch} px"
    )
  return 0 if keep == patch else keep


# -- 1-D sequences ------------------------------------------------------------------------


class CPC1DNet(CPCNet):
  """CPC over [B, T, C] signals: z = encoder(x) [B, T', D], c = context(z) [B, T', H],
  predictions W_k c for k in `steps` (Oord et al. 2018 §3.1, audio)."""

  encoder: nn.Module  # e.g. cpc_nets.SignalEncoder()
  context: nn.Module  # e.g. cpc_nets.GRUContext()
  steps: Sequence[int] = (1, 2, 3)

  def embed(self, signals):
    """z [B, T', D]."""
    return self.encoder(signals)


def cpc_1d_loss(
  net: CPC1DNet, params, signals: jax.Array, temperature: float | None = None
) -> tuple[jax.Array, dict]:
  """CPC's InfoNCE on a batch of 1-D signals, a pure function of `params`.

  Args:
    net: a `CPC1DNet`; `params = net.init(rng, signals)["params"]`.
    signals: [B, T, C] float.
    temperature: None (the paper's bilinear score) or τ of a cosine score, see
      `predictive_info_nce`.

  Returns:
    (loss, metrics) with metrics {"loss", "accuracy", "accuracy_k{k}"}: accuracy is the
    fraction of (sequence, t, k) whose true z_{t+k} scores highest among the N_k targets at
    that offset in the batch (chance 1 / N_k; `metrics["chance"]`).
  """
  z, _, predictions = net.apply({"params": params}, signals)
  steps = tuple(net.steps)
  check_steps(
    min(steps),
    max(steps),
    z.shape[1],
    f"the encoded sequence ({signals.shape[1]} samples → {z.shape[1]} steps)",
  )
  loss, acc, accs = predictive_info_nce(z, predictions, steps, temperature)
  metrics = {
    "loss": loss,
    "accuracy": acc,
    "chance": jnp.mean(jnp.asarray([1.0 / (z.shape[0] * (z.shape[1] - k)) for k in steps])),
  }
  metrics.update({f"accuracy_k{k}": a for k, a in zip(steps, accs)})
  return loss, metrics
