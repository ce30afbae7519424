"""On-device image augmentations for self-supervised learning.

Every augmentation here is a pure JAX function of an explicit PRNG key that acts
on a *single* image; :func:`augment_batch` splits the key per image and
``jax.vmap``-s :func:`view` over the batch, so the whole pipeline can live inside
a jitted train step (no host round-trip, no Python-side randomness).

Conventions
-----------
* Images are ``float32`` in ``[0, 1]``, channels-last: ``[H, W, 3]`` per image,
  ``[B, H, W, 3]`` per batch. :func:`augment_batch` also accepts ``uint8``
  batches and divides by 255 first.
* All shapes are static: crop output size and blur kernel size are Python ints
  fixed at trace time; only the *values* (boxes, factors, coin flips) are traced.
* Random application with probability ``p`` computes both branches and selects
  with ``jnp.where`` (under ``vmap`` a ``lax.cond`` would become a select anyway),
  except the blur: a batch's blur and solarize run after the vmap
  (:func:`finish_views`), where only the rows that drew the blur are gathered and
  blurred (:func:`blur_drawn_rows`). A probability or strength that is a Python
  ``0`` skips the op at trace time, so "all off" is the exact identity and costs
  nothing.

The view recipe
---------------
:func:`view` follows SimCLR (Chen et al. 2020, "A Simple Framework for
Contrastive Learning of Visual Representations", Appendix A):

    random resized crop -> horizontal flip (p) -> colour jitter (p)
    -> grayscale (p) -> Gaussian blur (p) -> solarize (p)

with torchvision semantics for each op (crop box sampling, colour-jitter factor
ranges and random op order, ITU-R 601 grayscale). Solarization is not in SimCLR;
it is the BYOL (Grill et al. 2020) addition and defaults to ``p = 0``.
:class:`ViewParams` defaults use colour strength s = 0.5 (brightness, contrast,
saturation 0.8 * s = 0.4, hue 0.2 * s = 0.1) as in the SimCLR CIFAR recipes,
jitter p = 0.8, grayscale p = 0.2, blur p = 0.5, flip p = 0.5 and a 224 crop.

**Gaussian blur is usually disabled (``blur_prob=0``) for 32x32 images**, as in
the CIFAR recipes of SimCLR (Appendix B.9) and solo-learn: with a kernel of 10%
of the image side (3 px) blur mostly destroys the little detail there is. Set
``crop_size=32`` and ``blur_prob=0`` for CIFAR.

Asymmetric recipes (e.g. BYOL's blur p = 1.0 / 0.1 and solarize p = 0 / 0.2 for
the two views) are expressed as two :class:`ViewParams` and two calls to
:func:`augment_batch` with independent keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

__all__ = [
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "CIFAR10_MEAN",
  "CIFAR10_STD",
  "ViewParams",
  "sample_crop_box",
  "crop_and_resize",
  "random_resized_crop",
  "horizontal_flip",
  "to_grayscale",
  "color_jitter",
  "gaussian_blur",
  "solarize",
  "random_apply",
  "view",
  "augment_batch",
  "augment_batch_parts",
  "finish_views",
  "blur_drawn_rows",
  "augment_views",
  "normalize",
]

# Per-channel statistics of the training sets (RGB, images scaled to [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

# ITU-R BT.601 luma weights (what PIL's convert("L") and torchvision use).
_LUMA = (0.299, 0.587, 0.114)


# Every augmentation op is traced under this name (HLO op_name metadata), so FLOP counts can
# leave the augmentation out of a step's model FLOPs (sslx/planning.py).
SCOPE = "sslx_augment"


def _is_static(x: Any, value: float) -> bool:
  """True iff ``x`` is a Python number equal to ``value`` (known at trace time)."""
  return isinstance(x, (int, float)) and not isinstance(x, bool) and x == value


# --------------------------------------------------------------------------
# Random resized crop
# --------------------------------------------------------------------------


def fallback_box_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
  """torchvision's fallback: the whole image, clipped to the aspect-ratio range."""
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    h, w = height, width
  return h, w


def sample_crop_box(
  rng: Array,
  height: int,
  width: int,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
  num_tries: int = 10,
) -> tuple[Array, Array, Array, Array]:
  """Samples a RandomResizedCrop box the way torchvision does.

  Area fraction ~ U(scale), log aspect ratio (w / h) ~ U(log ratio); box sides
  are rounded to integers. ``num_tries`` candidates are drawn at once and the
  first one that fits inside the image is kept; if none fits, the fallback is
  a centred crop of the whole image clipped to the ratio range.

  Args:
    rng: PRNG key.
    height, width: static image size.
    scale: (min, max) fraction of the image area.
    ratio: (min, max) aspect ratio w / h.
    num_tries: number of vectorised rejection-sampling candidates.

  Returns:
    ``(y0, x0, h, w)``, int32 scalars, with ``0 <= y0 <= height - h`` and
    ``0 <= x0 <= width - w``.
  """
  u = jax.random.uniform(rng, (_crop_draws(num_tries),))
  return _crop_box_from_uniforms(u, height, width, scale, ratio)


def _crop_draws(num_tries: int) -> int:
  return 2 * num_tries + 2


