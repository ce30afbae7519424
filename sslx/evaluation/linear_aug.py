"""Linear probe as the papers run it: random-resized crop + horizontal flip drawn on the fly
over the frozen encoder (MoCo, DINO, MAE), a BatchNorm without affine parameters on the
features (MAE's probe), and a learning-rate sweep trained in one pass: one linear head per lr
on the same features of the same augmented batch (DINOv2's linear evaluation). The best head
is reported with its lr; every head's accuracy is reported too.

Each step is one jitted program over a batch sharded across the mesh (the encoder's features,
the BatchNorm statistics and the heads' gradients are reduced over the global batch by XLA).
SGD with momentum 0.9, cosine decay of each head's lr, no weight decay by default (MoCo, DINO).
Test images are encoded without augmentation and normalised with the BatchNorm's running
statistics. The best head is picked on the test split, as the papers' sweeps do on ImageNet's
validation set: an optimistic figure by the spread of the heads.

This costs `epochs` forward passes of the encoder over the training set; the frozen-feature
probe (`evals.linear`, features extracted once) stays the cheap default on a CPU.

Settings (`config.evals.linear_aug`): epochs (10), batch_size (256), lrs ((0.01, 0.03, 0.1,
0.3, 1.0)), momentum (0.9), weight_decay (0.0), crop_scale ((0.08, 1.0)), flip (True),
bn_momentum (0.9), seed (0), checkpoint_every_steps (1000: with a workdir the probe is saved
then and on SIGTERM, and a rerun resumes it, as fine-tuning is; `evaluation.resumable`).
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx import augment, losses, progress, sharding
from sslx.evaluation import extract_split, reading, resumable

DEFAULTS = dict(
  epochs=10,
  batch_size=256,
  lrs=(0.01, 0.03, 0.1, 0.3, 1.0),
  momentum=0.9,
  weight_decay=0.0,
  crop_scale=(0.08, 1.0),
  flip=True,
  bn_momentum=0.9,
  seed=0,
  checkpoint_every_steps=1000,
)
_EPS = 1e-6


class ProbeState(NamedTuple):
  kernel: jax.Array  # [H, D, C]: one head per lr
  bias: jax.Array  # [H, C]
  momentum: tuple  # SGD buffers of (kernel, bias)
  mean: jax.Array  # [D] BatchNorm running statistics
  var: jax.Array
  step: jax.Array


def _view(cfg, size: int) -> augment.ViewParams:
  colour_off = dict.fromkeys(
    ("brightness", "contrast", "saturation", "hue", "jitter_prob", "grayscale_prob", "blur_prob"),
    0.0,
  )
  flip = 0.5 if cfg["flip"] else 0.0
  return augment.ViewParams(
    crop_size=size, crop_scale=tuple(cfg["crop_scale"]), flip_prob=flip, **colour_off
  )


def head_logits(state: ProbeState, feats, mean, var):
  x = (feats - mean) / jnp.sqrt(var + _EPS)
  return jnp.einsum("bd,hdc->hbc", x, state.kernel) + state.bias[:, None]


def train_step(state: ProbeState, enc, images, labels, rng, *, encode, view, lrs, cfg, schedule):
  x = augment.augment_batch(rng, images, view)
  feats = jax.lax.stop_gradient(encode(enc["params"], enc["batch_stats"], x))
  mean, var = feats.mean(0), feats.var(0)

  valid = labels >= 0  # -1: a row no readable record could stand in for (`reading`): no loss

  def loss_fn(kb):
    logits = head_logits(state._replace(kernel=kb[0], bias=kb[1]), feats, mean, var)
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    per_head = losses.masked_mean(optax.softmax_cross_entropy(logits, onehot[None]), valid, -1)
    return per_head.sum(), per_head

  (_, per_head), grads = jax.value_and_grad(loss_fn, has_aux=True)((state.kernel, state.bias))
  params = (state.kernel, state.bias)
  grads = jax.tree.map(lambda g, p: g + cfg["weight_decay"] * p, grads, params)
  buf = jax.tree.map(lambda b, g: cfg["momentum"] * b + g, state.momentum, grads)
  scale = schedule(state.step)
  lr_k = (lrs * scale)[:, None, None]
  kernel = state.kernel - lr_k * buf[0]
  bias = state.bias - lr_k[:, :, 0] * buf[1]
  m = cfg["bn_momentum"]
  return ProbeState(
    kernel,
    bias,
    buf,
    m * state.mean + (1 - m) * mean,
    m * state.var + (1 - m) * var,
    state.step + 1,
  ), per_head


def _epochs(n: int, batch: int, epochs: int, seed: int):
  """Batches of positions in [0, n): each epoch a fresh permutation cut into n // batch."""
  order = np.random.default_rng(seed)
  for _ in range(epochs):
    perm = order.permutation(n)
    for s in range(max(n // batch, 1)):
      yield perm[s * batch : (s + 1) * batch]


def augmented_probe(ctx, cfg: dict | None = None, mesh=None) -> dict:
  """Trains the heads on augmented training images of `ctx` (a finetune.Context) and returns
  {"linear_aug": best top-1 %, "linear_aug_lr": its lr, "linear_aug@lr<lr>": each head's}."""
  cfg = dict(DEFAULTS, **(dict(cfg) if cfg else {}))
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"evals.linear_aug: unknown setting(s) {unknown}; valid: {sorted(DEFAULTS)}")
  mesh = mesh or getattr(ctx, "mesh", None) or sharding.make_mesh([("data", -1)])
  xtr, ytr = ctx.train_images, np.asarray(ctx.train_labels, np.int32)
  batch = min(int(cfg["batch_size"]), len(xtr))
  batch = max(batch - batch % mesh.size, mesh.size)
  steps_per_epoch = max(len(xtr) // batch, 1)
  total = int(cfg["epochs"]) * steps_per_epoch
  if total <= 0:
    raise ValueError(f"evals.linear_aug.epochs={cfg['epochs']} must be positive")
  lrs = jnp.asarray(cfg["lrs"], jnp.float32)
  encode = ctx.method.encode
  enc = {"params": ctx.params, "batch_stats": ctx.batch_stats}
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  enc = jax.device_put(enc, rep)
  dim = jax.eval_shape(encode, ctx.params, ctx.batch_stats, jnp.asarray(xtr[:2])).shape[-1]
  h, c = len(cfg["lrs"]), ctx.num_classes
  buf = (jnp.zeros((h, dim, c)), jnp.zeros((h, c)))
  state = ProbeState(
    jnp.zeros((h, dim, c)),
    jnp.zeros((h, c)),
    buf,
    jnp.zeros(dim),
    jnp.ones(dim),
    jnp.zeros((), jnp.int32),
  )
  state = jax.device_put(state, rep)
  step = jax.jit(
    functools.partial(
      train_step,
      encode=encode,
      view=_view(cfg, xtr.shape[1]),
      lrs=lrs,
      cfg={k: cfg[k] for k in ("weight_decay", "momentum", "bn_momentum")},
      schedule=optax.cosine_decay_schedule(1.0, total),
    ),
    in_shardings=(rep, rep, data, data, rep),
    out_shardings=(rep, rep),
    donate_argnums=0,
  )
  rng = jax.random.PRNGKey(cfg["seed"])
  workdir = getattr(ctx, "workdir", None)
  ident = (
    resumable.identity(cfg, enc, xtr, ytr, ctx.test_images, ctx.num_classes) if workdir else {}
  )
  resume = resumable.Resumable(workdir, "linear_aug", ident, cfg["checkpoint_every_steps"], total)
  with resume:
    state, start, _ = resume.restore(state)
    prog = progress.Progress(total, start, batch)
    # a resumed run takes the batches the uninterrupted one would have taken from `start` on
    positions = itertools.islice(
      _epochs(len(xtr), batch, int(cfg["epochs"]), cfg["seed"]), start, None
    )
    for i, (xb, yb) in enumerate(
      reading.device_batches(xtr, ytr, positions, data, stand_in=True), start
    ):
      state, per_head = step(state, enc, xb, yb, jax.random.fold_in(rng, i))
      if (i + 1) % steps_per_epoch == 0:
        rates = prog.update(i + 1)
        progress.console(
          "linear_aug " + prog.line(i + 1, {"loss_best_head": float(jnp.min(per_head))}, rates)
        )
      resume.after_step(i + 1, state, dict)
    resume.finish(state, {})
  test, test_labels = extract_split(
    functools.partial(encode, ctx.params, ctx.batch_stats),
    ctx.test_images,
    mesh,
    labels=ctx.test_labels,
  )
  logits = np.asarray(head_logits(state, jnp.asarray(test), state.mean, state.var))
  acc = 100.0 * (logits.argmax(-1) == test_labels[None]).mean(-1)
  best = int(np.argmax(acc))
  out = {"linear_aug": float(acc[best]), "linear_aug_lr": float(cfg["lrs"][best])}
  out.update({f"linear_aug@lr{lr:g}": float(a) for lr, a in zip(cfg["lrs"], acc)})
  return out


def run(cfg, feats) -> dict:
  ctx = getattr(feats, "context", None)
  if ctx is None:
    raise ValueError("evals.linear_aug needs the encoder and raw images (feats.context)")
  return augmented_probe(ctx, dict(cfg) if cfg else None)
