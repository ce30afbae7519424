"""Tests for sslx.augment: each checks a defining property of an op."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslx import augment as A


def _rand_image(seed=0, shape=(24, 24, 3)):
  return np.random.default_rng(seed).uniform(0.0, 1.0, size=shape).astype(np.float32)


# ---------------------------------------------------------------- deterministic ops


def _all_off(size: int) -> A.ViewParams:
  """A view that changes nothing: the whole image at its size, every random step off."""
  return A.ViewParams(
    crop_size=size,
    crop_scale=(1, 1),
    crop_ratio=(1, 1),
    jitter_prob=0,
    grayscale_prob=0,
    blur_prob=0,
    flip_prob=0,
    solarize_prob=0,
  )


def test_flip_is_exact_mirror_and_involution():
  x = _rand_image()
  y = np.asarray(A.horizontal_flip(jnp.asarray(x)))
  np.testing.assert_array_equal(y, x[:, ::-1])
  np.testing.assert_array_equal(np.asarray(A.horizontal_flip(y)), x)


def test_grayscale_is_itu601_luma_on_all_channels():
  x = _rand_image(1)
  y = np.asarray(A.to_grayscale(jnp.asarray(x)))
  luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
  assert y.shape == x.shape
  for c in range(3):
    np.testing.assert_allclose(y[..., c], luma, atol=1e-6)


def test_solarize_inverts_only_at_or_above_threshold():
  x = np.array([0.0, 0.2, 0.49, 0.5, 0.7, 1.0], np.float32).reshape(1, 6, 1)
  x = np.repeat(x, 3, axis=-1)
  y = np.asarray(A.solarize(jnp.asarray(x), threshold=0.5))
  expected = np.where(x >= 0.5, 1.0 - x, x)
  np.testing.assert_allclose(y, expected, atol=1e-7)
  np.testing.assert_allclose(y[0, :3], x[0, :3])  # below threshold untouched


def test_random_apply_probability_extremes_and_rate():
  x = jnp.asarray(_rand_image(2, (4, 4, 3)))
  np.testing.assert_array_equal(A.random_apply(jax.random.key(0), x, A.horizontal_flip, 0.0), x)
  np.testing.assert_array_equal(
    A.random_apply(jax.random.key(0), x, A.horizontal_flip, 1.0), x[:, ::-1]
  )
  keys = jax.random.split(jax.random.key(3), 2000)
  ones = jnp.ones((1, 1, 1))
  hits = jax.vmap(lambda k: A.random_apply(k, ones, lambda im: im * 0.0, 0.3))(keys)
  rate = 1.0 - float(hits.mean())
  assert abs(rate - 0.3) < 0.04


# ---------------------------------------------------------------- random resized crop


def _boxes(n, h, w, scale, ratio, seed=0):
  keys = jax.random.split(jax.random.key(seed), n)
  fn = jax.jit(jax.vmap(lambda k: jnp.stack(A.sample_crop_box(k, h, w, scale, ratio))))
  return np.asarray(fn(keys)).astype(np.float64)


@pytest.mark.parametrize(
  "scale,ratio",
  [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.2, 0.5), (3 / 4, 4 / 3)), ((0.08, 1.0), (1.0, 1.0))],
)
def test_crop_boxes_respect_scale_ratio_and_bounds(scale, ratio):
  H = W = 64
  b = _boxes(2000, H, W, scale, ratio)
  y0, x0, h, w = b.T
  assert np.all(h >= 1) and np.all(w >= 1)
  assert np.all(y0 >= 0) and np.all(x0 >= 0)
  assert np.all(y0 + h <= H) and np.all(x0 + w <= W)
  # Sides are rounded from continuous (h*, w*) with h* w* = target area and
  # w*/h* = sampled ratio, so |h - h*| <= 0.5, |w - w*| <= 0.5. On a square
  # image the fallback (whole image) also lies inside these ranges.
  assert np.all((h + 0.5) * (w + 0.5) / (H * W) >= scale[0])
  assert np.all((h - 0.5) * (w - 0.5) / (H * W) <= scale[1])
  assert np.all((w + 0.5) / (h - 0.5) >= ratio[0] - 1e-9)
  assert np.all((w - 0.5) / (h + 0.5) <= ratio[1] + 1e-9)


@pytest.mark.parametrize(
  "scale,ratio",
  # Both settings never need rejection on a 64x64 image, so area ~ U(scale).
  [((0.08, 1.0), (1.0, 1.0)), ((0.2, 0.5), (3 / 4, 4 / 3))],
)
def test_crop_area_mean_matches_uniform_scale(scale, ratio):
  b = _boxes(2000, 64, 64, scale, ratio, seed=1)
  frac = b[:, 2] * b[:, 3] / (64 * 64)
  assert abs(frac.mean() - (scale[0] + scale[1]) / 2) < 0.02
  # The log-ratio is uniform: for non-trivial ratio ranges both sides occur.
  if ratio[0] < ratio[1]:
    r = b[:, 3] / b[:, 2]
    assert (r < 0.95).mean() > 0.2 and (r > 1.05).mean() > 0.2


def test_crop_fallback_is_centre_crop_clipped_to_ratio():
  # ratio >= 2 never fits a full-area crop in a square image -> fallback.
  b = _boxes(50, 64, 64, (1.0, 1.0), (2.0, 3.0))
  np.testing.assert_array_equal(b, np.tile([16, 0, 32, 64], (50, 1)))


def test_full_crop_same_size_is_identity():
  x = jnp.asarray(_rand_image(3, (20, 20, 3)))
  y = A.random_resized_crop(jax.random.key(0), x, 20, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6)


def test_crop_and_resize_maps_box_to_output():
  x = _rand_image(4, (20, 24, 3))
  y = A.crop_and_resize(jnp.asarray(x), (3, 5, 8, 8), 8)
  np.testing.assert_allclose(np.asarray(y), x[3:11, 5:13], atol=1e-6)
  # Bilinear 2x upsampling of a ramp reproduces the ramp at the half-pixel
  # sample points: output centre o + 0.5 -> input x0 + (o + 0.5) / 2, held at the box's
  # edge pixels beyond their centres (cropped, then resized: PIL's and torchvision's).
  ramp = np.tile(np.arange(24, dtype=np.float32)[None, :, None], (20, 1, 3)) / 24
  up = np.asarray(A.crop_and_resize(jnp.asarray(ramp), (0, 4, 10, 8), 16))
  expected = np.clip(4 + (np.arange(16) + 0.5) / 2 - 0.5, 4, 11) / 24
  np.testing.assert_allclose(up[:, :, 0], np.tile(expected, (16, 1)), atol=1e-6)


def test_no_pixel_outside_the_box_reaches_the_crop():
  # white everywhere but a black box: up- and downscaled, the crop of the box stays black
  x = np.ones((40, 40, 3), np.float32)
  x[10:30, 20:30] = 0.0
  for out in (60, 16, 7):
    y = np.asarray(A.crop_and_resize(jnp.asarray(x), (10, 20, 20, 10), out))
    assert np.abs(y).max() < 1e-6, out


# ---------------------------------------------------------------- colour


def test_hsv_round_trip_and_hue_shift_red_to_cyan():
  x = _rand_image(5, (16, 16, 3))
  # Add edge cases: black, white, gray, primaries, secondaries.
  special = np.array(
    [
      [0, 0, 0],
      [1, 1, 1],
      [0.5, 0.5, 0.5],
      [1, 0, 0],
      [0, 1, 0],
      [0, 0, 1],
      [1, 1, 0],
      [0, 1, 1],
      [1, 0, 1],
      [0.2, 0.2, 0.9],
    ],
    np.float32,
  )
  x[0, : len(special)] = special
  rt = A._hsv_to_rgb(A._rgb_to_hsv(jnp.asarray(x)))
  np.testing.assert_allclose(np.asarray(rt), x, atol=2e-6)
  hsv = np.asarray(A._rgb_to_hsv(jnp.asarray(special)))
  np.testing.assert_allclose(hsv[3], [0.0, 1.0, 1.0], atol=1e-6)  # red
  np.testing.assert_allclose(hsv[4, 0], 1 / 3, atol=1e-6)  # green
  np.testing.assert_allclose(hsv[5, 0], 2 / 3, atol=1e-6)  # blue
  red = jnp.array([[[1.0, 0.0, 0.0]]])
  np.testing.assert_allclose(np.asarray(A._adjust_hue(red, 0.5)), [[[0, 1, 1]]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(A._adjust_hue(red, -0.5)), [[[0, 1, 1]]], atol=1e-6)


def test_color_helpers_semantics():
  x = jnp.asarray(_rand_image(6, (12, 12, 3)))
  xn = np.asarray(x)
  np.testing.assert_allclose(
    np.asarray(A._adjust_brightness(x, 1.7)), np.clip(xn * 1.7, 0, 1), atol=1e-6
  )
  np.testing.assert_array_equal(np.asarray(A._adjust_brightness(x, 0.0)), 0.0)
  gray_mean = (0.299 * xn[..., 0] + 0.587 * xn[..., 1] + 0.114 * xn[..., 2]).mean()
  np.testing.assert_allclose(np.asarray(A._adjust_contrast(x, 0.0)), gray_mean, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(A._adjust_saturation(x, 0.0)), np.asarray(A.to_grayscale(x)), atol=1e-6
  )
  for op, ident in [
    (A._adjust_brightness, 1.0),
    (A._adjust_contrast, 1.0),
    (A._adjust_saturation, 1.0),
    (A._adjust_hue, 0.0),
  ]:
    np.testing.assert_allclose(np.asarray(op(x, ident)), xn, atol=2e-6)


def test_color_jitter_zero_strength_is_identity():
  x = jnp.asarray(_rand_image(7))
  y = A.color_jitter(jax.random.key(0), x, 0.0, 0.0, 0.0, 0.0)
  np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6)


def test_color_jitter_brightness_only_factor_range():
  x = jnp.full((4, 4, 3), 0.5)
  keys = jax.random.split(jax.random.key(1), 500)
  out = jax.vmap(lambda k: A.color_jitter(k, x, 0.4, 0.0, 0.0, 0.0))(keys)
  factors = np.asarray(out[:, 0, 0, 0]) / 0.5
  assert np.allclose(np.asarray(out) / 0.5, factors[:, None, None, None], atol=1e-6)
  assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
  assert factors.min() < 0.65 and factors.max() > 1.35  # covers the range
  assert abs(factors.mean() - 1.0) < 0.03


@pytest.mark.parametrize("active", [(0, 1, 2, 3), (0, 2, 3), (1, 2)])
def test_color_ops_compute_only_the_chosen_op_yet_equal_the_sequence(active):
  """Every order of the active ops, batched (each image its own order, as under vmap), equals
  applying the ops one after another; and the hue (the costly op) is traced once."""
  import itertools

  orders = jnp.asarray(list(itertools.permutations(range(len(active)))), jnp.int32)
  x = jnp.asarray(_rand_image(9, (len(orders), 6, 6, 3)))
  f = jnp.array([1.3, 0.6, 1.5, 0.12])
  got = jax.vmap(lambda im, o: A._apply_color_ops(im, f, o, active))(x, orders)
  for i, order in enumerate(np.asarray(orders)):
    want = x[i]
    for k in order:
      want = A._COLOR_OPS[active[k]](want, f[active[k]])
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), atol=1e-6)
  jaxpr = str(jax.make_jaxpr(lambda im: A._apply_color_ops(im, f, orders[0], active))(x[0]))
  # the hue rotation's modulos appear once: one traced rotation, not one per position
  per_hue = str(jax.make_jaxpr(A._adjust_hue)(x[0], f[3])).count(" rem ")
  assert per_hue > 0 and jaxpr.count(" rem ") == (per_hue if 3 in active else 0)


def test_color_jitter_random_order_and_range():
  keys = jax.random.split(jax.random.key(2), 500)
  orders = np.asarray(jax.vmap(lambda k: A._sample_color_jitter(k, 0.4, 0.4, 0.4, 0.1)[1])(keys))
  assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
  assert len({tuple(o) for o in orders}) == 24
  # Order matters: brightness-then-contrast differs from contrast-then-brightness.
  x = jnp.asarray(_rand_image(8, (8, 8, 3)))
  f = jnp.array([1.8, 0.5, 1.0, 0.0])
  bc = A._apply_color_ops(x, f, jnp.array([0, 1]), active=(0, 1))
  cb = A._apply_color_ops(x, f, jnp.array([1, 0]), active=(0, 1))
  assert float(jnp.abs(bc - cb).max()) > 1e-2
  np.testing.assert_allclose(
    np.asarray(cb), np.asarray(A._adjust_brightness(A._adjust_contrast(x, 0.5), 1.8)), atol=1e-6
  )
  y = jax.vmap(lambda k: A.color_jitter(k, x, 0.8, 0.8, 0.8, 0.2))(keys[:16])
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


# ---------------------------------------------------------------- blur


def test_blur_kernel_size_default_and_normalised():
  assert A._default_blur_kernel_size(224) == 23
  assert A._default_blur_kernel_size(64) == 7
  assert A._default_blur_kernel_size(32) == 3
  # SimCLR floors where rounding would not: 96 px (DINO's local crops) 9, 256 px 25
  assert A._default_blur_kernel_size(96) == 9
  assert A._default_blur_kernel_size(256) == 25
  k = np.asarray(A._gaussian_kernel1d(1.3, 7))
  np.testing.assert_allclose(k.sum(), 1.0, atol=1e-6)
  np.testing.assert_allclose(k, k[::-1], atol=1e-7)


def test_blur_constant_mean_and_variance():
  const = jnp.full((32, 32, 3), 0.37)
  out = A.gaussian_blur(jax.random.key(0), const, sigma=(0.1, 2.0))
  np.testing.assert_allclose(np.asarray(out), 0.37, atol=1e-6)
  x = jnp.asarray(_rand_image(9, (64, 64, 3)))
  v0 = float(x.var())
  small = A._blur_with_sigma(x, 0.5, 7)
  large = A._blur_with_sigma(x, 2.0, 7)
  for y in (small, large):
    assert abs(float(y.mean()) - float(x.mean())) < 2e-3
  assert float(large.var()) < float(small.var()) < v0


# ---------------------------------------------------------------- pipeline

_PARAMS = A.ViewParams(crop_size=16, blur_prob=0.5, solarize_prob=0.2)
_augment = jax.jit(A.augment_batch, static_argnums=2)


@functools.cache
def _batch():
  rng = np.random.default_rng(10)
  return rng.integers(0, 256, size=(6, 24, 24, 3), dtype=np.uint8)


def test_view_all_off_full_crop_is_identity():
  p = _all_off(24)
  x = jnp.asarray(_rand_image(11))
  np.testing.assert_allclose(np.asarray(A.view(jax.random.key(0), x, p)), np.asarray(x), atol=1e-5)
  # Probabilities 1 but strengths 0 for jitter also stay identity.
  p2 = dataclasses.replace(p, jitter_prob=1.0, brightness=0, contrast=0, saturation=0, hue=0)
  np.testing.assert_allclose(np.asarray(A.view(jax.random.key(1), x, p2)), np.asarray(x), atol=1e-5)


def test_augment_batch_shape_determinism_and_diversity():
  imgs = _batch().astype(np.float32) / 255.0
  a = _augment(jax.random.key(0), imgs, _PARAMS)
  b = _augment(jax.random.key(0), imgs, _PARAMS)
  c = _augment(jax.random.key(1), imgs, _PARAMS)
  assert a.shape == (6, 16, 16, 3) and a.dtype == jnp.float32
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.abs(a - c).max()) > 1e-2
  # Same image repeated: every copy gets its own crop/colour.
  same = np.repeat(imgs[:1], 6, axis=0)
  s = np.asarray(_augment(jax.random.key(2), same, _PARAMS)).reshape(6, -1)
  for i in range(6):
    for j in range(i + 1, 6):
      assert np.abs(s[i] - s[j]).max() > 1e-3


def test_augment_batch_accepts_uint8():
  u8 = _batch()
  a = _augment(jax.random.key(3), u8, _PARAMS)
  b = _augment(jax.random.key(3), u8.astype(np.float32) / 255.0, _PARAMS)
  assert a.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_normalize_constants():
  x = jnp.ones((2, 2, 2, 3)) * jnp.asarray(A.CIFAR10_MEAN)
  np.testing.assert_allclose(
    np.asarray(A.normalize(x, A.CIFAR10_MEAN, A.CIFAR10_STD)), 0.0, atol=1e-6
  )
  y = A.normalize(jnp.ones((1, 1, 3)), A.IMAGENET_MEAN, A.IMAGENET_STD)
  expected = (1 - np.array(A.IMAGENET_MEAN)) / np.array(A.IMAGENET_STD)
  np.testing.assert_allclose(np.asarray(y)[0, 0], expected, rtol=1e-6)


# ---------------------------------------------------------------- ViewParams


def test_view_params_from_config_defaults_and_overrides():
  d = A.ViewParams.from_config(ml_collections.ConfigDict())
  assert d == A.ViewParams()
  assert (d.brightness, d.contrast, d.saturation, d.hue) == (0.4, 0.4, 0.4, 0.1)
  assert (d.jitter_prob, d.grayscale_prob, d.blur_prob, d.flip_prob, d.solarize_prob) == (
    0.8,
    0.2,
    0.5,
    0.5,
    0.0,
  )
  assert d.crop_scale == (0.08, 1.0) and math.isclose(d.crop_ratio[0], 3 / 4)
  cfg = ml_collections.ConfigDict({"crop_size": 32, "blur_prob": 0.0, "crop_scale": [0.2, 1.0]})
  p = A.ViewParams.from_config(cfg)
  assert p.crop_size == 32 and p.blur_prob == 0.0 and p.crop_scale == (0.2, 1.0)
  hash(p)  # usable as a jit static argument


def test_view_params_rejects_unknown_key():
  cfg = ml_collections.ConfigDict({"crop_size": 32, "blurr_prob": 0.5})
  with pytest.raises(ValueError, match="blurr_prob") as e:
    A.ViewParams.from_config(cfg)
  assert "blur_prob" in str(e.value)  # lists the valid keys
  with pytest.raises(ValueError):
    A.ViewParams(jitter_prob=1.5)


def _blur_reference(x, drawn, sigma):
  kernel = A._blur_kernel(x.shape[1:])
  blurred = jax.vmap(lambda im, s: A._blur_with_sigma(im, s, kernel))(x, sigma)
  return np.where(np.asarray(drawn)[:, None, None, None], np.asarray(blurred), np.asarray(x))


@pytest.mark.parametrize("room", [9, 5, 16])
def test_blur_drawn_rows_blurs_exactly_the_drawn_rows_whatever_the_room(room):
  # 16 rows, 7 drew the blur. room 9: the compact branch (7 rows fit); room 5: too few,
  # the step takes the every-row branch; room 16: no compaction at all. Same result each way.
  x = jnp.asarray(np.random.default_rng(0).random((16, 12, 12, 3)), jnp.float32)
  drawn = jnp.asarray(np.isin(np.arange(16), [0, 3, 4, 8, 11, 14, 15]))
  sigma = jnp.linspace(0.3, 2.0, 16)
  got = jax.jit(lambda x, d, s: A.blur_drawn_rows(x, d, s, room=room, groups=1))(x, drawn, sigma)
  np.testing.assert_allclose(np.asarray(got), _blur_reference(x, drawn, sigma), atol=1e-6)
  assert np.array_equal(np.asarray(got)[~np.asarray(drawn)], np.asarray(x)[~np.asarray(drawn)])


def test_blur_drawn_rows_blurs_only_its_room():
  # The compacted program blurs `room` rows: the blur's tap sums run on [room, H, W, C].
  x = jax.ShapeDtypeStruct((64, 12, 12, 3), jnp.float32)
  d = jax.ShapeDtypeStruct((64,), jnp.bool_)
  s = jax.ShapeDtypeStruct((64,), jnp.float32)
  room = A.blur_room(np.full(64, 0.5), 1)
  assert room == 48  # 32 expected + 4 standard deviations of 4
  blur = lambda p, groups=1: jax.jit(  # noqa: E731
    lambda x, d, s: A.blur_drawn_rows(x, d, s, np.full(64, p), groups=groups)
  )
  text = blur(0.5).lower(x, d, s).as_text()
  assert "x48x12x12x3xf32>" in text and "stablehlo.case" in text and "sort" in text
  # Eight groups of 8 rows leave no room to save (4 + 4 * 1.41 > 8): every row, no branch.
  text = blur(0.5, 8).lower(x, d, s).as_text()
  assert "48x12x12x3" not in text and "stablehlo.case" not in text
  # Probabilities known to be 0 or 1 decide at trace time: no branch, no sort.
  for p in (0.0, 1.0):
    text = blur(p).lower(x, d, s).as_text()
    assert "sort" not in text and "stablehlo.case" not in text
  # DINO's global views (1.0 / 0.1 alternating rows, 64 images) and local views (p 0.5).
  assert A.blur_room(np.tile([1.0, 0.1], 64), 1) == 64 + 6 + 10
  assert A.blur_room(np.full(640, 0.5), 1) == 371


def test_compact_blur_off_blurs_every_row_with_the_same_result():
  # 256 rows: groups of 256 / gcd(256, device count) rows, at least 32, leave room to save.
  imgs = jnp.asarray(np.random.default_rng(2).integers(0, 256, (256, 12, 12, 3)), jnp.uint8)
  on = A.ViewParams(crop_size=8, blur_prob=0.5)
  off = dataclasses.replace(on, compact_blur=False)
  run = jax.jit(A.augment_batch, static_argnums=2)
  key = jax.random.key(4)
  np.testing.assert_allclose(
    np.asarray(run(key, imgs, on)), np.asarray(run(key, imgs, off)), atol=1e-6
  )
  assert "stablehlo.case" in run.lower(key, imgs, on).as_text()
  assert "stablehlo.case" not in run.lower(key, imgs, off).as_text()


def test_augment_batch_equals_per_image_views_with_compacted_blur():
  # augment_batch finishes blur and solarize over the batch (compacted blur); each row is
  # still view() of its own key and image.
  imgs = jnp.asarray(np.random.default_rng(1).integers(0, 256, (48, 20, 20, 3)), jnp.uint8)
  p = A.ViewParams(crop_size=16, blur_prob=0.5, solarize_prob=0.2)
  got = np.asarray(jax.jit(A.augment_batch, static_argnums=2)(jax.random.key(3), imgs, p))
  keys = jax.random.split(jax.random.key(3), 48)
  ref = jax.vmap(lambda k, im: A.view(k, im.astype(jnp.float32) / 255.0, p))(keys, imgs)
  np.testing.assert_allclose(got, np.asarray(ref), atol=1e-6)


def test_augment_views_row_layout_and_per_view_probabilities():
  # Two views differing only in solarize probability (1 vs 0) run as one pipeline; rows are
  # image-major: row 2i is view 0 of image i (solarized everywhere), row 2i + 1 view 1 (never).
  base = _all_off(24)
  imgs = jnp.full((3, 24, 24, 3), 0.8, jnp.float32).at[1].set(0.3)
  v0, v1 = (dataclasses.replace(base, solarize_prob=p) for p in (1.0, 0.0))
  views = jax.jit(A.augment_views, static_argnums=2)
  out = np.asarray(views(jax.random.key(0), imgs, (v0, v1)))
  expected = np.stack([np.where(imgs >= 0.5, 1 - imgs, imgs), imgs], axis=1).reshape(6, 24, 24, 3)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Identical views: two independent views per image, image i in rows 2i and 2i + 1.
  same = np.asarray(views(jax.random.key(1), _batch(), (_PARAMS, _PARAMS)))
  assert same.shape == (12, 16, 16, 3)
  assert np.abs(same[0::2] - same[1::2]).max() > 1e-2
  # Views differing in more than probabilities (here the crop scale) are augmented one
  # call each and interleaved: view v is then exactly augment_batch of its own key.
  tight = dataclasses.replace(_PARAMS, crop_scale=(0.9, 1.0))
  mixed = np.asarray(views(jax.random.key(2), _batch(), (_PARAMS, tight)))
  k0, k1 = jax.random.split(jax.random.key(2))
  np.testing.assert_allclose(mixed[1::2], np.asarray(_augment(k1, _batch(), tight)), atol=1e-6)
  np.testing.assert_allclose(mixed[0::2], np.asarray(_augment(k0, _batch(), _PARAMS)), atol=1e-6)