def crop_candidates(u, height: int, width: int, scale, ratio, xp):
  """RandomResizedCrop's ``num_tries`` candidate sides ``(h, w)`` (rounded, still float) from
  ``2 * num_tries + 2`` uniforms: area fraction ~ U(scale), log aspect ~ U(log ratio). `xp` is
  the array module (jnp on device, np on the host: sslx.data.crops), so both sample alike."""
  num_tries = (u.shape[0] - 2) // 2
  area = float(height * width)
  target_area = area * (scale[0] + u[:num_tries] * (scale[1] - scale[0]))
  lo, hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = xp.exp(lo + u[num_tries : 2 * num_tries] * (hi - lo))
  return xp.round(xp.sqrt(target_area / aspect)), xp.round(xp.sqrt(target_area * aspect))


def _crop_box_from_uniforms(u: Array, height: int, width: int, scale, ratio):
  """:func:`sample_crop_box` given its ``2 * num_tries + 2`` U[0, 1) draws."""
  h, w = crop_candidates(u, height, width, scale, ratio, jnp)
  h, w = h.astype(jnp.int32), w.astype(jnp.int32)
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(valid)  # index of the first True (0 if none)
  any_valid = jnp.any(valid)

  fb_h, fb_w = fallback_box_size(height, width, ratio)
  h = jnp.where(any_valid, h[first], fb_h)
  w = jnp.where(any_valid, w[first], fb_w)
  # Offsets uniform over all placements (inclusive), like torch.randint(0, H - h + 1).
  y0 = jnp.minimum(jnp.floor(u[-2] * (height - h + 1)).astype(jnp.int32), height - h)
  x0 = jnp.minimum(jnp.floor(u[-1] * (width - w + 1)).astype(jnp.int32), width - w)
  y0 = jnp.where(any_valid, y0, (height - fb_h) // 2).astype(jnp.int32)
  x0 = jnp.where(any_valid, x0, (width - fb_w) // 2).astype(jnp.int32)
  return y0, x0, h.astype(jnp.int32), w.astype(jnp.int32)


def crop_and_resize(image: Array, box: Sequence[Any], out_size: int) -> Array:
  """Resamples the box ``(y0, x0, h, w)`` of ``image`` to ``out_size x out_size``.

  Bilinear interpolation with pixel-centre alignment (antialiased when
  shrinking, like PIL's bilinear resize); the box may be traced, ``out_size``
  is static. An integer box resized to its own size is an exact copy.

  Args:
    image: ``[H, W, C]`` float image.
    box: ``(y0, x0, h, w)`` scalars (ints or traced).
    out_size: static output side.

  Returns:
    ``[out_size, out_size, C]`` float32.
  """
  y0, x0, h, w = (jnp.asarray(v, jnp.float32) for v in box)
  image = jnp.asarray(image, jnp.float32)
  rows = _resample_matrix(image.shape[0], out_size, y0, h)
  cols = _resample_matrix(image.shape[1], out_size, x0, w)
  # Default precision: exact float32 on CPUs; on TPUs one bf16 pass (HIGHEST would be six),
  # a resampling error of ~2^-9 of a pixel value, below the 8-bit input's quantisation.
  out = jnp.einsum("oh,hwc->owc", rows, image)
  return jnp.einsum("pw,owc->opc", cols, out)


def _resample_matrix(in_size: int, out_size: int, start: Any, length: Any) -> Array:
  """``[out_size, in_size]`` weights resampling ``[start, start + length)`` to ``out_size``.

  The triangle (bilinear) kernel, widened by the shrink factor when shrinking (antialias),
  over the input pixels whose centres lie inside the box only, each row normalised to sum to
  1: the box is cropped, then resized, as torchvision's RandomResizedCrop and PIL do, so no
  pixel outside it reaches the edge of the output. Output pixel centre ``o + 0.5`` samples
  input coordinate ``start + (o + 0.5) * length / out_size``. Inside the box these are the
  weights of ``jax.image.scale_and_translate(method="linear", antialias=True)``, written
  directly: that general routine's graph takes ~5x longer to compile inside every step.
  """
  inv_scale = length / out_size  # input pixels per output pixel
  kernel_scale = jnp.maximum(inv_scale, 1.0)
  sample = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale - 0.5
  centres = jnp.arange(in_size, dtype=jnp.float32) + 0.5
  dist = jnp.abs(sample[:, None] - (centres[None, :] - 0.5))
  in_box = (centres > start) & (centres < start + length)
  weights = jnp.where(in_box[None, :], jnp.maximum(0.0, 1.0 - dist / kernel_scale), 0.0)
  total = jnp.sum(weights, axis=1, keepdims=True)
  weights = jnp.where(
    total > 1000.0 * 1.1920929e-07, weights / jnp.where(total != 0, total, 1.0), 0.0
  )
  inside = (sample >= -0.5) & (sample <= in_size - 0.5)
  return jnp.where(inside[:, None], weights, 0.0)


def random_resized_crop(rng: Array, image: Array, out_size: int, **box) -> Array:
  """torchvision-style RandomResizedCrop (SimCLR Appendix A: crop + resize).

  Args:
    rng: PRNG key.
    image: ``[H, W, C]`` float image.
    out_size: static output side.
    box: ``scale``, ``ratio``, ``num_tries`` of :func:`sample_crop_box` (its defaults).

  Returns:
    ``[out_size, out_size, C]`` float32.
  """
  height, width = image.shape[0], image.shape[1]
  return crop_and_resize(image, sample_crop_box(rng, height, width, **box), out_size)


# --------------------------------------------------------------------------
# Deterministic ops
# --------------------------------------------------------------------------


def horizontal_flip(image: Array) -> Array:
  """Mirrors ``[H, W, C]`` left-right (``image[:, ::-1]``)."""
  return image[:, ::-1]


def _luma(image: Array) -> Array:
  """ITU-R 601 luma, ``[H, W, 3] -> [H, W]``."""
  return _LUMA[0] * image[..., 0] + _LUMA[1] * image[..., 1] + _LUMA[2] * image[..., 2]


def to_grayscale(image: Array) -> Array:
  """ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` replicated to 3 channels.

  ``[H, W, 3] -> [H, W, 3]`` (also works on batches, any leading dims).
  """
  y = _luma(image)
  return jnp.stack([y, y, y], axis=-1)


def solarize(image: Array, threshold: float = 0.5) -> Array:
  """Pixels ``>= threshold`` become ``1 - x``; others are unchanged."""
  return jnp.where(image >= threshold, 1.0 - image, image)


def random_apply(rng: Array, image: Array, fn: Callable[[Array], Array], p: Any) -> Array:
  """Returns ``fn(image)`` with probability ``p``, else ``image``.

  Both branches are computed and selected with ``jnp.where``; ``p`` equal to a
  Python 0 or 1 short-circuits at trace time.
  """
  return _apply_if(jax.random.uniform(rng), image, fn, p)  # an unused draw is compiled away


def _apply_if(u: Array, image: Array, fn: Callable[[Array], Array], p: Any) -> Array:
  """:func:`random_apply` given its U[0, 1) draw ``u``."""
  if _is_static(p, 0):
    return image
  if _is_static(p, 1):
    return fn(image)
  return jnp.where(u < p, fn(image), image)


# --------------------------------------------------------------------------
# Colour jitter (torchvision ColorJitter semantics)
# --------------------------------------------------------------------------


def _rgb_to_hsv(rgb: Array) -> Array:
  """``[..., 3]`` RGB in [0, 1] -> HSV with all of h, s, v in [0, 1]."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc = jnp.maximum(jnp.maximum(r, g), b)
  minc = jnp.minimum(jnp.minimum(r, g), b)
  delta = maxc - minc
  gray = delta == 0  # also covers black (maxc == 0)
  safe_delta = jnp.where(gray, 1.0, delta)
  s = jnp.where(gray, 0.0, delta / jnp.where(gray, 1.0, maxc))
  # Hue sector (in units of 60 degrees), chosen by which channel is the max.
  h_r = (g - b) / safe_delta
  h_g = 2.0 + (b - r) / safe_delta
  h_b = 4.0 + (r - g) / safe_delta
  h = jnp.where(maxc == r, h_r, jnp.where(maxc == g, h_g, h_b))
  h = jnp.where(gray, 0.0, h)
  h = jnp.mod(h / 6.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


def _hsv_to_rgb(hsv: Array) -> Array:
  """Inverse of :func:`_rgb_to_hsv`: ``[..., 3]`` HSV -> RGB."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  h6 = jnp.mod(h, 1.0) * 6.0
  sector = jnp.floor(h6)
  f = h6 - sector
  sector = sector.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  # (r, g, b) for each of the six 60-degree sectors, picked per pixel by a chain of selects:
  # elementwise, so it fuses with the rest of the hue rotation. (A take_along_axis over the
  # stacked sectors is a per-pixel gather: on TPU it was 97% of the multi-crop augmentation's
  # modelled memory traffic.)
  table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  out = []
  for c in range(3):
    picked = table[5][c]
    for k in range(4, -1, -1):
      picked = jnp.where(sector == k, table[k][c], picked)
    out.append(picked)
  return jnp.stack(out, axis=-1)


def _blend(a: Array, b: Array, factor: Any) -> Array:
  """``factor * a + (1 - factor) * b`` clipped to [0, 1] (torchvision ``_blend``)."""
  return jnp.clip(factor * a + (1.0 - factor) * b, 0.0, 1.0)


def _adjust_brightness(image: Array, factor: Any) -> Array:
  """Multiplies by ``factor`` and clips: 0 -> black, 1 -> identity."""
  return jnp.clip(image * factor, 0.0, 1.0)


def _adjust_contrast(image: Array, factor: Any) -> Array:
  """Blends with the (scalar) mean of the grayscale image: 0 -> flat mean gray."""
  mean = jnp.mean(_luma(image))
  return _blend(image, mean, factor)


def _adjust_saturation(image: Array, factor: Any) -> Array:
  """Blends with the grayscale image: 0 -> grayscale, 1 -> identity."""
  return _blend(image, to_grayscale(image), factor)


def _adjust_hue(image: Array, shift: Any) -> Array:
  """Rotates hue by ``shift`` (fraction of a turn, in [-0.5, 0.5])."""
  hsv = _rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
  return jnp.clip(_hsv_to_rgb(hsv), 0.0, 1.0)


_COLOR_OPS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)


def _sample_color_jitter(
  rng: Array, brightness: float, contrast: float, saturation: float, hue: float
) -> tuple[Array, Array, tuple[int, ...]]:
  """Samples torchvision ColorJitter factors and a random op order.

  Returns:
    factors: ``[4]`` float32 ``(brightness, contrast, saturation, hue_shift)``;
      multiplicative factors ~ U[max(0, 1 - s), 1 + s], hue shift ~ U[-h, h].
    order: ``[n_active]`` int32, a random permutation of ``range(n_active)``
      indexing into ``active``.
    active: static tuple of op ids (0 brightness, 1 contrast, 2 saturation,
      3 hue) whose strength is not a Python 0; skipped ops never run.
  """
  strengths = (brightness, contrast, saturation, hue)
  for name, s in zip(("brightness", "contrast", "saturation", "hue"), strengths):
    if isinstance(s, (int, float)) and s < 0:
      raise ValueError(f"color_jitter {name} must be >= 0, got {s}")
  if isinstance(hue, (int, float)) and hue > 0.5:
    raise ValueError(f"color_jitter hue must be <= 0.5, got {hue}")
  u = jax.random.uniform(rng, (_JITTER_DRAWS,))
  return _color_jitter_from_uniforms(u, brightness, contrast, saturation, hue)


_JITTER_DRAWS = 8  # four factors, four sort keys for the order


def _color_jitter_from_uniforms(u: Array, brightness, contrast, saturation, hue):
  """:func:`_sample_color_jitter` given its ``_JITTER_DRAWS`` U[0, 1) draws."""
  strengths = (brightness, contrast, saturation, hue)
  factors = []
  for i, s in enumerate(strengths[:3]):
    lo = jnp.maximum(0.0, 1.0 - jnp.asarray(s, jnp.float32))
    hi = 1.0 + jnp.asarray(s, jnp.float32)
    factors.append(lo + u[i] * (hi - lo))
  factors.append(-hue + u[3] * (2 * hue))
  active = tuple(i for i, s in enumerate(strengths) if not _is_static(s, 0))
  # Sorting i.i.d. uniforms gives a uniformly random permutation.
  order = jnp.argsort(u[4 : 4 + len(active)]).astype(jnp.int32)
  return jnp.stack(factors).astype(jnp.float32), order, active


def _linear_color_op(x: Array, coef: Array) -> Array:
  """``clip(a·x + c·gray(x) + d·mean(gray(x)))`` for ``coef = (a, c, d)``: brightness is
  ``(f, 0, 0)``, saturation ``(f, 1 - f, 0)``, contrast ``(f, 0, 1 - f)``, identity ``(1, 0, 0)``
  (the same sums, in the same order, as :func:`_adjust_brightness` & co.)."""
  y = _luma(x)
  return jnp.clip(coef[0] * x + coef[1] * y[..., None] + coef[2] * jnp.mean(y), 0.0, 1.0)


def _apply_color_ops(
  image: Array, factors: Array, order: Array, active: tuple[int, ...] = (0, 1, 2, 3)
) -> Array:
  """Applies the ops ``active[order[0]], active[order[1]], ...`` in sequence.

  ``order`` is traced (and differs per image under ``vmap``), so a ``switch`` per position
  would evaluate every op at every position. Instead only the chosen op is computed:
  brightness, contrast and saturation are one linear blend (:func:`_linear_color_op`) whose
  coefficients are selected per position, and the hue rotation (RGB -> HSV -> RGB, the
  expensive one) runs once, between the positions before it and those after it. Positions
  on the wrong side of the hue apply the identity blend.
  """
  if not active:
    return image
  f = factors
  one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
  coefs = jnp.stack(
    [
      jnp.stack([f[0], zero, zero]),  # brightness
      jnp.stack([f[1], zero, 1.0 - f[1]]),  # contrast
      jnp.stack([f[2], 1.0 - f[2], zero]),  # saturation
      jnp.stack([one, zero, zero]),  # identity (the hue's own position)
    ]
  )
  op_at = jnp.asarray(active, jnp.int32)[order]  # op id at each position
  blend = lambda x, c: (_linear_color_op(x, c), None)  # noqa: E731
  if 3 not in active:
    image, _ = lax.scan(blend, image, coefs[op_at])
    return image
  n = len(active)
  hue_at = jnp.argmax(op_at == 3)
  pos = jnp.arange(n - 1)
  before = jnp.where((pos < hue_at)[:, None], coefs[op_at[:-1]], coefs[3])
  after = jnp.where((pos + 1 > hue_at)[:, None], coefs[op_at[1:]], coefs[3])
  image, _ = lax.scan(blend, image, before)
  image = _adjust_hue(image, f[3])
  image, _ = lax.scan(blend, image, after)
  return image


def color_jitter(
  rng: Array,
  image: Array,
  brightness: float,
  contrast: float,
  saturation: float,
  hue: float,
) -> Array:
  """torchvision ColorJitter on one ``[H, W, 3]`` image in [0, 1].

  * brightness: ``x * f``, f ~ U[max(0, 1 - b), 1 + b];
  * contrast: blend with the mean of the grayscale image, f ~ U[max(0, 1 - c), 1 + c];
  * saturation: blend with the grayscale image, f ~ U[max(0, 1 - s), 1 + s];
  * hue: hue rotated by U[-h, h] turns (RGB -> HSV -> RGB).

  The four are applied in a random order per image (SimCLR Appendix A uses
  torchvision's ColorJitter, which permutes them), clipping to [0, 1] after
  each. A strength that is a Python 0 disables its op, so all-zero strengths
  return the input unchanged.

  Returns:
    ``[H, W, 3]`` float32 in [0, 1].
  """
  factors, order, active = _sample_color_jitter(rng, brightness, contrast, saturation, hue)
  return _apply_color_ops(image, factors, order, active)


# --------------------------------------------------------------------------
# Gaussian blur
# --------------------------------------------------------------------------


def _default_blur_kernel_size(side: int) -> int:
  """SimCLR's kernel (Appendix A, `data_util.py`): side // 10 made odd as 2·(side // 10 // 2)
  + 1 (23 at 224 px, 9 at 96, 3 at 32), at least 3."""
  return max(2 * (side // 10 // 2) + 1, 3)


def _gaussian_kernel1d(sigma: Any, kernel_size: int) -> Array:
  """Normalised 1-D Gaussian taps, ``[kernel_size]``."""
  radius = kernel_size // 2
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * jnp.square(x / sigma))
  return k / jnp.sum(k)


def _blur_with_sigma(image: Array, sigma: Any, kernel_size: int) -> Array:
  """Separable Gaussian blur of ``[H, W, C]`` with reflect padding."""
  if kernel_size % 2 != 1:
    raise ValueError(f"blur kernel_size must be odd, got {kernel_size}")
  taps = _gaussian_kernel1d(sigma, kernel_size)
  radius = kernel_size // 2
  height, width = image.shape[0], image.shape[1]
  # Vertical pass.
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
  out = sum(taps[i] * padded[i : i + height] for i in range(kernel_size))
  # Horizontal pass.
  padded = jnp.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
  return sum(taps[i] * padded[:, i : i + width] for i in range(kernel_size))


def gaussian_blur(
  rng: Array,
  image: Array,
  sigma: tuple[float, float] = (0.1, 2.0),
  kernel_size: int | None = None,
) -> Array:
  """Gaussian blur with sigma ~ U(sigma) (SimCLR Appendix A).

  Args:
    rng: PRNG key.
    image: ``[H, W, C]`` float image.
    sigma: (min, max) standard deviation in pixels.
    kernel_size: static odd kernel size; default about 10% of ``min(H, W)``.

  Returns:
    ``[H, W, C]`` float32.
  """
  if kernel_size is None:
    kernel_size = _default_blur_kernel_size(min(image.shape[0], image.shape[1]))
  s = jax.random.uniform(rng, (), minval=sigma[0], maxval=sigma[1])
  return _blur_with_sigma(image, s, kernel_size)


# --------------------------------------------------------------------------
# View parameters and the composed pipeline
# --------------------------------------------------------------------------


def _pair(x: Any, name: str) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in x)
  except (TypeError, ValueError):
    raise ValueError(f"ViewParams.{name} must be a (min, max) pair, got {x!r}") from None
  if lo > hi:
    raise ValueError(f"ViewParams.{name} must have min <= max, got {x!r}")
  return lo, hi


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """Static, hashable description of one augmented view.

  Safe to close over in jitted code or pass as a static argument. Defaults are
  SimCLR's (Chen et al. 2020, Appendix A) with colour strength 0.5.
  """

  crop_size: int = 224
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  flip_prob: float = 0.5
  solarize_prob: float = 0.0
  solarize_threshold: float = 0.5
  # Blur only the rows that drew it (blur_drawn_rows): 1.27x faster multi-crop on a CPU; the
  # TPU cost model counts more memory traffic for its row gathers than the blur saves.
  compact_blur: bool = True

  def __post_init__(self):
    # Normalise types (lists from configs -> tuples, ints -> floats) so the
    # instance is hashable and equal configs compare equal.
    object.__setattr__(self, "compact_blur", bool(self.compact_blur))
    crop_size = int(self.crop_size)
    if crop_size <= 0:
      raise ValueError(f"ViewParams.crop_size must be positive, got {self.crop_size}")
    object.__setattr__(self, "crop_size", crop_size)
    for name in ("crop_scale", "crop_ratio", "blur_sigma"):
      object.__setattr__(self, name, _pair(getattr(self, name), name))
    if self.crop_scale[0] <= 0:
      raise ValueError(f"ViewParams.crop_scale must be > 0, got {self.crop_scale}")
    if self.crop_ratio[0] <= 0:
      raise ValueError(f"ViewParams.crop_ratio must be > 0, got {self.crop_ratio}")
    for name in ("brightness", "contrast", "saturation", "hue", "solarize_threshold"):
      object.__setattr__(self, name, float(getattr(self, name)))
      if getattr(self, name) < 0:
        raise ValueError(f"ViewParams.{name} must be >= 0, got {getattr(self, name)}")
    if self.hue > 0.5:
      raise ValueError(f"ViewParams.hue must be <= 0.5, got {self.hue}")
    for name in ("jitter_prob", "grayscale_prob", "blur_prob", "flip_prob", "solarize_prob"):
      p = float(getattr(self, name))
      if not 0.0 <= p <= 1.0:
        raise ValueError(f"ViewParams.{name} must be in [0, 1], got {p}")
      object.__setattr__(self, name, p)

  @classmethod
  def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None) -> ViewParams:
    """Builds from an ``ml_collections.ConfigDict`` (or any mapping).

    Missing keys take the SimCLR defaults; an unknown key raises
    ``ValueError`` naming it and listing the valid keys.
    """
    if cfg is None:
      return cls()
    items = dict(cfg.items())
    valid = cls.field_names()
    unknown = sorted(k for k in items if k not in valid)
    if unknown:
      raise ValueError(f"Unknown augmentation key(s) {unknown}; valid keys are {list(valid)}")
    return cls(**items)


