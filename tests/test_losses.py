import jax.numpy as jnp
import numpy as np
import pytest

from sslx import losses


def test_info_nce_worked_example():
  # Positive 0.9, negatives 0.3 / 0.1 / -0.2 at tau = 0.1.
  sims = jnp.array([[0.9, 0.3, 0.1, -0.2]])
  assert float(losses.info_nce(sims, 0.1)) == pytest.approx(0.0028, abs=5e-5)
  # A hard negative at 0.85 makes the loss jump.
  sims = jnp.array([[0.9, 0.85, 0.1, -0.2]])
  assert float(losses.info_nce(sims, 0.1)) == pytest.approx(0.474, abs=5e-4)


def numpy_nt_xent(z, tau):
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  total = 0.0
  for i in range(n2):
    j = i + 1 if i % 2 == 0 else i - 1  # image-major: rows 2k and 2k + 1 are a pair
    sims = np.array([z[i] @ z[k] / tau for k in range(n2) if k != i])
    pos = z[i] @ z[j] / tau
    total += -pos + np.log(np.exp(sims).sum())
  return total / n2


def test_nt_xent_matches_numpy():
  z = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
  loss, acc = losses.nt_xent(jnp.asarray(z), 0.5)
  assert float(loss) == pytest.approx(numpy_nt_xent(z.astype(np.float64), 0.5), rel=1e-5)
  assert 0.0 <= float(acc) <= 1.0


def test_nt_xent_perfect_pairs_have_full_accuracy():
  base = np.eye(4, 8, dtype=np.float32)
  z = np.repeat(base, 2, axis=0)  # each image's two views side by side
  loss, acc = losses.nt_xent(jnp.asarray(z), 0.1)
  assert float(acc) == 1.0
  # Positive logit 10, 6 orthogonal negatives at 0: loss = log(e^10 + 6) - 10.
  assert float(loss) == pytest.approx(np.log(np.exp(10) + 6) - 10, abs=2e-6)


def test_softmax_cross_entropy_masks_invalid_rows():
  logits = jnp.array([[2.0, 0.0], [0.0, 5.0], [9.0, 0.0]])
  labels = jnp.array([0, 1, -1])
  loss, acc = losses.softmax_cross_entropy(logits, labels, valid=labels >= 0)
  expected = np.mean([np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(-5.0))])
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(acc) == 1.0


def test_l2_normalize_zero_vector_is_finite():
  out = losses.l2_normalize(jnp.zeros((2, 3)))
  assert np.all(np.isfinite(np.asarray(out)))
  assert float(jnp.linalg.norm(losses.l2_normalize(jnp.ones((1, 4))))) == pytest.approx(1.0)


def test_masked_mean_counts_the_entries_it_averages():
  values = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  # a mask of the last axis broadcast over the rows: the mean of 1, 3, 4, 6
  assert float(losses.masked_mean(values, jnp.asarray([True, False, True]))) == 3.5
  # per row (axis=-1), each row over its own kept entries; a row that keeps none gives 0
  per_row = losses.masked_mean(
    values, jnp.asarray([[True, True, False], [False, False, False]]), -1
  )
  np.testing.assert_allclose(per_row, [1.5, 0.0])
