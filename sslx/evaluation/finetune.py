r"""Fine-tuning protocol: unfreeze the pretrained encoder and train it end to end with a linear
head (MAE / BEiT recipe, scaled down).

AdamW with linear warm-up + cosine decay, layer-wise learning-rate decay for ViTs (a parameter
in block i of L gets lr · decay^(L − i); patch/position embeddings decay^(L + 1)... i.e. the
layer id is 0 for embeddings, i + 1 for block i, L + 1 for the final norm and the head, and the
scale is decay^(L + 1 − id)), weight decay on weight matrices only (not on biases, norms,
the class and mask tokens, the position embeddings or BEiT's relative position bias: MAE's and
BEiT's `no_weight_decay`), label smoothing and mixup. Works on any method whose network can
run its encoder in training mode (`Method.encoder_apply`). Standalone, on the latest checkpoint
of a run: `python -m sslx finetune` (sslx/cli/finetune.py).

Settings (`config.evals.finetune`): steps (500), batch_size (64), lr (1e-3: peak AdamW lr of
the head and the top layer), weight_decay (0.05), warmup_fraction (0.1), layer_decay (0.75;
only ViT-style "block{i}" parameters are layered), label_smoothing (0.1), mixup_alpha (0.0:
off), cutmix_alpha (0.0: off; with mixup on too, one of the two per batch, as timm),
label_fraction (0.0: all labels; 0.01 / 0.1 fine-tune on that class-balanced fraction, its
image list written to the workdir as label_subset_<pct>pct.txt, the result named
finetune_<pct>pct), flip (True: random horizontal flips), train_limit (0: all), seed (0),
checkpoint_every_steps (1000), drop_path (None: the encoder's own `drop_path_rate`, as it
was pretrained; a rate replaces it in every ViT of the method for fine-tuning: MAE and BEiT
fine-tune ViT-B at 0.1).

With a workdir (`python -m sslx finetune`, and the evaluation at the end of a run) a
fine-tuning survives preemption as training does: its state is saved every
`checkpoint_every_steps` and on SIGTERM/SIGINT (exit status 75) in
workdir/protocol_checkpoints/<result name>-<hash of settings, starting weights and data>, and
a rerun with the same three resumes there, taking the batches the uninterrupted run would
have taken (the same figures; `evaluation.resumable`). The final step is kept there: the
fine-tuned weights.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx import losses, optim, paths, progress, sharding
from sslx.evaluation import Context, extract_split, reading, resumable  # noqa: F401
from sslx.models import vit

DEFAULTS = dict(
  steps=500,
  batch_size=64,
  lr=1e-3,
  weight_decay=0.05,
  warmup_fraction=0.1,
  layer_decay=0.75,
  label_smoothing=0.1,
  mixup_alpha=0.0,
  cutmix_alpha=0.0,
  flip=True,
  label_fraction=0.0,
  train_limit=0,
  seed=0,
  checkpoint_every_steps=1000,
  drop_path=None,
)
_BLOCK = re.compile(r"^block(\d+)$")
_EMBED = ("patch_embed", "pos_embed", "cls_token", "cls", "mask_token", "register")


def encoder_apply(method, params, batch_stats, images, train: bool, rng=None):
  """The encoder's features [B, D] and updated batch_stats (`Method.encoder_apply`)."""
  return method.encoder_apply(params, batch_stats, images, train, rng)


def with_drop_path(method, rate: float):
  """`method` with the stochastic-depth rate of every network in it that has one
  (`drop_path_rate`: the ViTs) set to `rate`; refused when none has."""
  found = []

  def visit(module):
    changes = {}
    for f in dataclasses.fields(module):
      value = getattr(module, f.name, None)
      if f.name not in ("parent", "name") and isinstance(value, nn.Module):
        changes[f.name] = visit(value)
    if hasattr(module, "drop_path_rate"):
      changes["drop_path_rate"] = rate
      found.append(type(module).__name__)
    return module.clone(**changes) if changes else module

  fields = {
    f.name: visit(getattr(method, f.name))
    for f in dataclasses.fields(method)
    if isinstance(getattr(method, f.name), nn.Module)
  }
  if not found:
    raise ValueError(
      f"evals.finetune.drop_path={rate}: {type(method).__name__}'s encoder has no drop path "
      "(drop_path_rate: the ViTs have one); leave drop_path unset"
    )
  return dataclasses.replace(method, **fields)


