"""Weighted k-NN classification on frozen features (Wu et al. 2018; DINO's recipe).

Cosine similarity, the k nearest training features vote for their class with weight
exp(s / T), T = 0.07. The test set is processed in chunks so memory stays bounded by
chunk × N_train similarities (50k × 1024 float32 ≈ 200 MB for full CIFAR-10).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslx import losses


@functools.partial(jax.jit, static_argnames=("k_max", "num_classes"))
def _chunk_votes(query, train_feats, train_labels, temperature, k_max: int, num_classes: int):
  sims = query @ train_feats.T  # [Q, N]
  top_sims, top_idx = jax.lax.top_k(sims, k_max)  # [Q, k] sorted descending
  weights = jnp.exp(top_sims / temperature)
  onehot = jax.nn.one_hot(train_labels[top_idx], num_classes)  # [Q, k, C]
  # Cumulative votes: row j holds the votes of the j+1 nearest neighbours, so every
  # k <= k_max is read off one top-k.
  return jnp.cumsum(weights[..., None] * onehot, axis=1)  # [Q, k, C]


def knn_accuracy(
  train_feats,
  train_labels,
  test_feats,
  test_labels,
  num_classes: int,
  ks=(20, 200),
  temperature: float = 0.07,
  chunk: int = 1024,
) -> dict:
  """Top-1 accuracy (%) of weighted k-NN for each k in `ks`.

  Args:
    train_feats: [N, D]; train_labels: [N] int; test_feats: [M, D]; test_labels: [M].
  Returns:
    {"knn@k": accuracy in percent}.
  """
  train = losses.l2_normalize(jnp.asarray(train_feats, jnp.float32))
  test = losses.l2_normalize(jnp.asarray(test_feats, jnp.float32))
  train_labels = jnp.asarray(train_labels, jnp.int32)
  ks = sorted(int(k) for k in ks)
  k_max = min(ks[-1], train.shape[0])
  correct = {k: 0 for k in ks}
  test_labels = np.asarray(test_labels)
  m = test.shape[0]
  for start in range(0, m, chunk):
    q = test[start : start + chunk]
    n_real = q.shape[0]
    if n_real < chunk and m > chunk:  # pad to a fixed shape: one compilation
      q = jnp.pad(q, ((0, chunk - n_real), (0, 0)))
    votes = np.asarray(_chunk_votes(q, train, train_labels, temperature, k_max, num_classes))
    for k in ks:
      pred = votes[:n_real, min(k, k_max) - 1].argmax(-1)
      correct[k] += int((pred == test_labels[start : start + n_real]).sum())
  return {f"knn@{k}": 100.0 * correct[k] / m for k in ks}


def run(cfg, feats) -> dict:
  return knn_accuracy(
    feats.train,
    feats.train_labels,
    feats.test,
    feats.test_labels,
    feats.num_classes,
    ks=tuple(cfg.get("ks", (20, 200))),
    temperature=cfg.get("temperature", 0.07),
    chunk=cfg.get("chunk", 1024),
  )