def view(
  rng: Array,
  image: Array,
  params: ViewParams,
  probs: Mapping[str, Array] | None = None,
  cropped: bool = False,
) -> Array:
  """One augmented view of one image, SimCLR order (Chen et al. 2020, App. A).

  crop -> flip (p) -> colour jitter (p) -> grayscale (p) -> blur (p) -> solarize (p).

  Args:
    rng: PRNG key.
    image: ``[H, W, 3]`` float image in [0, 1].
    params: static :class:`ViewParams`.
    probs: optional traced overrides of ``params``' probabilities (``"blur_prob"``...),
      used by :func:`augment_views` to run views that differ only in those in one pipeline.
    cropped: the image is already the view's crop (made on the host): skip the crop, keep the
      rest of the view's randomness as it is.

  Returns:
    ``[crop_size, crop_size, 3]`` float32 in [0, 1].
  """
  x, tail = _view_core(rng, image, params, probs, cropped)
  return _finish_view(x, tail, params, dict(probs or {}))


class Tail(NamedTuple):
  """A view's last two draws, applied after the rest of its pipeline (per row under vmap):
  whether it is blurred, the blur's sigma, whether it is solarized."""

  blur: Array  # bool
  sigma: Array  # float32
  solarize: Array  # bool


def _view_core(
  rng: Array,
  image: Array,
  params: ViewParams,
  probs: Mapping[str, Array] | None = None,
  cropped: bool = False,
) -> tuple[Array, Tail]:
  """:func:`view` up to its blur: the view before blur and solarize, and their draws."""
  probs = dict(probs or {})
  prob = lambda name: probs.get(name, getattr(params, name))  # noqa: E731
  # All of a view's randomness comes from ONE draw of uniforms: every separate
  # jax.random call inlines its own threefry graph, and a dozen of them made the
  # augmentation the largest, slowest-to-compile part of a small train step.
  p = params
  tries = 10
  layout = {
    "crop": _crop_draws(tries),
    "flip": 1,
    "jitter_coin": 1,
    "jitter": _JITTER_DRAWS,
    "gray": 1,
    "blur_coin": 1,
    "sigma": 1,
    "solarize": 1,
  }
  u = jax.random.uniform(rng, (sum(layout.values()),))
  draws, start = {}, 0
  for name, n in layout.items():
    draws[name] = u[start : start + n] if n > 1 else u[start]
    start += n
  if cropped:
    if image.shape[:2] != (p.crop_size, p.crop_size):
      raise ValueError(f"a cropped view must be {p.crop_size}x{p.crop_size}, got {image.shape}")
    x = image
  else:
    box = _crop_box_from_uniforms(
      draws["crop"], image.shape[0], image.shape[1], p.crop_scale, p.crop_ratio
    )
    x = crop_and_resize(image, box, p.crop_size)
  x = _apply_if(draws["flip"], x, horizontal_flip, prob("flip_prob"))
  if not all(_is_static(s, 0) for s in (p.brightness, p.contrast, p.saturation, p.hue)):
    jitter = lambda im: _apply_color_ops(  # noqa: E731
      im,
      *_color_jitter_from_uniforms(draws["jitter"], p.brightness, p.contrast, p.saturation, p.hue),
    )
    x = _apply_if(draws["jitter_coin"], x, jitter, prob("jitter_prob"))
  x = _apply_if(draws["gray"], x, to_grayscale, prob("grayscale_prob"))
  tail = Tail(
    blur=draws["blur_coin"] < prob("blur_prob"),
    sigma=p.blur_sigma[0] + draws["sigma"] * (p.blur_sigma[1] - p.blur_sigma[0]),
    solarize=draws["solarize"] < prob("solarize_prob"),
  )
  return x, tail