def finetuned_params(method, params):
  """The part of a method's parameters that fine-tuning trains (`Method.finetune_params`)."""
  return method.finetune_params(params)


def layer_ids(params) -> tuple[Any, int]:
  """Per-leaf layer id (0: embeddings, i + 1: block i, L + 1: everything after the blocks)
  and the number of blocks L (0 for encoders without "block{i}" modules)."""
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  blocks = set()
  for path, _ in paths:
    for k in path:
      m = _BLOCK.match(str(getattr(k, "key", "")))
      if m:
        blocks.add(int(m.group(1)))
  depth = max(blocks) + 1 if blocks else 0

  def lid(path, _):
    names = [str(getattr(k, "key", "")) for k in path]
    for n in names:
      m = _BLOCK.match(n)
      if m:
        return int(m.group(1)) + 1
    if any(n in _EMBED for n in names):
      return 0
    return depth + 1

  return jax.tree_util.tree_map_with_path(lid, params), depth


def llrd_scales(params, decay: float):
  """Per-leaf learning-rate multipliers decay^(L + 1 − layer id); all 1 without blocks."""
  ids, depth = layer_ids(params)
  if depth == 0:
    return jax.tree.map(lambda _: 1.0, ids)
  return jax.tree.map(lambda i: float(decay ** (depth + 1 - i)), ids)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update leaf by the matching float in `scales` (static)."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(init, update)


def recompute_batch_stats(
  method, params, batch_stats, images, batch: int, num_batches: int = 20, seed: int = 0
):
  """ "Precise BN" (Wu & Johnson 2021): BatchNorm running statistics replaced by the mean of
  the per-batch statistics of the final weights over `num_batches` training batches.

  The per-batch statistics are read back through the model's own running-average update,
  new = m·old + (1 − m)·batch, applied to two known `old` trees (zeros and ones): that gives
  both m and the batch statistics exactly, whatever momentum each layer uses. Returns
  `batch_stats` unchanged when the encoder has none (ViTs)."""
  if not jax.tree.leaves(batch_stats):
    return batch_stats

  @jax.jit
  def batch_statistics(x):
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    ones = jax.tree.map(jnp.ones_like, batch_stats)
    n0 = encoder_apply(method, params, zeros, x, True)[1]
    n1 = encoder_apply(method, params, ones, x, True)[1]
    return jax.tree.map(lambda a, b: a / (1.0 - (b - a)), n0, n1)  # m = n1 − n0

  order = np.random.default_rng(seed).permutation(len(images))
  n = max(1, min(num_batches, len(images) // batch))
  total = None
  for i in range(n):
    x = jnp.asarray(images[order[i * batch : (i + 1) * batch]]).astype(jnp.float32) / 255.0
    stats = batch_statistics(x)
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  return jax.tree.map(lambda t: t / n, total)


class _State(NamedTuple):
  params: Any  # {"model": encoder (method) params, "head": {"kernel", "bias"}}
  batch_stats: Any
  opt_state: Any


# ViT parameters of more than one dimension that MAE and BEiT fine-tune without weight decay
# (their models' `no_weight_decay()`: cls_token, pos_embed, relative_position_bias_table).
NO_DECAY_NAMES = frozenset({"cls_token", "mask_token", "pos_embed", "rel_pos_bias"})


def decay_mask(params):
  """True for the leaves that get weight decay: more than one dimension and not named in
  NO_DECAY_NAMES."""
  return optim.decay_mask(params, NO_DECAY_NAMES)


def make_tx(params, cfg: dict, total_steps: int) -> optax.GradientTransformation:
  warmup = int(round(cfg["warmup_fraction"] * total_steps))
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg["lr"], min(warmup, total_steps - 1), max(total_steps, warmup + 1), 0.0
  )
  scales = {
    "model": llrd_scales(params["model"], cfg["layer_decay"]),
    "head": jax.tree.map(lambda _: 1.0, params["head"]),
  }
  mask = decay_mask(params)
  return optax.chain(
    optax.adamw(schedule, weight_decay=cfg["weight_decay"], mask=mask), scale_by_tree(scales)
  )


def _flip(rng, images):
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def mixup(rng, x, targets, alpha: float):
  """Zhang et al. 2018: a convex mix of the batch with a permutation of itself."""
  r_lam, r_perm = jax.random.split(rng)
  lam = jax.random.beta(r_lam, alpha, alpha)
  perm = jax.random.permutation(r_perm, x.shape[0])
  return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]


