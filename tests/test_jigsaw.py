"""Jigsaw (experiments/jigsaw.py): the greedy permutation set, tiles, per-tile normalisation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import permutations, weights
from sslx.methods import jigsaw
from tests.helpers import assert_learns, override, tiny

SMALL = {"method.num_permutations": 10, "method.tile_dim": 16, "method.head_hidden": (32,)}


def test_permutation_set_is_the_greedy_construction():
  perms = permutations.generate(100, seed=0)
  assert perms.shape == (100, 9)
  assert len({tuple(p) for p in perms}) == 100
  assert all(sorted(p) == list(range(9)) for p in perms)
  # Deterministic from the seed; another seed starts elsewhere.
  np.testing.assert_array_equal(perms, permutations.generate(100, seed=0))
  assert permutations.fingerprint(perms) == permutations.fingerprint(
    permutations.generate(100, seed=0)
  )
  assert not np.array_equal(perms, permutations.generate(100, seed=1))
  # The greedy invariant, checked independently over all 9! permutations: each chosen
  # permutation k >= 1 maximises the summed Hamming distance to perms[:k] among those not
  # yet chosen (ties to the lexicographically first).
  pool = np.asarray(list(itertools.permutations(range(9))), np.int8)
  summed = np.zeros(len(pool), np.int64)
  taken = np.zeros(len(pool), bool)
  for k in range(100):
    i = int(np.flatnonzero((pool == perms[k]).all(1))[0])
    if k:
      scores = np.where(taken, -1, summed)
      assert scores[i] == scores.max()
      assert i == int(np.argmax(scores))
    taken[i] = True
    summed += (pool != pool[i]).sum(1)
  # The set's minimum / mean pairwise distance: those of the paper's Table 3 for N=100.
  d = (perms[:, None] != perms[None]).sum(-1)
  off = d[~np.eye(100, dtype=bool)]
  assert permutations.min_hamming(perms) == off.min() == 2
  assert abs(off.mean() - 8.08) < 0.01


def test_tiles_have_random_gaps_and_are_normalised_per_tile():
  img = jnp.asarray(np.random.default_rng(0).random((48, 48, 3)), jnp.float32)
  offsets = np.asarray(jigsaw.tile_offsets(jax.random.PRNGKey(0), 48, 12))
  cells = np.stack(np.divmod(np.arange(9), 3), -1) * 16
  assert ((offsets >= cells) & (offsets <= cells + 4)).all()
  other = np.asarray(jigsaw.tile_offsets(jax.random.PRNGKey(1), 48, 12))
  assert not np.array_equal(offsets, other)  # the gaps are random
  tiles = jigsaw.cut_tiles(img, jnp.asarray(offsets), 12)
  r, c = offsets[4]
  np.testing.assert_array_equal(np.asarray(tiles[4]), np.asarray(img)[r : r + 12, c : c + 12])
  normed = np.asarray(jigsaw.normalize_tiles(tiles * 3.0 + 7.0))
  np.testing.assert_allclose(normed.mean(axis=(1, 2, 3)), 0, atol=1e-4)
  np.testing.assert_allclose(normed.std(axis=(1, 2, 3)), 1, atol=1e-3)


def test_puzzle_places_tiles_by_permutation():
  perms = jnp.asarray(permutations.generate(10, 0))
  img = jnp.asarray(np.random.default_rng(0).random((48, 48, 3)), jnp.float32)
  tiles, label = jigsaw.make_puzzle(jax.random.PRNGKey(3), img, perms, 48, 12)
  k_off, _ = jax.random.split(jax.random.PRNGKey(3))
  ref = jigsaw.normalize_tiles(jigsaw.cut_tiles(img, jigsaw.tile_offsets(k_off, 48, 12), 12))
  np.testing.assert_allclose(np.asarray(tiles), np.asarray(ref)[np.asarray(perms[label])])


def test_method_state_carries_the_permutation_set():
  c = tiny("jigsaw", **SMALL)
  method = jigsaw.create(c, total_steps=6)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  v = method.init(jax.random.PRNGKey(0), images)
  np.testing.assert_array_equal(
    np.asarray(v.method_state["permutations"]), permutations.generate(10, 0)
  )
  loss, aux = jax.jit(method.loss)(
    v.params, v.batch_stats, v.method_state, images, jax.random.PRNGKey(1), 0
  )
  assert np.isfinite(float(loss)) and aux.features.shape == (4, c.model.widths[-1])


def test_encode_sees_whole_images_at_the_tile_scale():
  """The tiles are cut from images resized to `image_size` (48 px from 32 px sources), so
  `encode` resizes whole images the same way: objects keep the size the encoder trained on."""
  c = tiny("jigsaw", **SMALL)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  method = jigsaw.create(c, total_steps=6)
  v = method.init(jax.random.PRNGKey(0), images)
  x = method.preprocess(jnp.asarray(images))
  x48 = jax.image.resize(x, (4, 48, 48, 3), "bilinear")
  assert method.encoder_input(images).shape == (4, 48, 48, 3)
  np.testing.assert_allclose(np.asarray(method.encoder_input(images)), np.asarray(x48), atol=1e-5)
  variables = {"params": v.params, "batch_stats": v.batch_stats}
  enc = jigsaw.pretext_nets.TileSetClassifier.encode
  want = method.net.apply(variables, x48, method=enc)
  got = method.encode(v.params, v.batch_stats, images)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # "as_given" keeps the source's 32 px, which gives other features.
  override(c, **{"method.whole_image": "as_given"})
  as_given = jigsaw.create(c, total_steps=6)
  got32 = as_given.encode(v.params, v.batch_stats, images)
  np.testing.assert_allclose(
    np.asarray(got32), np.asarray(method.net.apply(variables, x, method=enc)), atol=1e-5
  )
  assert np.abs(np.asarray(got32) - np.asarray(got)).max() > 1e-3
  override(c, **{"method.whole_image": "tiles"})
  with pytest.raises(ValueError, match="method.whole_image='tiles'"):
    jigsaw.create(c, total_steps=6)


def test_export_finds_the_encoder_behind_the_resize():
  """Export locates the plain encoder by equal features on the method's own encoder input
  (48 px here), and records that side as the input size."""
  c = tiny("jigsaw", **SMALL)
  images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), np.uint8)
  method = jigsaw.create(c, total_steps=6)
  v = method.init(jax.random.PRNGKey(0), images)
  encoder = weights.encoder_module(c)
  ep, es = weights.find_encoder(method, encoder, v.params, v.batch_stats, images)
  x = method.encoder_input(jnp.asarray(images))
  got = encoder.apply({"params": ep, "batch_stats": es}, x, train=False)["pre_logits"]
  want = method.encode(v.params, v.batch_stats, images)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


@pytest.mark.slow
def test_cpu_preset_short_run_learns(tmp_path):
  c = tiny("jigsaw", total_steps=20, **SMALL)
  override(c, **{"method.num_permutations": 4, "optimizer.base_lr": 3e-3})
  # 20 steps cut the held-out loss by 0.205 (seed 0); half of it is asked.
  assert_learns(c, tmp_path, margin=0.1, measured=0.205)
  assert (tmp_path / "results.json").exists()