def _blur_kernel(shape) -> int:
  return _default_blur_kernel_size(min(shape[0], shape[1]))


def _finish_view(x: Array, tail: Tail, params: ViewParams, probs: Mapping[str, Any]) -> Array:
  """Blur and solarize of one view, as its :class:`Tail` drew them."""
  prob = lambda name: probs.get(name, getattr(params, name))  # noqa: E731
  blur = lambda im: _blur_with_sigma(im, tail.sigma, _blur_kernel(im.shape))  # noqa: E731
  x = _where_drawn(tail.blur, x, blur, prob("blur_prob"))
  sol = lambda im: solarize(im, params.solarize_threshold)  # noqa: E731
  return _where_drawn(tail.solarize, x, sol, prob("solarize_prob"))


def _where_drawn(drawn: Array, x: Array, fn: Callable[[Array], Array], p: Any) -> Array:
  """``fn(x)`` where the coin was drawn (``drawn`` broadcasts against ``x``); a probability
  known while tracing (a Python number or NumPy rows) that is all 0 or all 1 decides there."""
  if _is_static(p, 0) or (isinstance(p, np.ndarray) and not p.any()):
    return x
  if _is_static(p, 1) or (isinstance(p, np.ndarray) and (p == 1).all()):
    return fn(x)
  return jnp.where(drawn, fn(x), x)


