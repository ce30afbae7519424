r"""MoCo: Momentum Contrast (He et al. 2020, "Momentum Contrast for Unsupervised Visual
Representation Learning"; v2: Chen et al. 2020, "Improved Baselines with Momentum Contrastive
Learning").

A query encoder f_q (parameters θ_q, trained by gradient) and a key encoder f_k (θ_k, never
trained by gradient) embed two augmented views of each image; the key of the query's own image
is its positive and a FIFO queue of the K most recent keys supplies the negatives:

    q = normalize(f_q(x_q)),  k+ = normalize(f_k(x_k))                     [B, D]
    L = −log exp(q·k+ / τ) / (exp(q·k+ / τ) + Σ_{i=1..K} exp(q·queue_i / τ))   (eq. 1)
    θ_k ← m·θ_k + (1 − m)·θ_q                                             (paper eq. 2)

after every optimizer step (`after_update`), and the B new keys replace the oldest B entries of
the queue. m = 0.999 by default; `momentum_schedule="cosine"` raises it to 1 over training,
m_t = 1 − (1 − m)·(cos(π t / T) + 1) / 2 (BYOL's schedule, used by solo-learn's MoCo v2+).

v1 vs v2 (`config_lib.method("moco", version=...)` fills the version's values; keys given
explicitly win):
  v1: a linear fc to 128 after the pooled features (`projector_hidden=()`), τ = 0.07, weaker
      augmentation (crop, grayscale, colour jitter 0.4 always applied; set in the experiment).
  v2: a 2-layer MLP head 2048 → ReLU → 128 (`projector_hidden=(2048,)`, no BN as in the
      paper), τ = 0.2, SimCLR's augmentation plus blur, cosine learning-rate schedule.
Evaluation (`encode`) uses the query encoder's pooled features before the head (paper §4.1).

State (`method_state`, an explicit pytree checkpointed with the rest of the TrainState):
  key_params:      θ_k, same tree as the trained params (encoder and head)
  key_batch_stats: the key encoder's own BatchNorm running statistics (its forward pass runs in
                   train mode, as in the reference implementation; they are never used for
                   evaluation, which uses the query encoder)
  queue:           [K, D] float32, unit-norm keys; initialised to random unit vectors
  queue_ptr:       int32 scalar, the row where the next batch of keys is written
K must be a positive multiple of the global batch size B: every step writes rows
[ptr, ptr + B) and advances ptr by B modulo K, so the write never wraps and the queue is
exactly FIFO over batches (`create` refuses other sizes before training starts).

The queue is *replicated* across the mesh (the presets' rule `.*` → replicate): K·D·4 bytes
(65,536 × 128 → 32 MiB) fits every device, each device's shard of queries multiplies the whole
queue locally (q @ queueᵀ needs no communication), and the enqueue of the batch-sharded keys is
an all-gather XLA inserts. Everything is written over the global batch with no axis names, so a
sharded step equals an unsharded one (tests/test_moco.py).

Shuffling BN (§3.3) as ghost BatchNorm over shuffled groups
------------------------------------------------------------
The paper trains with per-GPU BatchNorm and shuffles the key batch across GPUs before f_k
(un-shuffling after), so a key k_i is normalised with the statistics of a *different* random
sub-batch of 32 images than its query q_i: shared sub-batch statistics would be a signature
that lets the model find the positive without learning content ("cheating").

Here BatchNorm has no axis name and the step is jitted over the globally-sharded batch, so
one pass would normalise over the *whole global batch* (global BN). That is not what the
paper does, and for MoCo it is not enough: every current key would share one set of
statistics, taken over the same images the queries see, while the queue's keys come from
other batches with other statistics — a batch-level signature that separates the positive
from the queue negatives. So the key pass (`MoCo.keys`) is ghost BatchNorm over a shuffled
order, the paper's recipe written for one global batch:
  1. draw a random permutation P of the N key views (a fresh one every step),
  2. split P·x into N / G groups of ``shuffle_bn_group`` = G consecutive rows and run f_k on
     each group with its own BatchNorm statistics (one vmapped forward pass),
  3. un-permute the keys (k = P⁻¹·f_k(P·x)); the key encoder's running statistics are the
     mean over the groups.
Queries keep global BatchNorm over their own views (their pass never sees the keys' views).
G = 32 is the paper's per-GPU batch; G = 0 (or G >= N) is global BN over the key views,
where shuffling is a no-op because BN is permutation-equivariant. Tested: each group's
statistics, the un-shuffle, and a sharded step equal to one device (tests/test_moco.py).

Config (`config.method`):
  version:            "v1" | "v2" (defaults for the three keys below)
  temperature:        τ (0.07 v1, 0.2 v2)
  projector_hidden:   hidden widths of the head (() v1, (2048,) v2)
  projector_dim:      D, the embedding width (128)
  projector_bn:       BatchNorm in the head's hidden layers (False, as in the paper)
  queue_size:         K (65,536 in the paper; a few thousand for CIFAR)
  momentum:           m (0.999)
  momentum_schedule:  "constant" | "cosine" (m → 1 over training)
  symmetric:          also use the second view as query against the first view's key and
                      average the two losses (False in the paper; lightly's and solo-learn's
                      CIFAR recipes use it). The queue always receives the second view's keys.
  shuffle_bn_group:   G, the key encoder's BatchNorm group over a shuffled order (32, the
                      paper's per-GPU batch; 0 = global BN). Must divide the key batch (B, or
                      2B when symmetric) unless it is at least that large.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from sslx import augment, losses, multicrop
from sslx.methods import base, common
from sslx.methods.common import EncoderWithHead

VERSIONS = {
  "v1": dict(temperature=0.07, projector_hidden=()),
  "v2": dict(temperature=0.2, projector_hidden=(2048,)),
}
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class MoCo(base.Method):
  net: EncoderWithHead
  view: augment.ViewParams | None
  preprocess: base.Preprocess
  temperature: float
  queue_size: int
  embed_dim: int
  momentum: float
  momentum_schedule: str
  total_steps: int
  symmetric: bool
  shuffle_bn_group: int = 0

  def init(self, rng, images) -> base.Variables:
    """θ_q from `rng`, θ_k = θ_q (paper: "initialized as the same"), a queue of K random unit
    vectors [K, D] and a pointer at 0."""
    params_rng, queue_rng = jax.random.split(rng)
    x = self.preprocess(images[:2])
    if self.view is not None:
      size = self.view.crop_size
      x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
    variables = self.net.init(params_rng, x, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    queue = losses.l2_normalize(
      jax.random.normal(queue_rng, (self.queue_size, self.embed_dim), jnp.float32)
    )
    # Copies, so that no buffer is shared between the trained and the momentum tree.
    copy = lambda t: jax.tree.map(lambda a: jnp.array(a, copy=True), t)  # noqa: E731
    state = {
      "key_params": copy(params),
      "key_batch_stats": copy(batch_stats),
      "queue": queue,
      "queue_ptr": jnp.zeros((), jnp.int32),
    }
    return base.Variables(params, batch_stats, state)

  # -- the two encoders ------------------------------------------------------------------

  def queries(self, params, batch_stats, x):
    """Query pass (train mode, BN over `x` only): (features [N, F], q [N, D] unit-norm,
    updated batch_stats)."""
    (features, q), updates = self.net.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return features, losses.l2_normalize(q), updates.get("batch_stats", {})

  def keys(self, method_state, x, rng=None):
    """Key pass with θ_k, its own forward pass in train mode: (k [N, D] unit-norm, no gradient;
    updated key batch_stats).

    With ``shuffle_bn_group`` = G < N the BatchNorm statistics are those of groups of G rows
    of a random order of `x` (Shuffling BN; `rng` draws the order, None keeps the given order)
    and k is returned in the order of `x`; otherwise they are taken over all of `x`."""
    variables = {
      "params": method_state["key_params"],
      "batch_stats": method_state["key_batch_stats"],
    }
    n, g = x.shape[0], self.shuffle_bn_group
    if g <= 0 or n <= g:
      k, updates = self.net.apply(variables, x, train=True, mutable=["batch_stats"])
      k, stats = k[1], updates.get("batch_stats", {})
    else:
      if n % g:
        raise ValueError(f"MoCo key batch of {n} is not a multiple of method.shuffle_bn_group={g}")
      perm, inverse = shuffle_permutation(rng, n)
      groups = x[perm].reshape((n // g, g) + x.shape[1:])

      def group_pass(xg):
        out, updates = self.net.apply(variables, xg, train=True, mutable=["batch_stats"])
        return out[1], updates.get("batch_stats", {})

      k, stats = jax.vmap(group_pass)(groups)
      k = k.reshape(n, -1)[inverse]
      stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
    return jax.lax.stop_gradient(losses.l2_normalize(k)), jax.lax.stop_gradient(stats)

  # -- the method contract ---------------------------------------------------------------

  def loss(self, params, batch_stats, method_state, images, rng, step):
    """InfoNCE of B queries against 1 positive + K queue negatives.

    Args:
      images: [B, H, W, 3] uint8, the global batch.
    Returns:
      (loss, LossAux) with method_state's queue holding the B new keys at
      [ptr, ptr + B) and ptr advanced by B (mod K); key_params are untouched here
      (`after_update` moves them).
    """
    del step
    n = images.shape[0]
    # [B·2] image-major: rows 2i, 2i + 1 are image i's views, on the device holding image i
    views = base.two_views(rng, images, self.view, self.preprocess)
    if self.symmetric:
      x_q = views  # (q1, q2) of each image
      x_k = multicrop.swap_views(views)  # (k2, k1)
    else:
      pairs = multicrop.per_image(views, 2)
      x_q, x_k = pairs[:, 0], pairs[:, 1]
    features, q, new_bs = self.queries(params, batch_stats, x_q)
    # The shuffle's key is derived from the step's key, leaving the views' draws unchanged.
    k, new_key_bs = self.keys(method_state, x_k, jax.random.fold_in(rng, 1))
    queue = jax.lax.stop_gradient(method_state["queue"])
    # Logits of eq. (1): column 0 the positive q·k+, columns 1..K the queue negatives q·queue_i.
    l_pos = jnp.sum(q * k, axis=-1, keepdims=True)  # [N, 1]
    l_neg = q @ queue.T  # [N, K]
    sims = jnp.concatenate([l_pos, l_neg], axis=1)  # [N, 1 + K]
    loss = losses.info_nce(sims, self.temperature)
    # Enqueue the second view's B keys over the oldest B, advance the pointer (FIFO).
    ptr = method_state["queue_ptr"]
    new_keys = multicrop.first_view(k, 2) if self.symmetric else k  # view 2's B keys
    new_queue = jax.lax.dynamic_update_slice(queue, new_keys.astype(queue.dtype), (ptr, 0))
    new_state = dict(
      method_state,
      key_batch_stats=new_key_bs,
      queue=new_queue,
      queue_ptr=(ptr + n) % self.queue_size,
    )
    metrics = {
      "loss": loss,
      "contrastive_acc": jnp.mean(jnp.argmax(sims, axis=-1) == 0),
      "positive_sim": jnp.mean(l_pos),
      "negative_sim": jnp.mean(l_neg),
      "embedding_std": jnp.mean(jnp.std(q, axis=0)),
    }
    if self.symmetric:
      features = multicrop.first_view(features, 2)
    return loss, base.LossAux(new_bs, new_state, metrics, features)

  def momentum_at(self, step) -> jax.Array:
    """m_t: constant m, or the cosine ramp 1 − (1 − m)(cos(πt/T) + 1)/2 to 1 at t = T."""
    if self.momentum_schedule == "constant":
      return jnp.asarray(self.momentum, jnp.float32)
    t = jnp.minimum(jnp.asarray(step, jnp.float32) / max(self.total_steps, 1), 1.0)
    return 1.0 - (1.0 - self.momentum) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0

  def after_update(self, params, method_state, step):
    """Eq. (2): θ_k ← m·θ_k + (1 − m)·θ_q with the freshly updated θ_q (`params`)."""
    m = self.momentum_at(step)
    key_params = jax.tree.map(
      lambda k, q: m * k + (1.0 - m) * q, method_state["key_params"], params
    )
    return dict(method_state, key_params=key_params)

  def collapse_warning(self, metrics: dict) -> str | None:
    # Unit vectors spread over D dimensions have a per-dimension std near 1/√D.
    std, spread = metrics.get("embedding_std"), 1.0 / math.sqrt(self.embed_dim)
    if std is not None and std < 0.2 * spread:
      return (
        f"query embeddings are collapsing: per-dimension std {std:.4f} << 1/sqrt(D) = "
        f"{spread:.4f}; lower the learning rate or raise the temperature"
      )
    return None


def shuffle_permutation(rng, n: int) -> tuple[jax.Array, jax.Array]:
  """(perm, inverse) [n] int32: a random order (the identity when `rng` is None) and the
  order that undoes it, x[perm][inverse] == x."""
  perm = jnp.arange(n) if rng is None else jax.random.permutation(rng, n)
  return perm.astype(jnp.int32), jnp.argsort(perm).astype(jnp.int32)


def check_shuffle_bn_group(group: int, key_batch: int) -> None:
  if group < 0 or (0 < group < key_batch and key_batch % group):
    raise ValueError(
      f"method.shuffle_bn_group={group} must divide the key batch of {key_batch} views (the "
      "global batch_size, doubled when method.symmetric), be at least that large, or be 0 "
      "(global BN)"
    )


def check_queue_size(queue_size: int, batch_size: int) -> None:
  """K must be a positive multiple of the global batch: each step writes B whole rows."""
  if queue_size <= 0 or queue_size % batch_size:
    lower = max(queue_size // batch_size, 1) * batch_size
    raise ValueError(
      f"method.queue_size={queue_size} must be a positive multiple of the global "
      f"batch_size={batch_size} (every step enqueues the whole global batch of keys); "
      f"use e.g. {lower} or {lower + batch_size}"
    )


# MoCo v2's ImageNet settings: a 2048-wide MLP head to 128, τ = 0.2, a 65,536-key queue,
# m = 0.999, shuffle BN over groups of 32 (the per-GPU batch). v1: no hidden layer, τ = 0.07.
# fmt: off
DEFAULTS = dict(
  version="v2", temperature=0.2, projector_hidden=(2048,), projector_dim=128, projector_bn=False,
  queue_size=65536, momentum=0.999, momentum_schedule="constant", symmetric=False,
  shuffle_bn_group=32,
)
# fmt: on


def create(config, total_steps: int) -> MoCo:
  m = config.method
  base.check_choice("version", m.version, sorted(VERSIONS))
  queue_size = int(m.queue_size)
  check_queue_size(queue_size, int(config.batch_size))
  schedule = base.check_choice("momentum_schedule", m.momentum_schedule, list(SCHEDULES))
  momentum = float(m.momentum)
  if not 0.0 <= momentum <= 1.0:
    raise ValueError(f"method.momentum={momentum} must be in [0, 1]")
  embed_dim = int(m.projector_dim)
  symmetric = bool(m.symmetric)
  shuffle_bn_group = int(m.shuffle_bn_group)
  check_shuffle_bn_group(shuffle_bn_group, int(config.batch_size) * (2 if symmetric else 1))
  return MoCo(
    net=common.encoder_with_head(config, use_bn=bool(m.projector_bn)),
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
    temperature=float(m.temperature),
    queue_size=queue_size,
    embed_dim=embed_dim,
    momentum=momentum,
    momentum_schedule=schedule,
    total_steps=int(total_steps),
    symmetric=symmetric,
    shuffle_bn_group=shuffle_bn_group,
  )
