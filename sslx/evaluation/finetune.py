r"""Fine-tuning protocol: unfreeze the pretrained encoder and train it end to end with a linear
head (MAE / BEiT recipe, scaled down).

AdamW with linear warm-up + cosine decay, layer-wise learning-rate decay for ViTs (a parameter
in block i of L gets lr · decay^(L − i); patch/position embeddings decay^(L + 1)... i.e. the
layer id is 0 for embeddings, i + 1 for block i, L + 1 for the final norm and the head, and the
scale is decay^(L + 1 − id)), label smoothing and mixup. Works on any method whose network can
run its encoder in training mode (see `encoder_apply`).

Standalone, on the latest checkpoint of a run (results merged into workdir/results.json as
"finetune"):

    python -m sslx.evaluation.finetune --config=experiments/simclr.py --workdir=/tmp/sslx-demo \
        --steps=500

and `--from_scratch` for the baseline: the same recipe on the untrained encoder.

Settings (`config.evals.finetune`): steps (500), batch_size (64), lr (1e-3: peak AdamW lr of
the head and the top layer), weight_decay (0.05), warmup_fraction (0.1), layer_decay (0.75;
only ViT-style "block{i}" parameters are layered), label_smoothing (0.1), mixup_alpha (0.0:
off), flip (True: random horizontal flips), train_limit (0: all), seed (0).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULTS = dict(
  steps=500,
  batch_size=64,
  lr=1e-3,
  weight_decay=0.05,
  warmup_fraction=0.1,
  layer_decay=0.75,
  label_smoothing=0.1,
  mixup_alpha=0.0,
  flip=True,
  train_limit=0,
  seed=0,
)
_BLOCK = re.compile(r"^block(\d+)$")
_EMBED = ("patch_embed", "pos_embed", "cls_token", "cls", "mask_token", "register")


@dataclasses.dataclass
class Context:
  """What fine-tuning needs beyond frozen features: the method, its pretrained variables and
  the raw uint8 images [N, H, W, 3] with labels."""

  method: Any
  params: Any
  batch_stats: Any
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int


def encoder_apply(method, params, batch_stats, images, train: bool, rng=None):
  """The encoder's features [B, D] and updated batch_stats (`Method.encoder_apply`)."""
  return method.encoder_apply(params, batch_stats, images, train, rng)


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


def make_tx(params, cfg: dict, total_steps: int) -> optax.GradientTransformation:
  warmup = int(round(cfg["warmup_fraction"] * total_steps))
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg["lr"], min(warmup, total_steps - 1), max(total_steps, warmup + 1), 0.0
  )
  scales = {
    "model": llrd_scales(params["model"], cfg["layer_decay"]),
    "head": jax.tree.map(lambda _: 1.0, params["head"]),
  }
  mask = jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(
    optax.adamw(schedule, weight_decay=cfg["weight_decay"], mask=mask), scale_by_tree(scales)
  )


