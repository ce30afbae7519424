"""Small configs shared by the trainer tests."""

import os

from sslx import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment(name: str, arg: str = "cpu"):
  """An experiment preset on a one-device mesh: end-to-end tests compile and run ~25% faster
  than on the suite's 8 fake devices. Sharding has its own tests (each method's sharded step
  equals its one-device step), which set their meshes explicitly."""
  c = config_lib.load_experiment(os.path.join(REPO, "experiments", f"{name}.py") + ":" + arg)
  c.mesh = (("data", 1),)
  return c


def tiny_simclr(steps: int = 6, batch: int = 32, **overrides):
  """The demo config shrunk to seconds: a narrow CNN, few steps, k-NN only."""
  c = experiment("simclr")
  c.model.widths = (8, 16)
  c.method.projector_hidden = (32,)
  c.method.projector_dim = 16
  c.batch_size = batch
  c.total_steps = steps
  c.log_every_steps = 2
  c.checkpoint_every_steps = 3
  c.tensorboard = True
  c.eval_baselines = False
  c.evals = {"knn": {"ks": (5,), "temperature": 0.07}}
  c.eval_train_limit = 500
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c
