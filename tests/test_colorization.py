"""Colorization (experiments/colorization.py): Lab, bins, soft targets, rebalancing, decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import color
from sslx.methods import colorization
from tests.helpers import assert_learns, tiny

SMALL = {"method.decoder_widths": (16, 16)}


def test_srgb_to_lab_known_values_and_round_trip():
  lab = np.asarray(
    color.srgb_to_lab(jnp.array([[1.0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 1], [0.5, 0.5, 0.5]]))
  )
  np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
  np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.01)
  np.testing.assert_allclose(lab[2], [0, 0, 0], atol=0.01)
  np.testing.assert_allclose(lab[3], [32.30, 79.19, -107.86], atol=0.02)
  np.testing.assert_allclose(lab[4], [53.39, 0, 0], atol=0.01)
  x = np.random.default_rng(0).random((100, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(color.lab_to_srgb(color.srgb_to_lab(x))), x, atol=1e-4)


def test_bins_soft_encoding_rebalancing_and_annealed_mean():
  bins = color.ab_bins(10)
  assert bins.shape[1] == 2 and len(bins) == 261  # the sRGB gamut alone (the paper: 313)
  assert (bins % 10 == 0).all() and [0.0, 0.0] in bins.tolist()
  jb = jnp.asarray(bins)
  z = np.asarray(color.soft_encode(jnp.array([[0.0, 0.0], [23.0, -41.0]]), jb))
  np.testing.assert_allclose(z.sum(-1), 1, atol=1e-6)
  assert ((z > 0).sum(-1) == 5).all()
  assert np.argmax(z[0]) == bins.tolist().index([0.0, 0.0])
  d = np.linalg.norm(bins - [23.0, -41.0], axis=1)
  np.testing.assert_array_equal(np.sort(np.flatnonzero(z[1])), np.sort(np.argsort(d)[:5]))
  w = np.exp(-(np.sort(d)[:5] ** 2) / 50)
  np.testing.assert_allclose(np.sort(z[1][z[1] > 0])[::-1], w / w.sum(), rtol=1e-4)
  # Rebalancing: rare bins weigh more, E_p̃[w] = 1, λ = 1 is uniform.
  counts = jnp.ones(len(bins)).at[0].set(1000.0)
  p = color.smooth_prior(counts, jb)
  wts = np.asarray(color.rebalance_weights(p, 0.5))
  assert abs(float(jnp.sum(p * wts)) - 1) < 1e-5 and wts[0] < wts[-1]
  np.testing.assert_allclose(np.asarray(color.rebalance_weights(p, 1.0)), 1.0, rtol=1e-5)
  # Annealed mean: T→0 is the mode, T=1 the mean.
  logits = jnp.log(jnp.asarray(z[1]) + 1e-12)
  np.testing.assert_allclose(
    np.asarray(color.annealed_mean(logits, jb, 1.0)), z[1] @ bins, atol=1e-3
  )
  np.testing.assert_allclose(
    np.asarray(color.annealed_mean(logits, jb, 0.01)), bins[np.argmax(z[1])], atol=1e-3
  )


def test_network_sees_only_lightness_and_prior_updates():
  method = colorization.create(c := tiny("colorization", **SMALL), total_steps=6)
  rgb = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  gray = np.repeat(rgb.mean(-1, keepdims=True).astype(np.uint8), 3, -1)
  v = method.init(jax.random.PRNGKey(0), rgb)
  x = np.asarray(colorization.to_lightness_input(jnp.asarray(rgb, jnp.float32) / 255))
  assert x.shape == (4, 32, 32, 1) and -1 <= x.min() and x.max() <= 1
  loss, aux = jax.jit(method.loss)(
    v.params, v.batch_stats, v.method_state, rgb, jax.random.PRNGKey(1), 0
  )
  assert np.isfinite(float(loss)) and aux.features.shape == (4, c.model.widths[-1])
  grown = np.asarray(aux.method_state["bin_counts"]) - np.asarray(v.method_state["bin_counts"])
  np.testing.assert_allclose(grown.sum(), 4 * 8 * 8, rtol=1e-4)  # one unit per target pixel
  out = np.asarray(method.colorize(v.params, v.batch_stats, gray))
  assert out.shape == (4, 32, 32, 3) and 0 <= out.min() and out.max() <= 1


def test_targets_subsample_the_ab_of_the_full_resolution_image():
  # a red/blue checkerboard of 1 px squares: every 4th pixel is red, so the targets are
  # saturated red; averaging 4x4 blocks would have given a purple of half the chroma
  rgb = np.zeros((1, 8, 8, 3), np.float32)
  red = np.add.outer(np.arange(8), np.arange(8)) % 2 == 0
  rgb[0, red, 0], rgb[0, ~red, 2] = 1.0, 1.0
  ab = np.asarray(colorization.target_ab(jnp.asarray(rgb), 2))
  want = np.asarray(color.srgb_to_lab(jnp.asarray([[[[1.0, 0.0, 0.0]]]])))[0, 0, 0, 1:]
  np.testing.assert_allclose(ab.reshape(-1, 2), np.tile(want, (4, 1)), atol=1e-3)


@pytest.mark.slow
def test_cpu_preset_short_run_learns(tmp_path):
  c = tiny("colorization", total_steps=16, **SMALL, **{"optimizer.base_lr": 3e-3})
  # 16 steps cut the held-out loss by 0.167 (seed 0); half of it is asked.
  assert_learns(c, tmp_path, margin=0.08, measured=0.167)
  assert (tmp_path / "results.json").exists()
