"""Rotation prediction (experiments/rotation.py): exact rotations, labels, a short run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import train
from sslx.methods import rotation
from tests.helpers import experiment


def tiny_config(steps=6):
  c = experiment("rotation")
  c.model.widths = (8, 16)
  c.batch_size = 16
  c.total_steps = steps
  c.log_every_steps = 2
  c.checkpoint_every_steps = 0
  c.tensorboard = False
  c.eval_baselines = False
  c.evals = {"knn": {"ks": (5,), "temperature": 0.07}}
  c.eval_train_limit = 200
  return c


def test_rotations_are_exact_and_labels_match():
  x = np.random.default_rng(0).random((3, 5, 5, 2)).astype(np.float32)
  out, labels = rotation.rotate_all(jnp.asarray(x))
  out, labels = np.asarray(out), np.asarray(labels)
  assert out.shape == (12, 5, 5, 2) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
  for k in range(4):
    for i in range(3):
      np.testing.assert_array_equal(out[k * 3 + i], np.rot90(x[i], k=k, axes=(0, 1)))
  # 90° counter-clockwise: the top-right pixel moves to the top-left.
  np.testing.assert_array_equal(out[3][0, 0], x[0][0, -1])
  # Exact: a permutation of pixels, so sorted values are unchanged.
  np.testing.assert_array_equal(np.sort(out[6].ravel()), np.sort(x[0].ravel()))


def test_loss_is_four_way_over_all_rotations():
  c = tiny_config()
  method = rotation.create(c, total_steps=6)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  v = method.init(jax.random.PRNGKey(0), images)
  loss, aux = jax.jit(method.loss)(
    v.params, v.batch_stats, v.method_state, images, jax.random.PRNGKey(1), 0
  )
  assert aux.features.shape == (4, 16)
  assert abs(float(loss) - np.log(4)) < 1.0  # near chance at init
  assert method.encode(v.params, v.batch_stats, images).shape == (4, 16)


@pytest.mark.slow
def test_cpu_preset_short_run_learns(tmp_path):
  c = tiny_config(steps=16)
  c.optimizer.base_lr = 3e-3
  results = train.train_and_evaluate(c, str(tmp_path))
  assert results["train_loss_last"] < results["train_loss_first"]
  assert (tmp_path / "results.json").exists()
