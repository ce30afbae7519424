"""One process of the two-process loopback test (tests/test_multihost.py).

Runs two train steps of the tiny SimCLR config on the global mesh, reading this process's
slice of every global batch, and prints one JSON line: the global batch labels (all
processes' rows, gathered), the losses and a checksum of the updated parameters; then the
features of 100 test images read batch by batch (`evaluation.extract_split`) and how many of
them this process read, and k-NN and linear-probe accuracies on them with the training
features sharded over the global mesh and on one device.
"""

import json
import sys

from sslx import distributed

distributed.maybe_initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from sslx import data, evaluation, train  # noqa: E402
from sslx.evaluation import knn, linear  # noqa: E402
from tests.helpers import tiny_simclr  # noqa: E402


class CountingSource:
  """A source that counts the records read from it."""

  def __init__(self, source):
    self.source, self.reads = source, 0

  def __getattr__(self, name):
    return getattr(self.source, name)

  def __getitem__(self, i):
    self.reads += 1
    return self.source[i]


def extracted(mesh) -> dict:
  test = CountingSource(data.build_source(tiny_simclr().dataset, "test"))
  split = evaluation.Split(test, np.arange(100), "test")
  feats, labels = evaluation.extract_split(
    lambda x: x.astype("float32").mean((1, 2)), split, mesh, batch_size=16
  )
  # k-NN with the first 60 images as the training set, sharded over every device of both
  # processes, and on this process's first device alone. The mean colours are near-ties for
  # grey images (cosine 1 within float rounding, which differs between the two layouts'
  # matmuls): 16 random dimensions are added. Random labels, so that the accuracies depend on
  # which neighbours are found.
  rng = np.random.default_rng(0)
  points = np.concatenate([feats, 50 * rng.normal(size=(len(feats), 16))], 1)
  noise = rng.integers(0, 10, len(labels))
  knn_args = (points[:60], noise[:60], points[60:], noise[60:], 10)
  return {
    "reads": test.reads,
    "features": feats.tolist(),
    "labels": labels.tolist(),
    "knn": knn.knn_accuracy(*knn_args, ks=(1, 7), chunk=16, mesh=mesh),
    "knn_one_device": knn.knn_accuracy(*knn_args, ks=(1, 7), chunk=16),
    "linear": [
      linear.linear_probe_accuracy(
        points[:60], labels[:60], points[60:], labels[60:], 10, epochs=3, batch_size=8, mesh=m
      )
      for m in (mesh, None)
    ],
    # every training image its own class, each test image labelled by its nearest one
    "nearest": knn.knn_accuracy(
      points[:60],
      np.arange(60),
      points[60:],
      nearest(points[60:], points[:60]),
      60,
      ks=(1,),
      mesh=mesh,
    ),
  }


def nearest(queries, rows):
  """The index of each query's most cosine-similar row (float64, on the host)."""
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
  return (unit(queries) @ unit(rows).T).argmax(1)


def main():
  config = tiny_simclr(batch=16)
  config.mesh = (("data", -1),)  # every device of every process (the helpers default to one)
  source = data.build_source(config.dataset, "train")
  loader = data.make_train_loader(source, config.batch_size, seed=0)
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(config, sample, len(source), source.num_classes)
  state = train.create_state(setup, 0, sample)
  step = train.compile_step(setup, probe_enabled=True)
  labels, losses = [], []
  for _ in range(2):
    local = next(loader)
    batch = data.to_global_array(local, setup.batch_sharding)
    labels.append(np.asarray(multihost_utils.process_allgather(local["label"], tiled=True)))
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  checksum = float(
    sum(
      np.abs(np.asarray(x.addressable_data(0), np.float64)).sum()
      for x in jax.tree.leaves(state.params)
    )
  )
  print(
    json.dumps(
      {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_rows": int(local["label"].shape[0]),
        "labels": [l.tolist() for l in labels],
        "losses": losses,
        "checksum": checksum,
        "extract": extracted(setup.mesh),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  sys.exit(main())