def augment_batch(
  rng: Array,
  images: Array,
  params: ViewParams,
  probs: Mapping[str, Any] | None = None,
  cropped: bool = False,
) -> Array:
  """Independent views of a batch: one key per image, ``vmap`` of :func:`view`.

  Args:
    rng: PRNG key.
    images: ``[B, H, W, 3]`` float in [0, 1], or uint8 in [0, 255].
    params: static :class:`ViewParams`.
    probs: optional per-image ``[B]`` overrides of ``params``' probabilities (see
      :func:`augment_views`): NumPy arrays (known while tracing, so the blur can make room
      for only the rows likely to draw it) or traced arrays.

  Returns:
    ``[B, crop_size, crop_size, 3]`` float32 in [0, 1].
  """
  views, tail = augment_batch_parts(rng, images, params, probs, cropped)
  return finish_views(views, tail, params, probs)


def augment_batch_parts(
  rng: Array,
  images: Array,
  params: ViewParams,
  probs: Mapping[str, Any] | None = None,
  cropped: bool = False,
) -> tuple[Array, Tail]:
  """:func:`augment_batch` before its blur and solarize: ``([B, S, S, 3] views, [B] Tail)``.
  For callers that ``vmap`` over several batches of views: they finish the stacked rows in
  one :func:`finish_views`, whose blur must not run under a ``vmap``."""
  with jax.named_scope(SCOPE):
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
      images = images.astype(jnp.float32) / 255.0
    else:
      images = images.astype(jnp.float32)
    keys = jax.random.split(rng, images.shape[0])
    return jax.vmap(lambda k, im, pr: _view_core(k, im, params, pr, cropped))(
      keys, images, dict(probs or {})
    )


