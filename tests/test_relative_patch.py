"""Relative patch location (experiments/relative_patch.py): geometry and each shortcut guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.methods import relative_patch as rp
from tests.helpers import assert_learns, tiny

SMALL = {"method.tile_dim": 16, "method.head_hidden": (32,)}


def corners(seed, gap, jitter, size=48, patch=12):
  return np.asarray(rp.patch_corners(jax.random.PRNGKey(seed), size, patch, gap, jitter))


def test_gap_separates_patches():
  for gap in (0, 4, 6):
    c = corners(0, gap, 0)
    # Horizontal and vertical neighbours start patch + gap apart: `gap` px between them.
    np.testing.assert_array_equal(c[:, 1:, 1] - c[:, :-1, 1], 12 + gap)
    np.testing.assert_array_equal(c[1:, :, 0] - c[:-1, :, 0], 12 + gap)
  # With jitter the space between patches is still at least gap − 2·jitter.
  for seed in range(20):
    c = corners(seed, 4, 1)
    assert (c[:, 1:, 1] - c[:, :-1, 1] - 12 >= 4 - 2).all()
    assert (c >= 0).all() and (c + 12 <= 48).all()


def test_jitter_moves_patches_off_the_grid():
  rel = lambda c: c - c[1, 1]
  fixed = {tuple(rel(corners(s, 4, 0)).ravel()) for s in range(10)}
  assert len(fixed) == 1  # no jitter: the layout is rigid
  moved = [rel(corners(s, 4, 2)) - rel(corners(0, 4, 0)) for s in range(10)]
  assert len({tuple(m.ravel()) for m in moved}) > 1
  assert max(np.abs(m).max() for m in moved) <= 4 and any(np.abs(m).max() > 0 for m in moved)


def test_pair_label_matches_neighbour_cell():
  img = jnp.asarray(np.random.default_rng(0).random((48, 48, 3)), jnp.float32)
  for seed in range(4):
    key = jax.random.PRNGKey(seed)
    patches, label = rp.make_pair(key, img, 48, 12, 4, 1, "none")
    k_grid, _, _, _ = jax.random.split(key, 4)
    c = np.asarray(rp.patch_corners(k_grid, 48, 12, 4, 1))
    r, q = rp.NEIGHBOURS[int(label)]
    np.testing.assert_array_equal(
      np.asarray(patches[0]),
      np.asarray(img)[c[1, 1, 0] : c[1, 1, 0] + 12, c[1, 1, 1] : c[1, 1, 1] + 12],
    )
    np.testing.assert_array_equal(
      np.asarray(patches[1]),
      np.asarray(img)[c[r, q, 0] : c[r, q, 0] + 12, c[r, q, 1] : c[r, q, 1] + 12],
    )


def test_chromatic_aberration_guards_act():
  patch = jnp.asarray(np.random.default_rng(1).random((12, 12, 3)), jnp.float32)
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(
    np.asarray(rp.remove_chromatic_aberration(key, patch, "none")), np.asarray(patch)
  )
  projected = np.asarray(rp.remove_chromatic_aberration(key, patch, "project"))
  assert np.abs(np.asarray(patch) @ rp.GREEN_MAGENTA).mean() > 0.1
  np.testing.assert_allclose(projected @ rp.GREEN_MAGENTA, 0, atol=1e-5)
  for seed in range(3):
    dropped = np.asarray(rp.remove_chromatic_aberration(jax.random.PRNGKey(seed), patch, "drop"))
    same = [np.array_equal(dropped[..., ch], np.asarray(patch)[..., ch]) for ch in range(3)]
    assert sum(same) == 1  # one channel kept, two replaced
    kept = int(np.argmax(same))
    for ch in range(3):
      if ch != kept:
        assert dropped[..., ch].std() < 0.02 * dropped[..., kept].std()
  with pytest.raises(ValueError, match="color_guard"):
    rp.remove_chromatic_aberration(key, patch, "bogus")


def test_loss_runs_and_encode_is_whole_image():
  c = tiny("relative_patch", **SMALL)
  method = rp.create(c, total_steps=6)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  v = method.init(jax.random.PRNGKey(0), images)
  loss, aux = jax.jit(method.loss)(
    v.params, v.batch_stats, v.method_state, images, jax.random.PRNGKey(1), 0
  )
  assert abs(float(loss) - np.log(8)) < 1.0 and aux.features.shape == (4, c.model.widths[-1])


@pytest.mark.slow
def test_cpu_preset_short_run_learns(tmp_path):
  c = tiny("relative_patch", total_steps=20, **SMALL, **{"optimizer.base_lr": 3e-3})
  # 20 steps cut the held-out 8-way loss by 0.047 (seed 0): a small drop over so few steps, but
  # a method that learns nothing drops by exactly 0. Over 40% of it is asked.
  assert_learns(c, tmp_path, margin=0.02, measured=0.047)
  assert (tmp_path / "results.json").exists()


def test_all_neighbours_classifies_each_pair_as_the_pair_net_does():
  c = tiny("relative_patch", **SMALL, **{"method.all_neighbours": True})
  method = rp.create(c, total_steps=6)
  images = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), np.uint8)
  v = method.init(jax.random.PRNGKey(0), images)
  variables = {"params": v.params, "batch_stats": v.batch_stats}
  grids = method.grids(jax.random.PRNGKey(1), images)  # [3, 9, P, P, 3]
  assert grids.shape == (3, 9, method.patch_size, method.patch_size, 3)
  feats, grouped = method.net.apply(variables, grids, train=False, groups=rp.GRID_PAIRS)
  # Per-patch features stay per patch (9 per image), the logits are per pair (8 per image).
  assert feats.shape == (3, 9, c.model.widths[-1]) and grouped.shape == (3 * 8, 8)
  # The same pairs stacked as the one-pair task feeds them: (centre, neighbour k) for label k.
  pairs = jnp.stack([grids[:, [4, n]] for _, n in rp.GRID_PAIRS], axis=1).reshape(
    (-1, 2) + grids.shape[2:]
  )
  _, single = method.net.apply(variables, pairs, train=False)
  np.testing.assert_allclose(np.asarray(grouped), np.asarray(single), rtol=1e-5, atol=1e-5)
  # Label k is the neighbour cell NEIGHBOURS[k] of the row-major grid.
  assert [divmod(n, 3) for _, n in rp.GRID_PAIRS] == list(rp.NEIGHBOURS)
  loss, aux = jax.jit(method.loss)(
    v.params, v.batch_stats, v.method_state, images, jax.random.PRNGKey(1), 0
  )
  assert abs(float(loss) - np.log(8)) < 1.0 and aux.features.shape == (3, c.model.widths[-1])


def test_grid_cuts_every_cell_at_its_corner():
  img = jnp.asarray(np.random.default_rng(0).random((48, 48, 3)), jnp.float32)
  key = jax.random.PRNGKey(3)
  grid = np.asarray(rp.make_grid(key, img, 48, 12, 4, 1, "none"))
  c = np.asarray(rp.patch_corners(jax.random.split(key)[0], 48, 12, 4, 1)).reshape(9, 2)
  for i, (r, q) in enumerate(c):
    np.testing.assert_array_equal(grid[i], np.asarray(img)[r : r + 12, q : q + 12])