def _flip(rng, images):
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def _train_step(state: _State, images, labels, rng, *, method, tx, cfg, num_classes):
  r_flip, r_mix, r_drop = jax.random.split(rng, 3)
  x = images.astype(jnp.float32) / 255.0
  if cfg["flip"]:
    x = _flip(r_flip, x)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), cfg["label_smoothing"])
  if cfg["mixup_alpha"] > 0:  # Zhang et al. 2018: convex mix of images and targets
    lam = jax.random.beta(r_mix, cfg["mixup_alpha"], cfg["mixup_alpha"])
    perm = jax.random.permutation(r_mix, x.shape[0])
    x = lam * x + (1 - lam) * x[perm]
    targets = lam * targets + (1 - lam) * targets[perm]

  def loss_fn(params):
    feats, bs = encoder_apply(method, params["model"], state.batch_stats, x, True, r_drop)
    logits = feats @ params["head"]["kernel"] + params["head"]["bias"]
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, (bs, acc)

  (loss, (bs, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return _State(optax.apply_updates(state.params, updates), bs, opt_state), (loss, acc)


def finetune(ctx: Context, cfg: dict | None = None) -> tuple[dict, Any]:
  """Fine-tunes ctx's encoder with a new linear head; returns ({"finetune": top-1 % on the
  test images, "finetune_train_loss": last loss, "finetune_train_acc": accuracy (%) on
  the last quarter of the training batches (mixed targets' argmax when mixup is on)}, fine-tuned params {"model", "head"})."""
  cfg = dict(DEFAULTS, **(dict(cfg) if cfg else {}))
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"evals.finetune: unknown setting(s) {unknown}; valid: {sorted(DEFAULTS)}")
  xtr, ytr = ctx.train_images, np.asarray(ctx.train_labels)
  if cfg["train_limit"] and cfg["train_limit"] < len(xtr):
    idx = np.random.default_rng(cfg["seed"]).permutation(len(xtr))[: cfg["train_limit"]]
    xtr, ytr = xtr[idx], ytr[idx]
  batch = min(int(cfg["batch_size"]), len(xtr))
  steps = int(cfg["steps"])
  if steps <= 0:
    raise ValueError(f"evals.finetune.steps={steps} must be positive")
  model_params = finetuned_params(ctx.method, ctx.params)
  dim = jax.eval_shape(
    lambda p, b, x: encoder_apply(ctx.method, p, b, x, False)[0],
    model_params,
    ctx.batch_stats,
    jnp.asarray(xtr[:2]),
  ).shape[-1]
  params = {
    "model": model_params,
    "head": {
      "kernel": jnp.zeros((dim, ctx.num_classes), jnp.float32),
      "bias": jnp.zeros((ctx.num_classes,), jnp.float32),
    },
  }
  tx = make_tx(params, cfg, steps)
  state = _State(params, ctx.batch_stats, tx.init(params))
  step_fn = jax.jit(
    functools.partial(_train_step, method=ctx.method, tx=tx, cfg=cfg, num_classes=ctx.num_classes)
  )
  rng = jax.random.PRNGKey(cfg["seed"])
  order = np.random.default_rng(cfg["seed"])
  perm, pos, loss, accs = order.permutation(len(xtr)), 0, None, []
  from sslx import progress  # local: progress imports nothing heavy, but keep this module lean

  prog = progress.Progress(steps, 0, batch)
  report_every = max(steps // 10, 1)
  for i in range(steps):
    if pos + batch > len(perm):
      perm, pos = order.permutation(len(xtr)), 0
    idx = perm[pos : pos + batch]
    pos += batch
    state, (loss, acc) = step_fn(
      state, jnp.asarray(xtr[idx]), jnp.asarray(ytr[idx], jnp.int32), jax.random.fold_in(rng, i)
    )
    accs.append(acc)
    if (i + 1) % report_every == 0 or i + 1 == steps:
      rates = prog.update(i + 1)
      progress.console(
        "fine-tune " + prog.line(i + 1, {"loss": float(loss), "train_acc": float(acc)}, rates)
      )

  # BatchNorm's running statistics trail the weights (momentum 0.9-0.99 over a few hundred
  # steps of a moving network): re-estimate them for the final weights before testing.
  bn_stats = recompute_batch_stats(
    ctx.method, state.params["model"], state.batch_stats, xtr, batch, seed=cfg["seed"]
  )

  @jax.jit
  def predict(p, bs, x):
    feats, _ = encoder_apply(ctx.method, p["model"], bs, x, False)
    return jnp.argmax(feats @ p["head"]["kernel"] + p["head"]["bias"], -1)

  correct = 0
  xte, yte = ctx.test_images, np.asarray(ctx.test_labels)
  for s in range(0, len(xte), 256):
    chunk = xte[s : s + 256]
    n = len(chunk)
    if n < 256 and len(xte) > 256:  # one compiled shape
      chunk = np.concatenate([chunk, np.zeros((256 - n,) + chunk.shape[1:], chunk.dtype)])
    pred = np.asarray(predict(state.params, bn_stats, jnp.asarray(chunk)))[:n]
    correct += int((pred == yte[s : s + n]).sum())
  last = accs[-max(len(accs) // 4, 1) :]
  return (
    {
      "finetune": 100.0 * correct / len(xte),
      "finetune_train_loss": float(loss),
      "finetune_train_acc": 100.0 * float(np.mean(jax.device_get(last))),
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
      "finetune.Context(...), or run python -m sslx.evaluation.finetune"
    )
  return finetune(ctx, dict(cfg) if cfg else None)[0]


def finetune_checkpoint(
  config, workdir: str, cfg: dict | None = None, from_scratch: bool = False
) -> dict:
  """Fine-tunes the latest checkpoint in `workdir` (config: the same method and model) on the
  config's dataset; merges {"finetune": ...} into workdir/results.json and returns it.

  `from_scratch=True` trains the same encoder from its untrained initialisation with the same
  recipe instead (the baseline that says what pretraining bought); the result is merged as
  {"finetune_from_scratch": ...}."""
  from sslx import checkpointing, config_lib, evaluation, progress, train

  config_lib.validate(config)
  mngr = checkpointing.manager(workdir, async_save=False)
  step = checkpointing.check_compatible(mngr, config)
  if step is None:
    raise FileNotFoundError(
      f"no checkpoint in {mngr.directory}: train first with "
      f"python -m sslx.main --config=... --workdir={workdir}"
    )
  eval_data = evaluation.load_eval_data(config)
  if eval_data is None:
    raise ValueError(f"dataset {config.dataset.name!r} has no labels: nothing to fine-tune on")
  xtr, ytr, xte, yte, num_classes = eval_data
  sample = np.zeros((2,) + xtr.shape[1:], np.uint8)
  setup = train.build(config, sample, len(xtr), num_classes)
  state = train.create_state(setup, config.seed, sample)
  if not from_scratch:
    state, _ = checkpointing.restore(mngr, step, state)
  state = jax.device_get(state)
  if cfg is None:
    cfg = dict(config.get("evals", {}).get("finetune", {}) or {})
  ctx = Context(
    setup.method, state.params["model"], state.batch_stats, xtr, ytr, xte, yte, num_classes
  )
  results, _ = finetune(ctx, cfg)
  if from_scratch:
    results = {"finetune_from_scratch": results["finetune"]}
    progress.write_results(workdir, results)
    progress.console(
      f"trained the untrained encoder with the fine-tuning recipe: top-1 "
      f"{results['finetune_from_scratch']:.2f}%"
    )
    return results
  progress.write_results(workdir, dict(results, finetune_step=step))
  progress.console(f"fine-tuned checkpoint step {step}: top-1 {results['finetune']:.2f}%")
  return results


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  cfg = {
    k: getattr(FLAGS, k)
    for k in (
      "steps",
      "batch_size",
      "lr",
      "layer_decay",
      "label_smoothing",
      "mixup_alpha",
      "train_limit",
    )
  }
  print(finetune_checkpoint(FLAGS.config, FLAGS.workdir, cfg, from_scratch=FLAGS.from_scratch))


if __name__ == "__main__":
  import sys

  from sslx import xla

  xla.configure_xla_for_cpu()

  from absl import app, flags
  from ml_collections import config_flags

  from sslx import config_lib

  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory holding checkpoints/")
  flags.DEFINE_integer("steps", DEFAULTS["steps"], "fine-tuning steps")
  flags.DEFINE_integer("batch_size", DEFAULTS["batch_size"], "batch size")
  flags.DEFINE_float("lr", DEFAULTS["lr"], "peak AdamW learning rate")
  flags.DEFINE_float("layer_decay", DEFAULTS["layer_decay"], "layer-wise lr decay (ViT)")
  flags.DEFINE_float("label_smoothing", DEFAULTS["label_smoothing"], "label smoothing")
  flags.DEFINE_float("mixup_alpha", DEFAULTS["mixup_alpha"], "mixup Beta(α, α); 0 = off")
  flags.DEFINE_integer("train_limit", 0, "at most this many training images (0: all)")
  flags.DEFINE_bool(
    "from_scratch",
    False,
    "baseline: the same recipe from the untrained encoder (written as finetune_from_scratch)",
  )
  flags.mark_flags_as_required(["config", "workdir"])
  problem = config_lib.check_override_keys(sys.argv[1:])
  if problem:
    sys.exit(f"error: {problem}")
  app.run(main)
