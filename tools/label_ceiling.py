r"""How far an experiment's evaluated feature gets when its encoder is trained with labels.

    python tools/label_ceiling.py --config=experiments/cpc.py
    python tools/label_ceiling.py --config=experiments/cpc.py --config.method.patch_size=8 ...

The method's own readout (`method.encode`: for CPC the mean of its patch embeddings) is trained
end to end with a linear classifier on top, by cross-entropy on the labels, on the same data,
views (`config.augment`), optimiser and number of steps as the experiment's run; then k-NN@20
(the first runs' metric for contrastive methods) is measured on it as evaluation does, next to
the same readout untrained. A first run cannot be expected to beat its baselines by much where
this supervised figure does not: the feature's shape and the budget, not the method, set it.

Only for encoders without batch statistics (BatchNorm's running means would be trained in
evaluation mode here); the config's method must define `encode(params, batch_stats, images)`.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from sslx import config_lib, data, evaluation, methods, optim, sharding, xla
from sslx.evaluation import knn
from sslx.methods import base

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=False)
_SEED = flags.DEFINE_integer("seed", 0, "initialisation, batch order and augmentation")
_OUT = flags.DEFINE_string("out", None, "also write the figures here (JSON)")


def train_with_labels(config, method, train_x, train_y, num_classes: int, seed: int):
  """(trained params, untrained params, every step's loss): `method.encode` + a linear head trained
  by softmax cross-entropy for the run's steps (`config_lib.total_steps`) of config.batch_size
  images."""
  steps, batch = config_lib.total_steps(config, len(train_x)), int(config.batch_size)
  if batch > len(train_x):
    raise ValueError(f"config.batch_size={batch} is more than the {len(train_x)} train images")
  rng = jax.random.PRNGKey(seed)
  init = method.init(rng, jnp.asarray(train_x[:2]))
  if jax.tree_util.tree_leaves(init.batch_stats):
    raise ValueError(
      f"{config.model.name} keeps batch statistics: this tool trains the encoder through its "
      "evaluation-mode readout, which would leave them at their initial values"
    )
  view = base.view_params(config.augment)
  width = method.encode(init.params, {}, jnp.asarray(train_x[:2])).shape[-1]
  head = jnp.zeros((width, num_classes))  # the first step's loss is ln(classes)
  params = {"encoder": init.params, "head": head}
  spe = config_lib.steps_per_epoch(len(train_x), batch)
  schedule = optim.lr_schedule(config.optimizer, batch, steps, spe)  # the trainer's
  tx = optim.make_optimizer(config.optimizer, schedule, steps)
  opt_state = tx.init(params)

  def loss_fn(p, x, y, key):
    x = base.view_pixels(key, x, view)  # [0, 1]; the method's encode normalises
    logits = method.encode(p["encoder"], {}, x) @ p["head"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s, x, y, key):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y, key)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  order = np.random.default_rng(seed)
  losses = []
  t0 = time.perf_counter()
  for i in range(steps):
    idx = order.choice(len(train_x), batch, replace=False)
    params, opt_state, loss = step(
      params,
      opt_state,
      jnp.asarray(train_x[idx]),
      jnp.asarray(train_y[idx]),
      jax.random.fold_in(rng, 2 + i),
    )
    losses.append(float(loss))
    if (i + 1) % max(1, steps // 10) == 0 or i + 1 == steps:
      rate = (i + 1) / (time.perf_counter() - t0)
      print(
        f"step {i + 1}/{steps} | loss {float(loss):.3f} | {rate:.2f} steps/s | "
        f"ETA {(steps - i - 1) / rate:.0f}s",
        flush=True,
      )
  return params["encoder"], init.params, losses


def features(method, params, images: np.ndarray) -> np.ndarray:
  """`method.encode` of every image, extracted as evaluation extracts features."""
  encode = functools.partial(method.encode, params, {})
  return evaluation.extract(encode, images, sharding.local_mesh(), what="label-ceiling features")


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=experiments/<name>.py is required")
  train_x, train_y = data.decode_all(data.build_source(config.dataset, "train"), what="train")
  test_x, test_y = data.decode_all(data.build_source(config.dataset, "test"), what="test")
  steps = config_lib.total_steps(config, len(train_x))
  method = methods.get(config.method.name).create(config, steps)
  num_classes = int(max(train_y.max(), test_y.max()) + 1)
  trained, untrained, losses = train_with_labels(
    config, method, train_x, train_y, num_classes, _SEED.value
  )
  out = {"steps": steps, "batch_size": int(config.batch_size), "loss": losses[-1]}
  for name, params in (("with_labels", trained), ("untrained", untrained)):
    got = knn.knn_accuracy(
      features(method, params, train_x),
      train_y,
      features(method, params, test_x),
      test_y,
      num_classes,
      ks=(20,),
    )
    out[name] = got["knn@20"]
  print(json.dumps(out), flush=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  xla.reexec_with_fast_malloc()  # as every sslx command: tcmalloc, no idle TPU plugin, CPU flags
  xla.keep_idle_plugins_asleep()
  xla.configure_xla_for_cpu()
  sys.exit(app.run(main))
