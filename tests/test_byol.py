"""BYOL: the τ schedule, the loss, the EMA target, sharding and a short learning run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.methods import byol, common
from tests.helpers import assert_learns, assert_method_state_gets_no_gradient, experiment, tiny
from tests.test_dino import assert_steps_close, batches, one_step, sgd


def tiny_byol(steps: int = 3, batch: int = 16, name: str = "byol", **overrides):
  """The tiny preset with a 2-layer 8/16-wide CNN, 32-wide heads and no warm-up."""
  if name == "byol":
    heads = {"method.projector_hidden": (32,), "method.predictor_hidden": (32,)}
    heads["method.projector_dim"] = 16
  else:
    heads = {"method.expander_hidden": (32, 32), "method.expander_dim": 32}
  small = {
    "model.widths": (8, 16),
    "optimizer.warmup_epochs": 0.0,  # a non-zero learning rate at step 0
    "log_every_steps": 1,
    **heads,
  }
  return tiny(name, **{"total_steps": steps, "batch_size": batch, **small, **overrides})


def test_tau_schedule_endpoints_and_shape():
  total, base = 100, 0.996
  taus = np.array([float(common.cosine_momentum(k, total, base)) for k in range(total + 1)])
  assert taus[0] == pytest.approx(base, abs=1e-7)
  assert taus[-1] == pytest.approx(1.0, abs=1e-7)
  assert taus[50] == pytest.approx(1 - (1 - base) / 2, abs=1e-7)  # cosine midpoint
  assert np.all(np.diff(taus) >= -1e-7)  # rises monotonically
  assert float(common.cosine_momentum(10 * total, total, base)) == pytest.approx(1.0)
  config = tiny_byol()
  method = byol.create(config, total_steps=40)
  assert config.method.base_momentum == 0.98  # the cpu preset's, which tiny keeps
  assert float(method.momentum(0)) == pytest.approx(0.98)
  assert float(method.momentum(40)) == pytest.approx(1.0)


def test_normalised_mse_is_two_minus_two_cosine():
  rng = np.random.default_rng(0)
  p, z = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
  got = np.asarray(byol.regression_loss(jnp.asarray(p), jnp.asarray(z)))
  pn = p / np.linalg.norm(p, axis=1, keepdims=True)
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  np.testing.assert_allclose(got, ((pn - zn) ** 2).sum(1), rtol=1e-5)
  np.testing.assert_allclose(got, 2 - 2 * (pn * zn).sum(1), rtol=1e-5)
  # Scale-invariant, 0 for the same direction, 4 for the opposite one.
  np.testing.assert_allclose(byol.regression_loss(jnp.asarray(p), jnp.asarray(3 * p)), 0, atol=1e-6)
  np.testing.assert_allclose(byol.regression_loss(jnp.asarray(p), jnp.asarray(-p)), 4, rtol=1e-6)


def test_asymmetric_views_and_collapse_warning():
  method = byol.create(experiment("byol", "imagenet"), total_steps=10)
  v1, v2 = method.views.global_views
  assert (v1.blur_prob, v2.blur_prob, v1.solarize_prob, v2.solarize_prob) == (1.0, 0.1, 0, 0.2)
  assert method.collapse_warning({"embedding_std_rel": 0.01}) is not None
  assert method.collapse_warning({"embedding_std_rel": 0.8}) is None
  with pytest.raises(ValueError, match="num_local_crops=0"):
    byol.create(tiny_byol(**{"augment.num_local_crops": 2}), total_steps=10)


@pytest.fixture(scope="module")
def byol_step():
  """One one-device step, shared by the target tests and the sharding comparison."""
  config = sgd(tiny_byol())
  return (config,) + one_step(config, batches(config)[0], mesh=[("data", 1)])


def test_target_is_encoder_and_projector_and_moves_only_by_ema(byol_step):
  config, setup, before, after, metrics = byol_step
  target0 = before.method_state["target"]["params"]
  target1 = after.method_state["target"]["params"]
  assert set(target0) == {"encoder", "projector"}  # no predictor
  assert set(before.params["model"]) == {"encoder", "projector", "predictor"}
  online1 = common.subtree(after.params["model"], ("encoder", "projector"))
  tau = float(setup.method.momentum(0))
  for a, s, b in zip(jax.tree.leaves(target0), jax.tree.leaves(online1), jax.tree.leaves(target1)):
    np.testing.assert_allclose(b, tau * a + (1 - tau) * s, rtol=1e-6, atol=1e-7)
  assert any(
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(target0), jax.tree.leaves(target1))
  )
  # The target's own BatchNorm statistics moved (it runs in training mode).
  bs0 = jax.tree.leaves(before.method_state["target"]["batch_stats"])
  bs1 = jax.tree.leaves(after.method_state["target"]["batch_stats"])
  assert bs0 and any(not np.array_equal(a, b) for a, b in zip(bs0, bs1))
  assert 0.0 <= metrics["loss"] <= 8.0 and metrics["target_momentum"] == pytest.approx(tau)


def test_target_receives_no_gradient(byol_step):
  config, setup, before, _, _ = byol_step
  images = jnp.asarray(batches(config)[0]["image"])
  assert_method_state_gets_no_gradient(setup.method, before, images)


def test_sharded_step_equals_single_device(byol_step):
  config, _, before, one, m1 = byol_step
  _, _, eight, m8 = one_step(sgd(tiny_byol()), batches(config)[0], mesh=[("data", 8)])
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  assert_steps_close(eight, one, before, ("params", "batch_stats", "method_state"))


@pytest.mark.slow
def test_short_cpu_run_learns(tmp_path):
  config = tiny("byol", total_steps=20, batch_size=32, **{"optimizer.warmup_epochs": 0.0})
  # 20 steps cut the held-out loss against the trained target by 2.52 (seed 0); about half
  # of it is asked.
  assert_learns(config, tmp_path, margin=1.25, measured=2.52)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["steps"] == 20 and "knn@5" in saved
