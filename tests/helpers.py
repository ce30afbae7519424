"""The tiny config every test shares, and the end-to-end check that a method learns."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sslx import config_lib, data, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment(name: str, arg: str = "cpu"):
  """An experiment preset on a one-device mesh: end-to-end tests compile and run ~25% faster
  than on the suite's 8 fake devices. Sharding has its own tests (each method's sharded step
  equals its one-device step), which set their meshes explicitly."""
  c = config_lib.load_experiment(os.path.join(REPO, "experiments", f"{name}.py") + ":" + arg)
  c.mesh = (("data", 1),)
  return c


def override(c, **overrides):
  """Sets dotted keys in place (`**{"method.projector_dim": 16}`) and returns `c`."""
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def tiny(name: str, **overrides):
  """`experiments/<name>.py:tiny` (the cpu preset shrunk to seconds: widths / 8, ViTs at width
  32 and depth 2, batch 16, 4 steps, k-NN@5 on 500 images) on a one-device mesh, with dotted-key
  overrides for what a test needs."""
  return override(experiment(name, "tiny"), **overrides)


def tiny_simclr(steps: int = 6, batch: int = 32, **overrides):
  """The demo on the tiny preset with the narrow 2-layer CNN and heads the trainer tests were
  written against, views at the images' own 32 px (models swapped in, such as a patch-16 ViT,
  need them), and a checkpoint every 3 steps (the resume tests stop between them)."""
  fixed = {
    "augment.crop_size": 32,
    "model.widths": (8, 16),
    "method.projector_hidden": (32,),
    "method.projector_dim": 16,
    "batch_size": batch,
    "total_steps": steps,
    "checkpoint_every_steps": 3,
  }
  return tiny("simclr", **{**fixed, **overrides})


def crash_mid_run(config, workdir: str, monkeypatch, at_batch: int = 5) -> None:
  """Runs `config` in `workdir` until the `at_batch`-th batch reaches the devices, where it
  crashes (a RuntimeError, as a dying host would); the data path is restored afterwards."""
  real = data.to_global_array
  calls = {"n": 0}

  def crashing(batch, sharding):
    calls["n"] += 1
    if calls["n"] == at_batch:
      raise RuntimeError("simulated crash")
    return real(batch, sharding)

  monkeypatch.setattr(data, "to_global_array", crashing)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate(config, workdir)
  monkeypatch.setattr(data, "to_global_array", real)


def held_out_images(config, n: int = 32) -> np.ndarray:
  """`n` images spread evenly over the class-sorted test split: the same images for every run."""
  source = data.build_source(config.dataset, "test")
  return np.stack([source[int(i)]["image"] for i in np.linspace(0, len(source) - 1, n)])


def trained_and_untrained_loss(config, workdir: str, n: int = 32, seed: int = 7):
  """The method's own loss on fixed held-out images and a fixed rng, for the trained state in
  `workdir` and for the untrained initial state of the same seed.

  Both use the trained method_state (EMA teacher, queue, centre, priors): against an untrained
  teacher or a queue of random vectors the untrained loss is no baseline at all (a random
  student matches a random teacher's near-uniform output well), while against the same trained
  targets the only difference left is what the trained parameters learnt."""
  setup, final, step = train.restore_latest(config, workdir)
  images = held_out_images(config, n)
  initial = train.create_state(setup, config.seed, np.zeros((2, *images.shape[1:]), np.uint8))
  loss = jax.jit(setup.method.loss)
  rng = jax.random.PRNGKey(seed)

  def value(state):
    params = state.params["model"]
    return float(loss(params, state.batch_stats, final.method_state, images, rng, step)[0])

  return value(final), value(initial)


def assert_learns(config, workdir: str, margin: float, measured: float) -> dict:
  """Trains `config` in `workdir` and asserts the trained loss is below the untrained one by at
  least `margin` (an amount that a method which does not learn, or learns the wrong thing,
  misses): `measured` is the drop this test measured on its seed, written into the failure
  message. Returns train_and_evaluate's results."""
  results = train.train_and_evaluate(config, str(workdir))
  trained, untrained = trained_and_untrained_loss(config, str(workdir))
  assert trained < untrained - margin, (
    f"{config.method.name}: trained loss {trained:.4f} is not below the untrained "
    f"{untrained:.4f} by {margin} (drop {untrained - trained:.4f}; measured {measured} on seed "
    f"{config.seed} when the margin was set)"
  )
  return results


def assert_method_state_gets_no_gradient(method, state, images) -> None:
  """The loss's gradient with respect to the method's state (EMA teachers, centers, queues) is
  exactly zero: the state moves only by its own update rule, never by the optimiser."""
  import jax.numpy as jnp

  grads = jax.jit(
    jax.grad(
      lambda ms: method.loss(
        state.params["model"], state.batch_stats, ms, images, jax.random.PRNGKey(0), 0
      )[0]
    )
  )(state.method_state)
  assert jax.tree.leaves(grads), "the method has no state to check"
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def run_module(module: str, *args: str, timeout: int = 300, **env: str):
  """`python -m <module> <args>` from the repository root with `env` added to this process's
  environment; the CompletedProcess, output captured as text."""
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, **env),
  )


def run_benchmark(*args: str) -> dict:
  """`python -m sslx benchmark ARGS`: its JSON line, after checking it succeeded."""
  out = run_module("sslx", "benchmark", *args)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])
