"""Jigsaw permutation sets of maximal Hamming distance (Noroozi & Favaro 2016, "Unsupervised
Learning of Visual Representations by Solving Jigsaw Puzzles", §3.2 and Algorithm 1).

The greedy algorithm of the paper, over all 9! orderings of the 3×3 tiles:

    P̄ ← all permutations;  P ← ∅;  j ~ U[1, 9!]            (here: drawn from `seed`)
    repeat N times:
      P ← [P, P̄_j];  remove P̄_j from P̄
      D ← Hamming(P, P̄)          # |P| × |P̄| distances
      D̄ ← 1ᵀ D                   # summed over the chosen set (maximal *average* distance)
      j ← argmax_k D̄_k           # ties: the first in lexicographic order

so each new permutation is the one farthest, on average, from those already chosen. The set
depends only on (num_permutations, seed, num_tiles): `generate` is deterministic and
`fingerprint` is a short hash of the set for run records.
"""

from __future__ import annotations

import functools
import hashlib
import itertools

import numpy as np


@functools.lru_cache(maxsize=2)
def all_permutations(num_tiles: int = 9) -> np.ndarray:
  """[num_tiles!, num_tiles] int8, in lexicographic order (itertools.permutations)."""
  return np.asarray(list(itertools.permutations(range(num_tiles))), np.int8)


@functools.lru_cache(maxsize=8)
def _generate(num_permutations: int, seed: int, num_tiles: int) -> np.ndarray:
  pool = all_permutations(num_tiles)
  total = len(pool)
  if not 1 <= num_permutations <= total:
    raise ValueError(f"num_permutations={num_permutations} must be in [1, {total}]")
  # One row per tile slot: each distance update is num_tiles contiguous byte comparisons
  # (1000 of 9! permutations in ~3 s, against ~12 s comparing whole [total, num_tiles] rows).
  slots = np.ascontiguousarray(pool.T)
  summed = np.zeros(total, np.int64)  # D̄: summed Hamming distance to the chosen set
  j = int(np.random.default_rng(seed).integers(total))
  order = []
  for _ in range(num_permutations):
    order.append(j)
    for slot, tile in zip(slots, pool[j], strict=True):
      summed += slot != tile
    summed[order] = -1  # the chosen ones are never picked again
    j = int(np.argmax(summed))
  out = pool[np.asarray(order)].astype(np.int32)
  out.setflags(write=False)
  return out


def generate(num_permutations: int = 100, seed: int = 0, num_tiles: int = 9) -> np.ndarray:
  """The greedy maximal-average-Hamming permutation set.

  Returns:
    [num_permutations, num_tiles] int32 (read-only); row c is the tile order of class c:
    slot i of the puzzle shows tile `perm[i]` (tiles numbered row-major).
  """
  return _generate(int(num_permutations), int(seed), int(num_tiles))


def hamming_matrix(perms: np.ndarray) -> np.ndarray:
  """[N, N] pairwise Hamming distances (number of positions that differ)."""
  perms = np.asarray(perms)
  return np.sum(perms[:, None, :] != perms[None, :, :], axis=-1)


def min_hamming(perms: np.ndarray) -> int:
  """Minimum Hamming distance over distinct pairs of the set."""
  d = hamming_matrix(perms).astype(np.int64)
  np.fill_diagonal(d, np.iinfo(np.int64).max)
  return int(d.min())


def fingerprint(perms: np.ndarray) -> str:
  """sha256 (first 16 hex digits) of the set's int32 bytes: identifies it in run records."""
  return hashlib.sha256(np.ascontiguousarray(perms, np.int32).tobytes()).hexdigest()[:16]