def finish_views(
  views: Array, tail: Tail, params: ViewParams, probs: Mapping[str, Any] | None = None
) -> Array:
  """Blur and solarize of ``[N, S, S, 3]`` views as their ``[N]`` :class:`Tail` drew them.

  Only rows that drew the blur are blurred (:func:`blur_drawn_rows`) unless
  ``params.compact_blur`` is off (every row blurred, then selected); ``probs`` as in
  :func:`augment_batch` (per-row NumPy probabilities let the blur size its work).
  """
  probs = dict(probs or {})
  n = views.shape[0]

  def static_rows(name):  # per-row probabilities known while tracing, else None
    p = probs.get(name, getattr(params, name))
    if isinstance(p, (int, float)):
      return np.full((n,), float(p))
    return np.asarray(p, np.float64) if isinstance(p, np.ndarray) else None

  with jax.named_scope(SCOPE):
    room = None if params.compact_blur else n
    x = blur_drawn_rows(views, tail.blur, tail.sigma, static_rows("blur_prob"), room=room)
    sol = static_rows("solarize_prob")
    return _where_drawn(
      tail.solarize[:, None, None, None],
      x,
      lambda im: solarize(im, params.solarize_threshold),
      probs.get("solarize_prob", params.solarize_prob) if sol is None else sol,
    )


