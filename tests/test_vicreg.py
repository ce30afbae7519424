"""VICReg: the three terms against numpy, global-batch statistics under sharding, a short run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import sharding
from sslx.methods import vicreg
from tests.helpers import assert_learns, tiny
from tests.test_byol import tiny_byol
from tests.test_dino import batches, one_step, sgd


def tiny_vicreg(**overrides):
  return tiny_byol(name="vicreg", **overrides)


def numpy_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
  z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
  n, d = z1.shape
  inv = np.mean((z1 - z2) ** 2)

  def var(z):
    std = np.sqrt(z.var(axis=0, ddof=1) + eps)
    return np.mean(np.maximum(0.0, gamma - std))

  def cov(z):
    zc = z - z.mean(0)
    c = zc.T @ zc / (n - 1)
    return (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / d

  v = (var(z1) + var(z2)) / 2
  c = cov(z1) + cov(z2)
  return lam * inv + mu * v + nu * c, inv, v, c


def test_terms_against_numpy():
  rng = np.random.default_rng(0)
  z1 = rng.normal(scale=0.5, size=(32, 12)).astype(np.float32)
  z2 = (z1 + rng.normal(scale=0.3, size=z1.shape)).astype(np.float32)
  z2[:, 0] = 0.3 * z2[:, 1]  # a correlated pair of dims
  loss, terms = vicreg.vicreg_loss(jnp.asarray(z1), jnp.asarray(z2))
  ref, inv, v, c = numpy_vicreg(z1, z2)
  np.testing.assert_allclose(float(terms["invariance"]), inv, rtol=1e-5)
  np.testing.assert_allclose(float(terms["variance"]), v, rtol=1e-5)
  np.testing.assert_allclose(float(terms["covariance"]), c, rtol=1e-4)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  # Other coefficients are honoured.
  loss2, _ = vicreg.vicreg_loss(jnp.asarray(z1), jnp.asarray(z2), 1.0, 2.0, 3.0)
  np.testing.assert_allclose(float(loss2), numpy_vicreg(z1, z2, 1.0, 2.0, 3.0)[0], rtol=1e-5)


def test_hinge_and_off_diagonal_behaviour():
  rng = np.random.default_rng(1)
  wide = jnp.asarray(rng.normal(scale=3.0, size=(256, 4)))
  assert float(vicreg.variance(wide)) == 0.0  # every std above γ = 1
  collapsed = jnp.ones((16, 4))
  np.testing.assert_allclose(float(vicreg.variance(collapsed)), 1 - np.sqrt(1e-4), rtol=1e-6)
  independent = jnp.asarray(rng.normal(size=(4096, 3)) * np.array([1.0, 2.0, 3.0]))
  assert float(vicreg.covariance(independent)) < 0.05  # only the diagonal: ≈ 0
  x = rng.normal(size=(64, 1))
  v = float(np.var(x, ddof=1))
  # z = [x, 2x]: C = [[v, 2v], [2v, 4v]], off-diagonal squares 2·(2v)² over d = 2 → 4v².
  np.testing.assert_allclose(
    float(vicreg.covariance(jnp.asarray(np.hstack([x, 2 * x])))), 4 * v * v, rtol=1e-5
  )


def test_loss_over_the_global_batch_when_sharded():
  rng = np.random.default_rng(2)
  z1, z2 = (jnp.asarray(rng.normal(size=(64, 16)), jnp.float32) for _ in range(2))
  mesh = sharding.make_mesh([("data", -1)])
  put = lambda z: jax.device_put(z, sharding.batch_sharding(mesh))  # noqa: E731
  fn = jax.jit(lambda a, b: vicreg.vicreg_loss(a, b)[0])
  np.testing.assert_allclose(float(fn(put(z1), put(z2))), float(fn(z1, z2)), rtol=1e-6)
  # ... and differs from the mean of per-device losses (std/cov need the whole batch).
  per_device = np.mean([float(fn(z1[i : i + 8], z2[i : i + 8])) for i in range(0, 64, 8)])
  assert abs(per_device - float(fn(z1, z2))) > 1e-3


def test_sharded_step_equals_single_device():
  batch = batches(tiny_vicreg())[0]
  _, before, one, m1 = one_step(sgd(tiny_vicreg()), batch, mesh=[("data", 1)])
  _, _, eight, m8 = one_step(sgd(tiny_vicreg()), batch, mesh=[("data", 8)])
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  for key in ("invariance", "variance", "covariance"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(eight.batch_stats), jax.tree.leaves(one.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # The updates agree to 0.1% in norm, leaf by leaf. (λ = μ = 25 make VICReg's gradients
  # large, and a BatchNorm bias gradient — a sum over the batch of terms that nearly cancel —
  # differs elementwise by ~1e-3 relative between per-device blockings of the convolutions;
  # per-device statistics instead of global ones would differ by O(1).)
  for p0, a, b in zip(
    jax.tree.leaves(before.params["model"]),
    jax.tree.leaves(eight.params["model"]),
    jax.tree.leaves(one.params["model"]),
  ):
    d8, d1 = np.asarray(a) - p0, np.asarray(b) - p0
    assert np.linalg.norm(d8 - d1) <= 1e-3 * np.linalg.norm(d1) + 1e-6


@pytest.mark.slow
def test_short_cpu_run_learns(tmp_path):
  config = tiny("vicreg", total_steps=20, batch_size=32, **{"optimizer.warmup_epochs": 0.0})
  # 20 steps cut the held-out loss by 16.3 (seed 0); half of it is asked.
  assert_learns(config, tmp_path, margin=8.0, measured=16.3)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["steps"] == 20 and "knn@5" in saved
