"""Contrastive losses written over the *global* batch.

No collective axis names appear here: under `jax.jit` with the batch sharded over a device
mesh, XLA inserts the all-gathers a global similarity matrix needs, so the sharded value
equals the single-device value (tests/test_sharding.py checks this).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Scales rows of `x` to unit L2 norm; `eps` guards the zero vector."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def info_nce(similarities: jax.Array, temperature: float) -> jax.Array:
  """InfoNCE (Oord et al. 2018, eq. 4) from precomputed similarities.

  Args:
    similarities: [B, 1 + K] cosine similarities of each query to its positive key
      (column 0) and to its K negatives (columns 1..K).
    temperature: softmax temperature τ.

  Returns:
    Scalar mean over B of −log softmax(s / τ)[0].
  """
  logits = similarities.astype(jnp.float32) / temperature
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])


def nt_xent(z: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """SimCLR's NT-Xent (Chen et al. 2020, eq. 1) over the global batch.

  Args:
    z: [2N, D] projections, image-major: rows 2i and 2i + 1 are the two views of image i
      (with the batch sharded, an anchor's positive lives on its own device).
    temperature: τ.

  Returns:
    (loss, accuracy): the mean over all 2N anchors of the cross-entropy that picks the other
    view among the 2N − 1 candidates (1 positive, 2(N − 1) negatives), and the fraction of
    anchors whose most similar candidate is their positive.
  """
  two_n = z.shape[0]
  z = l2_normalize(z.astype(jnp.float32))
  with jax.named_scope("loss_similarities"):  # float32 on purpose (named for HLO checks)
    logits = z @ z.T / temperature
  # An anchor is never its own candidate: mask the diagonal out of the softmax.
  logits = jnp.where(jnp.eye(two_n, dtype=bool), -jnp.inf, logits)
  positive = jnp.arange(two_n) ^ 1  # 2i <-> 2i + 1
  log_norm = jax.nn.logsumexp(logits, axis=-1)
  pos_logit = jnp.take_along_axis(logits, positive[:, None], axis=-1)[:, 0]
  loss = jnp.mean(log_norm - pos_logit)
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == positive)
  return loss, accuracy


def masked_mean(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """The mean of `values` over the entries `mask` keeps ([..., N] values, [N] or the same shape
  mask), over `axis` (None: all); 0 where it keeps none. Masked patches or tokens in the
  masked-modeling losses, readable rows in the protocols' losses."""
  w = jnp.broadcast_to(mask.astype(values.dtype), values.shape)
  return jnp.sum(values * w, axis=axis) / jnp.maximum(jnp.sum(w, axis=axis), 1.0)


def softmax_cross_entropy(
  logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy and accuracy of integer `labels` [B] under `logits` [B, C].

  `valid` [B] (bool) excludes rows from both means (e.g. unlabeled images, label −1).
  """
  logits = logits.astype(jnp.float32)
  safe = jnp.maximum(labels, 0)
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, safe[:, None], -1)[:, 0]
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  if valid is None:
    return jnp.mean(nll), jnp.mean(correct)
  w = valid.astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  return jnp.sum(nll * w) / denom, jnp.sum(correct * w) / denom
