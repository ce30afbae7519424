"""Context encoder (experiments/context_encoder.py): masks, the G/D gradient split, a run."""

import jax
import numpy as np
import pytest

from sslx.methods import context_encoder as ce
from tests.helpers import assert_learns, tiny

SMALL = {"method.decoder_base": 8, "method.disc_widths": (8, 16)}


def test_center_mask_and_overlap_weights():
  hole, weights = ce.center_masks(32, 1)
  hole, weights = np.asarray(hole), np.asarray(weights)
  assert hole.sum() == 14 * 14 and hole[9:23, 9:23].all()
  assert weights.shape == (16, 16) and weights.sum() == 14 * 14  # True inside the hole
  assert not weights[0].any() and weights[1:15, 1:15].all()
  block = np.asarray(ce.random_block_mask(jax.random.PRNGKey(0), 32, 4))
  assert 64 <= block.sum() <= 4 * 64
  assert not np.array_equal(block, np.asarray(ce.random_block_mask(jax.random.PRNGKey(1), 32, 4)))


@pytest.mark.parametrize("mode", ["center", "random_block"])
def test_each_subtree_gets_exactly_its_own_gradient(mode):
  method = ce.create(tiny("context_encoder", **SMALL, **{"method.mask_mode": mode}), total_steps=6)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  v = method.init(jax.random.PRNGKey(0), images)
  rng = jax.random.PRNGKey(1)

  def part(i):
    return lambda p: method.loss_terms(p, v.batch_stats, images, rng)[i]

  @jax.jit
  def grads(p):
    total = jax.grad(lambda q: method.loss(q, v.batch_stats, {}, images, rng, 0)[0])(p)
    return total, jax.grad(part(0))(p), jax.grad(part(1))(p)

  total, g_only, d_only = grads(v.params)
  for a, b in zip(
    jax.tree.leaves(total["discriminator"]), jax.tree.leaves(d_only["discriminator"])
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(total["generator"]), jax.tree.leaves(g_only["generator"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  # And neither loss leaks into the other's parameters.
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(g_only["discriminator"]))
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(d_only["generator"]))
  assert any(np.asarray(x).any() for x in jax.tree.leaves(total["discriminator"]))


@pytest.mark.slow
def test_cpu_preset_short_run_learns(tmp_path):
  c = tiny("context_encoder", total_steps=16, **SMALL, **{"optimizer.base_lr": 3e-3})
  # 16 steps cut the held-out loss by 0.711 (seed 0); half of it is asked.
  assert_learns(c, tmp_path, margin=0.35, measured=0.711)
  assert (tmp_path / "results.json").exists()
