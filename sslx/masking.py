"""Patch masking for masked image modeling (MAE, data2vec, BEiT).

Every mask is a pure function of a PRNG key and *static* sizes: the number of masked patches
per image is fixed by the config (not sampled), so shapes never change and the train step
compiles once; the same key gives the same mask.

  random_masking(rng, batch, num_patches, mask_ratio) -> RandomMask(ids_keep, ids_restore, mask)
      MAE (He et al. 2022, §3 "Masking"): a uniform random subset of exactly
      round(ratio · N) patches per image is masked ("random sampling" by shuffling).
  blockwise_masking(rng, batch, grid, mask_ratio) -> [B, N] bool
      BEiT (Bao et al. 2022, Algorithm 1): rectangular blocks of ≥ 16 patches (aspect ratio in
      [0.3, 1/0.3]) are added until ≥ 40% of the patches are masked; here the count is then
      made *exact* (random masked patches are un-masked, or random free ones masked, to reach
      round(ratio · N)) so the shape of `ids` is static.

Replacing masked patch embeddings by a mask token while all N tokens stay in the sequence
(BEiT §2.2, data2vec §3.2) is the ViT's own forward: `ViT(..., token_mask=mask,
mask_embedding=...)` in sslx/models/vit.py.

Conventions: `mask` is [B, N] bool, True = masked (hidden from the encoder / predicted).
Patches are numbered row-major over the (H/p, W/p) grid, as `vit.patchify` orders them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class RandomMask(NamedTuple):
  ids_keep: jax.Array  # [B, K] int32 indices of the visible patches (shuffled order)
  ids_restore: jax.Array  # [B, N] int32: position of patch n in the [visible; masked] order
  mask: jax.Array  # [B, N] bool, True = masked; exactly N - K per row


def num_masked(num_patches: int, mask_ratio: float) -> int:
  """The static number of masked patches: round(ratio · N), at most N - 1 (one stays visible
  so the encoder always has an input) unless ratio is 0."""
  m = int(round(mask_ratio * num_patches))
  return min(max(m, 0), num_patches - 1) if mask_ratio > 0 else 0


def random_masking(rng, batch: int, num_patches: int, mask_ratio: float) -> RandomMask:
  """MAE's per-image uniform random masking (He et al. 2022, §3): argsort of uniform noise
  gives a random permutation; its first K = N - round(ratio·N) entries are kept.

  `ids_restore` undoes the shuffle: `take_along_axis(concat([visible, mask_tokens]),
  ids_restore)` puts every token back at its patch position (the MAE decoder's input)."""
  keep = num_patches - num_masked(num_patches, mask_ratio)
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :keep]
  mask = ids_restore >= keep  # a patch is masked iff its shuffled position is past K
  return RandomMask(ids_keep, ids_restore, mask)


def blockwise_masking(
  rng,
  batch: int,
  grid: tuple[int, int],
  mask_ratio: float = 0.4,
  min_block: int = 16,
  aspect: float = 0.3,
  max_blocks: int = 200,
) -> jax.Array:
  """BEiT blockwise masking (Bao et al. 2022, Algorithm 1), [B, gh·gw] bool with exactly
  round(ratio · N) True per row.

  Repeat: s ~ U(min(min_block, R), R) with R = target − |M| the patches still to mask;
  r ~ U(aspect, 1/aspect) (log-uniform as in the released code); a = √(s·r), b = √(s/r)
  (rows, cols) at a random top-left; M ← M ∪ block unless the block is as tall or as wide as
  the grid, adds nothing, or would exceed the target (the released code's `_mask` rejects all
  three); until |M| = target (at most `max_blocks` tries).
  Allowing blocks smaller than `min_block` once fewer than `min_block` patches remain makes
  the count exact; should the tries run out, random free patches complete it (rare)."""
  gh, gw = grid
  n = gh * gw
  target = num_masked(n, mask_ratio)
  lo_block = float(min(min_block, max(target, 1)))
  log_lo, log_hi = math.log(aspect), math.log(1.0 / aspect)
  rows = jnp.arange(gh)[:, None]
  cols = jnp.arange(gw)[None, :]

  def one(key):
    loop_key, fix_key = jax.random.split(key)

    def cond(carry):
      m, _, i = carry
      return (m.sum() < target) & (i < max_blocks)

    def body(carry):
      m, k, i = carry
      k, ks, kr, kt, kl = jax.random.split(k, 5)
      remaining = (target - m.sum()).astype(jnp.float32)
      lo = jnp.minimum(lo_block, remaining)
      hi = jnp.maximum(remaining, lo)
      s = jax.random.uniform(ks, (), minval=lo, maxval=hi + 1e-6)
      r = jnp.exp(jax.random.uniform(kr, (), minval=log_lo, maxval=log_hi))
      a = jnp.round(jnp.sqrt(s * r)).astype(jnp.int32)
      b = jnp.round(jnp.sqrt(s / r)).astype(jnp.int32)
      # BEiT's code draws a block only when it is shorter and narrower than the grid
      fits = (a < gh) & (b < gw)
      top = jax.random.randint(kt, (), 0, jnp.maximum(gh - a, 0) + 1)
      left = jax.random.randint(kl, (), 0, jnp.maximum(gw - b, 0) + 1)
      block = (rows >= top) & (rows < top + a) & (cols >= left) & (cols < left + b)
      new = m | block
      # ... and keeps it only when it adds patches without exceeding the budget (the count
      # stays exact)
      keep = fits & (new.sum() > m.sum()) & (new.sum() <= target)
      return jnp.where(keep, new, m), k, i + 1

    m, _, _ = jax.lax.while_loop(cond, body, (jnp.zeros((gh, gw), bool), loop_key, 0))
    m = m.reshape(n)
    # Exact count: rank masked patches first (random order within each group), keep `target`.
    score = m.astype(jnp.float32) + jax.random.uniform(fix_key, (n,))
    ranks = jnp.argsort(jnp.argsort(-score))
    return ranks < target

  return jax.vmap(one)(jax.random.split(rng, batch))


def ids_of_mask(mask: jax.Array, num_selected: int, value: bool = True) -> jax.Array:
  """[B, K] int32 indices (increasing) of the positions where `mask == value`; `num_selected`
  (static) must be the exact count per row."""
  order = jnp.argsort(mask != value, axis=1, stable=True)
  return order[:, :num_selected].astype(jnp.int32)
