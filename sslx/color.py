"""CIE Lab colour and the quantised ab space of colorization (Zhang, Isola & Efros 2016,
"Colorful Image Colorization", ECCV), in JAX.

  srgb_to_lab / lab_to_srgb   sRGB (IEC 61966-2-1, D65 white) <-> CIE 1976 L*a*b*; float
                              arrays [..., 3], sRGB in [0, 1], L in [0, 100].
  ab_bins(grid)               the in-gamut ab bin centres, [Q, 2], computed here (nothing is
                              downloaded): a bin of the 10-wide grid centred on multiples of
                              10 is kept when some 8-bit sRGB colour (sampled on a 64³ lattice
                              of the cube) falls in it. NOTE: this yields Q = 261 bins with
                              exact sRGB; the paper's Q = 313 is its empirical hull from
                              ImageNet and is not reproduced by the gamut alone (every variant
                              tried — bin-centre in gamut for some L, convex hull of the gamut,
                              cells touching the hull — gives 225–269). Q is taken from this
                              function everywhere, never hard-coded.
  soft_encode                 the paper's soft targets: the 5 nearest bins of each pixel's ab,
                              weighted by a Gaussian of σ = 5 and normalised (§2.1).
  smooth_prior / rebalance_weights
                              class rebalancing (§2.2): w ∝ ((1 − λ)·p̃ + λ/Q)⁻¹ with p̃ the
                              empirical bin distribution smoothed by a σ = 5 Gaussian,
                              normalised so E_p̃[w] = 1; λ = 1/2.
  annealed_mean               decoding (§2.3): H(Z) = E[f_T(Z)] with f_T(z) = exp(log z / T)
                              / Σ exp(log z / T), T = 0.38.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# sRGB primaries / D65 (IEC 61966-2-1), rows X, Y, Z.
_RGB_TO_XYZ = np.array(
  [
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
  ],
  np.float64,
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float64)  # D65, Y = 1
_DELTA = 6.0 / 29.0


def _srgb_to_linear(c):
  return jnp.where(c <= 0.04045, c / 12.92, ((jnp.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c):
  c = jnp.clip(c, 0.0, 1.0)
  return jnp.where(
    c <= 0.0031308, 12.92 * c, 1.055 * jnp.maximum(c, 0.0031308) ** (1.0 / 2.4) - 0.055
  )


def srgb_to_lab(rgb: jax.Array) -> jax.Array:
  """[..., 3] sRGB in [0, 1] -> [..., 3] (L in [0, 100], a, b roughly in [−110, 110])."""
  rgb = jnp.asarray(rgb, jnp.float32)
  xyz = _srgb_to_linear(rgb) @ jnp.asarray(_RGB_TO_XYZ.T / _WHITE, jnp.float32)
  f = jnp.where(
    xyz > _DELTA**3, jnp.cbrt(jnp.maximum(xyz, _DELTA**3)), xyz / (3 * _DELTA**2) + 4.0 / 29.0
  )
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_srgb(lab: jax.Array) -> jax.Array:
  """[..., 3] Lab -> [..., 3] sRGB, clipped to [0, 1] (out-of-gamut colours are clipped)."""
  lab = jnp.asarray(lab, jnp.float32)
  fy = (lab[..., 0] + 16.0) / 116.0
  f = jnp.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
  xyz = jnp.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
  lin = xyz @ jnp.asarray((_XYZ_TO_RGB * _WHITE[None, :]).T, jnp.float32)
  return _linear_to_srgb(lin)


def _srgb_to_lab_np(rgb: np.ndarray) -> np.ndarray:
  lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
  xyz = lin @ (_RGB_TO_XYZ.T / _WHITE)
  f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
  return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], -1)


@functools.lru_cache(maxsize=4)
def ab_bins(grid: int = 10, lattice: int = 64) -> np.ndarray:
  """In-gamut ab bin centres [Q, 2] float32, sorted by (a, b); see the module docstring."""
  v = np.linspace(0.0, 1.0, lattice)
  cube = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
  ab = _srgb_to_lab_np(cube)[:, 1:]
  centres = np.unique(np.round(ab / grid).astype(np.int64), axis=0) * grid
  out = centres.astype(np.float32)
  out.setflags(write=False)
  return out


def soft_encode(ab: jax.Array, bins: jax.Array, k: int = 5, sigma: float = 5.0) -> jax.Array:
  """[..., 2] ab -> [..., Q] soft targets: Gaussian(σ) weights on the k nearest bins, summing
  to 1 (Zhang et al. §2.1: 5 nearest neighbours, σ = 5)."""
  d2 = jnp.sum(jnp.square(ab[..., None, :] - bins), axis=-1)  # [..., Q]
  neg, idx = jax.lax.top_k(-d2, k)  # k nearest
  w = jax.nn.softmax(neg / (2.0 * sigma**2), axis=-1)  # ∝ exp(−d²/2σ²)
  q = bins.shape[0]
  return jnp.sum(jax.nn.one_hot(idx, q, dtype=w.dtype) * w[..., None], axis=-2)


def smooth_prior(prior: jax.Array, bins: jax.Array, sigma: float = 5.0) -> jax.Array:
  """p̃: the empirical bin distribution [Q] smoothed by a Gaussian of σ over ab, renormalised."""
  d2 = jnp.sum(jnp.square(bins[:, None, :] - bins[None, :, :]), axis=-1)
  kernel = jnp.exp(-d2 / (2.0 * sigma**2))
  kernel = kernel / jnp.sum(kernel, axis=1, keepdims=True)
  p = prior / jnp.maximum(jnp.sum(prior), 1e-12)
  smoothed = p @ kernel
  return smoothed / jnp.sum(smoothed)


def rebalance_weights(smoothed_prior: jax.Array, lam: float = 0.5) -> jax.Array:
  """w ∝ ((1 − λ)·p̃ + λ/Q)⁻¹ with E_p̃[w] = 1 (Zhang et al. eq. 4). [Q] -> [Q]."""
  q = smoothed_prior.shape[0]
  w = 1.0 / ((1.0 - lam) * smoothed_prior + lam / q)
  return w / jnp.sum(smoothed_prior * w)


def annealed_mean(logits: jax.Array, bins: jax.Array, temperature: float = 0.38) -> jax.Array:
  """[..., Q] logits -> [..., 2] ab: the mean of the distribution re-tempered to T
  (f_T(z) ∝ exp(log z / T) = softmax(logits / T); T → 0 is the mode, T = 1 the mean)."""
  return jax.nn.softmax(logits / temperature, axis=-1) @ bins