# Room the compacted blur makes per group of rows: the expected count of rows that draw it
# plus this many standard deviations (a step over it blurs every row, with the same result).
BLUR_ROOM_SIGMAS = 4.0


def blur_room(row_probs: np.ndarray, groups: int) -> int:
  """Rows per group :func:`blur_drawn_rows` blurs: the largest group's mean count of rows
  drawing the blur plus :data:`BLUR_ROOM_SIGMAS` standard deviations, at most the group."""
  p = np.asarray(row_probs, np.float64).reshape(groups, -1)
  need = p.sum(axis=1) + BLUR_ROOM_SIGMAS * np.sqrt((p * (1.0 - p)).sum(axis=1))
  return int(min(p.shape[1], math.ceil(float(need.max()) - 1e-9)))


def blur_groups(n: int) -> int:
  """Groups of rows compacted separately: ``gcd(n, device count)``. A batch split evenly over
  any D of the devices (D divides both) gives each device whole groups, so the compaction's
  sort, gather and scatter stay on the device holding the rows."""
  return math.gcd(n, jax.device_count())


def blur_drawn_rows(
  x: Array,
  drawn: Array,
  sigma: Array,
  row_probs: np.ndarray | None = None,
  room: int | None = None,
  groups: int | None = None,
) -> Array:
  """Gaussian blur of the rows of ``[N, H, W, C]`` where ``drawn`` (``[N]`` bool), with
  per-row ``sigma``; other rows unchanged.

  A ``where`` over blurred and unblurred copies would blur every row. Instead the rows
  that drew the blur are gathered first (a stable sort per group of rows,
  :func:`blur_groups`), only ``room`` rows per group are blurred and scattered back. A step
  with more drawn rows than ``room`` in some group takes the full branch (every row blurred
  and selected), so the result never depends on the room. ``room`` defaults to
  :func:`blur_room` of the per-row probabilities known while tracing; without them every
  row is blurred. ``groups`` defaults to :func:`blur_groups`.
  """
  kernel = _blur_kernel(x.shape[1:])
  blur_rows = jax.vmap(lambda im, s: _blur_with_sigma(im, s, kernel))
  if row_probs is not None and not np.any(row_probs):
    return x
  if row_probs is not None and np.all(np.asarray(row_probs) == 1):
    return blur_rows(x, sigma)
  n = x.shape[0]
  groups = blur_groups(n) if groups is None else groups
  if n % groups:
    raise ValueError(f"blur_drawn_rows: {n} rows do not split into {groups} groups")
  rows = n // groups
  if room is None:
    room = rows if row_probs is None else blur_room(row_probs, groups)
  room = max(1, min(int(room), rows))

  def every_row(x):
    return jnp.where(drawn[:, None, None, None], blur_rows(x, sigma), x)

  if room == rows:
    return every_row(x)

  def compact(x):
    def group(xr, dr, sr):
      idx = jnp.argsort(jnp.logical_not(dr), stable=True)[:room]  # drawn rows first
      # Rows move as flat vectors: gathering [H, W, 3] slices would move a TPU layout
      # padded along the 3 channels (the cost model counted 2.6x the augmentation's traffic).
      flat = xr.reshape(rows, -1)
      picked = flat[idx].reshape((room,) + xr.shape[1:])
      out = jnp.where(dr[idx][:, None, None, None], blur_rows(picked, sr[idx]), picked)
      return flat.at[idx].set(out.reshape(room, -1), unique_indices=True).reshape(xr.shape)

    split = lambda a: a.reshape((groups, rows) + a.shape[1:])  # noqa: E731
    return jax.vmap(group)(split(x), split(drawn), split(sigma)).reshape(x.shape)

  fits = jnp.max(jnp.sum(drawn.reshape(groups, rows), axis=1)) <= room
  return lax.cond(fits, compact, every_row, x)


