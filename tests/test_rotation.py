"""Rotation prediction (experiments/rotation.py): exact rotations, labels, a short run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.methods import rotation
from tests.helpers import assert_learns, tiny


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
  c = tiny("rotation")
  method = rotation.create(c, total_steps=6)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  v = method.init(jax.random.PRNGKey(0), images)
  loss, aux = jax.jit(method.loss)(
    v.params, v.batch_stats, v.method_state, images, jax.random.PRNGKey(1), 0
  )
  width = c.model.widths[-1]
  assert aux.features.shape == (4, width)
  assert abs(float(loss) - np.log(4)) < 1.0  # near chance at init
  assert method.encode(v.params, v.batch_stats, images).shape == (4, width)


def short_run(base_lr: float, steps: int = 16, **overrides):
  return tiny("rotation", total_steps=steps, **{"optimizer.base_lr": base_lr, **overrides})


@pytest.mark.slow
def test_cpu_preset_short_run_learns(tmp_path):
  # 16 steps cut the 4-way loss on held-out images by 0.199 (seed 0); half of it is asked.
  assert_learns(short_run(3e-3), tmp_path, margin=0.1, measured=0.199)
  assert (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_a_method_that_does_not_learn_fails_the_margin(tmp_path):
  """The end-to-end margin catches a broken method: at learning rate 0 nothing is learnt (the
  drop is exactly 0), and the assertion fails. Two steps and no k-NN keep it cheap."""
  broken = short_run(0.0, steps=2, evals={})
  with pytest.raises(AssertionError, match="is not below the untrained"):
    assert_learns(broken, tmp_path, margin=0.1, measured=0.199)
