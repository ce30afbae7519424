"""Linear probe on frozen features: the standard protocol's classifier on top of a frozen
encoder (Zhang et al. 2016; Kolesnikov et al. 2019).

Features are extracted once without augmentation and standardised with the training set's
mean and std (equivalent to a BatchNorm without affine parameters in front of the linear
layer, as MAE's probe does), then a linear classifier is trained with SGD + Nesterov momentum
and a cosine schedule. Each epoch is one jitted `lax.scan`, so the probe costs seconds.

The standardised features are split by rows over every device of the mesh (ResNet-50's of
ImageNet's train split: 9.8 GiB, 1.2 GiB per device on 8); the classifier is replicated.
Each step's batch is gathered by the partitioner as masked local gathers and one all-reduce
of the [B, D] batch, which sums each row with zeros and so equals the one-device gather bit
for bit: the probe's result does not depend on the device count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx import losses, preemption, progress, sharding


def _optimizer(lr, weight_decay, total_steps: int):
  schedule = optax.cosine_decay_schedule(lr, total_steps)
  return optax.chain(
    optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=0.9, nesterov=True)
  )


@functools.partial(
  jax.jit, static_argnames=("num_rows", "total_steps", "batch_size"), donate_argnums=0
)
def _epoch(carry, x, y, key, lr, weight_decay, num_rows: int, total_steps: int, batch_size: int):
  """One epoch of SGD over a fresh permutation of the first `num_rows` rows of (x, y) (the
  rest: padding): `carry` is (params, opt_state)."""
  n = num_rows
  steps = max(n // batch_size, 1)
  tx = _optimizer(lr, weight_decay, total_steps)
  perm = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)

  def loss_fn(p, xb, yb):
    return losses.softmax_cross_entropy(xb @ p["w"] + p["b"], yb)[0]

  def step(carry, idx):
    p, s = carry
    g = jax.grad(loss_fn)(p, x[idx], y[idx])
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  return jax.lax.scan(step, carry, perm)[0]


def _fit(x, y, n, rng, lr, weight_decay, epochs: int, batch_size: int, num_classes: int, what: str):
  """The classifier's params after `epochs` epochs over the first `n` rows of (x, y), one
  jitted call per epoch (so that long probes report progress; the schedule runs over all
  epochs' steps)."""
  d = x.shape[1]
  total_steps = epochs * max(n // batch_size, 1)
  everywhere = sharding.replicated(x.sharding.mesh)
  params = {
    "w": sharding.host_to_global(np.zeros((d, num_classes), np.float32), everywhere),
    "b": sharding.host_to_global(np.zeros((num_classes,), np.float32), everywhere),
  }
  carry = (params, _optimizer(lr, weight_decay, total_steps).init(params))
  ticker = progress.Ticker(what, epochs, "epochs")
  for i, key in enumerate(jax.random.split(rng, epochs)):
    carry = _epoch(carry, x, y, key, lr, weight_decay, n, total_steps, batch_size)
    if ticker.due():  # wait for the epoch only when a line is due
      jax.block_until_ready(carry)
      ticker.update(i + 1)
    preemption.evaluation_sync_point()  # several processes: stop together on SIGTERM
  ticker.finish()
  return carry[0]


def linear_probe_accuracy(
  train_feats,
  train_labels,
  test_feats,
  test_labels,
  num_classes: int,
  epochs: int = 100,
  batch_size: int = 256,
  lr: float = 0.1,
  weight_decay: float = 0.0,
  seed: int = 0,
  what: str = "linear probe",
  mesh=None,
) -> float:
  """Top-1 test accuracy (%) of a linear classifier trained on standardised features (`what`:
  the name its progress lines give it, on long runs only), the features split by rows over
  `mesh` (None: this process's first device)."""
  mesh = sharding.local_mesh() if mesh is None else mesh
  train = np.asarray(train_feats, np.float32)
  mean, std = train.mean(0), train.std(0) + 1e-6
  x = sharding.rows_over_mesh((train - mean) / std, mesh)
  xt = sharding.rows_over_mesh((np.asarray(test_feats, np.float32) - mean) / std, mesh)
  y = sharding.host_to_global(np.asarray(train_labels, np.int32), sharding.replicated(mesh))
  n = len(train)
  params = _fit(
    x,
    y,
    n,
    jax.random.PRNGKey(seed),
    lr,
    weight_decay,
    epochs,
    min(batch_size, n),
    num_classes,
    what,
  )
  predict = jax.jit(
    lambda p, f: jnp.argmax(f @ p["w"] + p["b"], -1), out_shardings=sharding.replicated(mesh)
  )
  pred = np.asarray(predict(params, xt).addressable_data(0))[: len(test_labels)]
  return 100.0 * float((pred == np.asarray(test_labels)).mean())


def run(cfg, feats) -> dict:
  return {
    "linear": linear_probe_accuracy(
      feats.train,
      feats.train_labels,
      feats.test,
      feats.test_labels,
      feats.num_classes,
      epochs=cfg.get("epochs", 100),
      batch_size=cfg.get("batch_size", 256),
      lr=cfg.get("lr", 0.1),
      weight_decay=cfg.get("weight_decay", 0.0),
      seed=cfg.get("seed", 0),
      what=feats.what("linear probe"),
      mesh=feats.mesh,
    )
  }