_PROB_FIELDS = ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob")


def augment_views(
  rng: Array, images: Array, views: Sequence[ViewParams], cropped: bool = False
) -> Array:
  """One view per :class:`ViewParams` of every image, *image-major*: ``[B * V, S, S, 3]``,
  row ``i * V + v`` holding view ``v`` of image ``i``.

  Image-major keeps an image's views next to each other, so with the batch sharded over
  devices every view of an image is made, and later compared, on the device that holds the
  image: no reshape here or in a cross-view loss moves rows between devices (view-major
  ``[V * B]`` rows would put view 0 of all images on the first devices and view 1 on the
  last, and every per-image comparison would gather across them).

  Views are augmented in ONE vmapped pipeline over the repeated batch whenever they differ at
  most in their probabilities (SimCLR's identical views; BYOL's and DINO's blur 1.0 / 0.1,
  solarize 0 / 0.2): those become per-row traced values. Views differing in anything else
  (strengths, scales) are augmented one call each and interleaved.

  ``cropped=True``: ``images`` are already the views, ``[B * V, S, S, 3]`` in that row order
  (made on the host); only the crop is skipped.
  """
  views = tuple(views)
  nv = len(views)
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  b = images.shape[0] // nv if cropped else images.shape[0]
  differing = [f for f in ViewParams.field_names() if len({getattr(v, f) for v in views}) > 1]
  if differing and not set(differing) <= set(_PROB_FIELDS):
    keys = jax.random.split(rng, nv)
    per_view = images.reshape((b, nv) + images.shape[1:]) if cropped else None
    outs = [
      augment_batch(k, per_view[:, v] if cropped else images, p, cropped=cropped)
      for v, (k, p) in enumerate(zip(keys, views))
    ]
    out = jnp.stack(outs, axis=1)
    return out.reshape((b * nv,) + out.shape[2:])
  tiled = images if cropped else jnp.repeat(images, nv, axis=0)
  # NumPy, not traced: the blur sizes its work by the rows' known probabilities.
  probs = {f: np.tile(np.asarray([getattr(v, f) for v in views], np.float32), b) for f in differing}
  return augment_batch(rng, tiled, views[0], probs, cropped)


def normalize(images: Array, mean: Sequence[float], std: Sequence[float]) -> Array:
  """Per-channel ``(x - mean) / std`` on ``[..., 3]`` images."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images - mean) / std