def cutmix(rng, x, targets, alpha: float):
  """Yun et al. 2019: a box of a permuted batch pasted into the batch (area 1 − λ, λ ~
  Beta(α, α), centre uniform, clipped at the borders), targets mixed by the pasted area."""
  r_lam, r_y, r_x, r_perm = jax.random.split(rng, 4)
  h, w = x.shape[1:3]
  lam = jax.random.beta(r_lam, alpha, alpha)
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = jnp.floor(cut * h), jnp.floor(cut * w)
  cy = jax.random.randint(r_y, (), 0, h).astype(jnp.float32)
  cx = jax.random.randint(r_x, (), 0, w).astype(jnp.float32)
  ys, xs = jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32)
  in_y = (ys >= jnp.clip(cy - ch // 2, 0, h)) & (ys < jnp.clip(cy + ch // 2, 0, h))
  in_x = (xs >= jnp.clip(cx - cw // 2, 0, w)) & (xs < jnp.clip(cx + cw // 2, 0, w))
  box = in_y[:, None] & in_x[None, :]  # [H, W]
  perm = jax.random.permutation(r_perm, x.shape[0])
  x = jnp.where(box[None, :, :, None], x[perm], x)
  kept = 1.0 - box.mean()  # the area actually left from the original image
  return x, kept * targets + (1.0 - kept) * targets[perm]


def mix(rng, x, targets, mixup_alpha: float, cutmix_alpha: float):
  """Mixup, CutMix, or (both on) one of the two per batch with probability 1/2 (timm)."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return x, targets
  r_sel, r_a, r_b = jax.random.split(rng, 3)
  if cutmix_alpha <= 0:
    return mixup(r_a, x, targets, mixup_alpha)
  if mixup_alpha <= 0:
    return cutmix(r_b, x, targets, cutmix_alpha)
  xa, ta = mixup(r_a, x, targets, mixup_alpha)
  xb, tb = cutmix(r_b, x, targets, cutmix_alpha)
  use_cut = jax.random.bernoulli(r_sel, 0.5)
  return jnp.where(use_cut, xb, xa), jnp.where(use_cut, tb, ta)


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
  """Sorted indices of round(fraction · n_c) (at least 1) random examples of every class c:
  the 1 % / 10 % label subsets of semi-supervised evaluation."""
  rng = np.random.default_rng(seed)
  idx = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    n = max(1, int(round(fraction * len(members))))
    idx.append(rng.choice(members, size=n, replace=False))
  return np.sort(np.concatenate(idx))


def write_subset(workdir: str, fraction: float, idx: np.ndarray, labels: np.ndarray) -> str:
  """`workdir/label_subset_<pct>pct.txt`: one "index label" line per image (indices into the
  evaluation's training images, i.e. the train split in order when eval_train_limit is 0)."""
  header = f"# {len(idx)} images, class-balanced {fraction * 100:g}% of the training labels\n"
  lines = "".join(f"{i} {int(labels[i])}\n" for i in idx)
  return paths.write_text(
    paths.join(workdir, f"label_subset_{fraction * 100:g}pct.txt"), header + lines
  )


def _index_batches(n: int, batch: int, steps: int, seed: int):
  """`steps` batches of positions in [0, n): consecutive slices of a permutation, a fresh one
  (same generator) whenever the rest of the current one is shorter than a batch."""
  order = np.random.default_rng(seed)
  perm, pos = order.permutation(n), 0
  for _ in range(steps):
    if pos + batch > len(perm):
      perm, pos = order.permutation(n), 0
    yield perm[pos : pos + batch]
    pos += batch


def _train_step(state: _State, images, labels, rng, *, method, tx, cfg, num_classes):
  r_flip, r_mix, r_drop = jax.random.split(rng, 3)
  x = images.astype(jnp.float32) / 255.0
  if cfg["flip"]:
    x = _flip(r_flip, x)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), cfg["label_smoothing"])
  x, targets = mix(r_mix, x, targets, cfg["mixup_alpha"], cfg["cutmix_alpha"])

  # -1: a row no readable record of its process could stand in for (`reading`): counts nowhere
  valid = labels >= 0

  def loss_fn(params):
    feats, bs = encoder_apply(method, params["model"], state.batch_stats, x, True, r_drop)
    logits = feats @ params["head"]["kernel"] + params["head"]["bias"]
    loss = losses.masked_mean(optax.softmax_cross_entropy(logits, targets), valid)
    acc = losses.masked_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), valid)
    return loss, (bs, acc)

  (loss, (bs, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return _State(optax.apply_updates(state.params, updates), bs, opt_state), (loss, acc)


def _training_set(ctx: Context, cfg: dict, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """The images and labels fine-tuning trains on: a class-balanced `label_fraction` of the
  train images (its list written to the workdir), then at most `train_limit` of them."""
  xtr, ytr = ctx.train_images, np.asarray(ctx.train_labels)
  if fraction:
    if not 0 < fraction < 1:
      raise ValueError(f"evals.finetune.label_fraction={fraction} must be in (0, 1) (0: all)")
    idx = class_balanced_subset(ytr, fraction, cfg["seed"])
    if ctx.workdir:
      write_subset(ctx.workdir, fraction, idx, ytr)
    xtr, ytr = reading.take(xtr, idx), ytr[idx]
  if cfg["train_limit"] and cfg["train_limit"] < len(xtr):
    idx = np.random.default_rng(cfg["seed"]).permutation(len(xtr))[: cfg["train_limit"]]
    xtr, ytr = reading.take(xtr, idx), ytr[idx]
  return xtr, ytr


def _initial_params(ctx: Context, sample: np.ndarray) -> dict:
  """{"model": the pretrained encoder's parameters, "head": a zero linear classifier}. A ViT
  pretrained at another resolution gets its position embedding resampled to `sample`'s grid."""
  model_params = vit.pos_embed_for_images(
    finetuned_params(ctx.method, ctx.params), sample.shape[1:3]
  )
  dim = jax.eval_shape(
    lambda p, b, x: encoder_apply(ctx.method, p, b, x, False)[0],
    model_params,
    ctx.batch_stats,
    jnp.asarray(sample),
  ).shape[-1]
  head = {
    "kernel": jnp.zeros((dim, ctx.num_classes), jnp.float32),
    "bias": jnp.zeros((ctx.num_classes,), jnp.float32),
  }
  return {"model": model_params, "head": head}


def finetune(ctx: Context, cfg: dict | None = None) -> tuple[dict, Any]:
  """Fine-tunes ctx's encoder with a new linear head; returns ({"finetune": top-1 % on the
  test images, "finetune_train_loss": last loss, "finetune_train_acc": accuracy (%) on
  the last quarter of the training batches, against their own labels (mixed images too)},
  the fine-tuned params {"model", "head"})."""
  cfg = dict(DEFAULTS, **(dict(cfg) if cfg else {}))
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"evals.finetune: unknown setting(s) {unknown}; valid: {sorted(DEFAULTS)}")
  if cfg["drop_path"] is not None:
    ctx = dataclasses.replace(ctx, method=with_drop_path(ctx.method, float(cfg["drop_path"])))
  fraction = float(cfg["label_fraction"])
  xtr, ytr = _training_set(ctx, cfg, fraction)
  mesh = ctx.mesh or sharding.make_mesh([("data", -1)])
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  batch = min(int(cfg["batch_size"]), len(xtr))
  batch = max(batch - batch % mesh.size, mesh.size)
  steps = int(cfg["steps"])
  if steps <= 0:
    raise ValueError(f"evals.finetune.steps={steps} must be positive")
  params = _initial_params(ctx, xtr[:2])
  tx = make_tx(params, cfg, steps)
  # a copy: the step donates its state, and the caller's pretrained arrays must survive
  state = _State(params, ctx.batch_stats, tx.init(params))
  state = jax.device_put(jax.tree.map(lambda a: jnp.array(a, copy=True), state), rep)
  # the batch sharded over the mesh, the state replicated: XLA reduces gradients and BatchNorm
  # statistics over the global batch
  step_fn = jax.jit(
    functools.partial(_train_step, method=ctx.method, tx=tx, cfg=cfg, num_classes=ctx.num_classes),
    in_shardings=(rep, data, data, rep),
    out_shardings=(rep, rep),
    donate_argnums=0,
  )
  rng = jax.random.PRNGKey(cfg["seed"])
  name = f"finetune_{fraction * 100:g}pct" if fraction else "finetune"
  tail = max(steps // 4, 1)  # the training accuracy reported is the last quarter's
  ident = (
    resumable.identity(cfg, params, xtr, ytr, ctx.test_images, ctx.num_classes)
    if ctx.workdir
    else {}
  )
  resume = resumable.Resumable(ctx.workdir, name, ident, cfg["checkpoint_every_steps"], steps)
  report_every = max(steps // 10, 1)
  with resume:
    state, start, saved = resume.restore(state)
    loss, accs = saved.get("loss"), list(saved.get("accs", []))
    prog = progress.Progress(steps, start, batch)

    def saved_now():
      return {"loss": float(loss), "accs": [float(a) for a in jax.device_get(accs)]}

    # a resumed run takes the batches the uninterrupted one would have taken from `start` on
    positions = itertools.islice(_index_batches(len(xtr), batch, steps, cfg["seed"]), start, None)
    for i, (xb, yb) in enumerate(
      reading.device_batches(xtr, ytr, positions, data, stand_in=True), start
    ):
      state, (loss, acc) = step_fn(state, xb, yb, jax.random.fold_in(rng, i))
      if i >= steps - tail:
        accs.append(acc)
      if (i + 1) % report_every == 0 or i + 1 == steps:
        rates = prog.update(i + 1)
        progress.console(
          "fine-tune " + prog.line(i + 1, {"loss": float(loss), "train_acc": float(acc)}, rates)
        )
      resume.after_step(i + 1, state, saved_now)
    resume.finish(state, saved_now())  # the fine-tuned weights stay in the workdir

  # BatchNorm's running statistics trail the weights (momentum 0.9-0.99 over a few hundred
  # steps of a moving network): re-estimate them for the final weights before testing.
  bn_stats = recompute_batch_stats(
    ctx.method, state.params["model"], state.batch_stats, xtr, batch, seed=cfg["seed"]
  )

  tuned, bn_stats = jax.device_get((state.params, bn_stats))

  def logits(x):
    feats, _ = encoder_apply(ctx.method, tuned["model"], bn_stats, x, False)
    return feats @ tuned["head"]["kernel"] + tuned["head"]["bias"]

  # test images in fixed-size batches sharded over the mesh, as every evaluation extracts
  scores, labels = extract_split(logits, ctx.test_images, mesh, 256, labels=ctx.test_labels)
  correct = int((scores.argmax(-1) == labels).sum())
  last = accs[-tail:]
  return (
    {
      name: 100.0 * correct / len(labels),
      "finetune_train_loss": float(loss),
      "finetune_train_acc": 100.0 * float(np.mean([float(a) for a in jax.device_get(last)])),
    },
    state.params,
  )


def run(cfg, feats) -> dict:
  """Protocol entry point. Frozen features are not enough: `feats.context` must hold a
  `Context` (the method, pretrained variables and raw images), which `run_all` attaches."""
  ctx = getattr(feats, "context", None)
  if ctx is None:
    raise ValueError(
      "evals.finetune needs the raw images and the pretrained encoder, not only "
      "features: sslx.evaluation.run_all must attach feats.context = "
      "evaluation.Context(...), or run python -m sslx finetune"
    )
  return finetune(ctx, dict(cfg) if cfg else None)[0]
