"""Linear probe on frozen features: the standard protocol's classifier on top of a frozen
encoder (Zhang et al. 2016; Kolesnikov et al. 2019).

Features are extracted once without augmentation and standardised with the training set's
mean and std (equivalent to a BatchNorm without affine parameters in front of the linear
layer, as MAE's probe does), then a linear classifier is trained with SGD + Nesterov momentum
and a cosine schedule. The whole training loop is one `lax.scan`, so the probe costs seconds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx import losses


@functools.partial(jax.jit, static_argnames=("epochs", "batch_size", "num_classes"))
def _fit(x, y, rng, lr, weight_decay, epochs: int, batch_size: int, num_classes: int):
  n, d = x.shape
  steps_per_epoch = max(n // batch_size, 1)
  schedule = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)
  tx = optax.chain(
    optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=0.9, nesterov=True)
  )
  params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}
  opt_state = tx.init(params)

  def loss_fn(p, xb, yb):
    return losses.softmax_cross_entropy(xb @ p["w"] + p["b"], yb)[0]

  def epoch(carry, key):
    perm = jax.random.permutation(key, n)[: steps_per_epoch * batch_size]
    perm = perm.reshape(steps_per_epoch, batch_size)

    def step(carry, idx):
      p, s = carry
      g = jax.grad(loss_fn)(p, x[idx], y[idx])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, carry, perm)[0], None

  (params, _), _ = jax.lax.scan(epoch, (params, opt_state), jax.random.split(rng, epochs))
  return params


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
) -> float:
  """Top-1 test accuracy (%) of a linear classifier trained on standardised features."""
  train = np.asarray(train_feats, np.float32)
  mean, std = train.mean(0), train.std(0) + 1e-6
  x = jnp.asarray((train - mean) / std)
  xt = jnp.asarray((np.asarray(test_feats, np.float32) - mean) / std)
  batch_size = min(batch_size, x.shape[0])
  params = _fit(
    x,
    jnp.asarray(train_labels, jnp.int32),
    jax.random.PRNGKey(seed),
    lr,
    weight_decay,
    epochs,
    batch_size,
    num_classes,
  )
  pred = np.asarray(jnp.argmax(xt @ params["w"] + params["b"], -1))
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
    )
  }
