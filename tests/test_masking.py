"""Masks: exact counts per image, pure functions of the rng, consistent index arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import masking


@pytest.mark.parametrize("n,ratio", [(64, 0.75), (64, 0.5), (16, 0.75), (49, 0.6), (64, 0.0)])
def test_random_mask_ratio_is_exact_per_image(n, ratio):
  m = masking.random_masking(jax.random.PRNGKey(0), 8, n, ratio)
  masked = masking.num_masked(n, ratio)
  np.testing.assert_array_equal(np.asarray(m.mask).sum(1), masked)
  assert m.ids_keep.shape == (8, n - masked)
  # ids_keep are exactly the visible patches; ids_restore inverts the shuffle.
  for b in range(8):
    assert set(np.asarray(m.ids_keep[b]).tolist()) == set(np.flatnonzero(~np.asarray(m.mask[b])))
  shuffled = jnp.concatenate([m.ids_keep, jnp.full((8, masked), -1, jnp.int32)], 1)
  restored = jnp.take_along_axis(shuffled, m.ids_restore, 1)
  visible = np.asarray(~m.mask)
  np.testing.assert_array_equal(
    np.asarray(restored)[visible], np.tile(np.arange(n), (8, 1))[visible]
  )


def test_random_mask_is_a_pure_function_of_the_rng():
  a = masking.random_masking(jax.random.PRNGKey(1), 4, 64, 0.75)
  b = masking.random_masking(jax.random.PRNGKey(1), 4, 64, 0.75)
  c = masking.random_masking(jax.random.PRNGKey(2), 4, 64, 0.75)
  np.testing.assert_array_equal(a.mask, b.mask)
  assert not np.array_equal(a.mask, c.mask)
  assert not np.array_equal(a.mask[0], a.mask[1])  # independent per image


@pytest.mark.parametrize(
  "grid,ratio", [((8, 8), 0.4), ((14, 14), 0.4), ((4, 4), 0.4), ((8, 8), 0.6)]
)
def test_blockwise_mask_count_is_exact_and_jittable(grid, ratio):
  fn = jax.jit(lambda k: masking.blockwise_masking(k, 6, grid, ratio))
  m = np.asarray(fn(jax.random.PRNGKey(0)))
  n = grid[0] * grid[1]
  assert m.shape == (6, n) and m.dtype == bool
  np.testing.assert_array_equal(m.sum(1), round(ratio * n))
  np.testing.assert_array_equal(m, np.asarray(fn(jax.random.PRNGKey(0))))


def test_blockwise_masks_are_blocky():
  """Masked patches cluster: most have a masked 4-neighbour (random masks: ~40%)."""
  m = np.asarray(masking.blockwise_masking(jax.random.PRNGKey(3), 16, (14, 14), 0.4))
  m = m.reshape(16, 14, 14)
  padded = np.pad(m, ((0, 0), (1, 1), (1, 1)))
  neighbour = (
    padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
  )
  assert (neighbour & m).sum() / m.sum() > 0.9


def test_blockwise_blocks_are_shorter_and_narrower_than_the_grid():
  """BEiT's code rejects a block as tall or as wide as the grid: on the cpu preset's 8x8 grid
  (26 patches, blocks of at least 8) about 13% of its masks have a fully masked row or column,
  which only unions of blocks make; clipping such blocks to the grid instead gave 21%."""
  m = np.asarray(masking.blockwise_masking(jax.random.PRNGKey(0), 4000, (8, 8), 26 / 64, 8))
  m = m.reshape(-1, 8, 8)
  full_line = (m.all(2).any(1) | m.all(1).any(1)).mean()
  assert 0.10 < full_line < 0.16


def test_ids_of_mask():
  mask = jnp.array([[True, False, True, False], [False, False, True, True]])
  np.testing.assert_array_equal(masking.ids_of_mask(mask, 2), [[0, 2], [2, 3]])
  np.testing.assert_array_equal(masking.ids_of_mask(mask, 2, value=False), [[1, 3], [0, 1]])
