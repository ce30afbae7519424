"""Pieces several methods share: an encoder with a head, EMA teachers, collapse watches.

Method files import these from here, never from each other (one method per file).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import losses, models
from sslx.methods import base


class EncoderWithHead(nn.Module):
  """f(x) = head(encoder(x)["pre_logits"]): returns (features [B, F], head output [B, D]).
  The head is SimCLR's and MoCo's projector, VICReg's expander, a pretext task's classifier;
  `encode` is the representation evaluation uses (`base.Method.encode`'s default)."""

  encoder: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = True):
    features = self.encoder(x, train=train)["pre_logits"]
    return features, self.head(features, train=train)

  def encode(self, x, train: bool = False):
    return self.encoder(x, train=train)["pre_logits"]


def encoder_with_head(config, head: str = "projector", **head_kwargs) -> EncoderWithHead:
  """The encoder `config.model` names under an MLP head `config.method.<head>_hidden` wide
  with `<head>_dim` outputs (SimCLR's and MoCo's projector, VICReg's expander), computing in
  the encoder's `model.dtype`; `head_kwargs` set the rest of :class:`models.MLPHead`."""
  m = config.method
  mlp = models.MLPHead(
    hidden_dims=tuple(m[f"{head}_hidden"]),
    out_dim=int(m[f"{head}_dim"]),
    dtype=config.model.get("dtype", "float32"),
    **head_kwargs,
  )
  return EncoderWithHead(base.encoder_from_config(config), mlp)


def cosine_momentum(step, total_steps: int, base_momentum: float):
  """τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2 (BYOL §3.2; DINO §3.1): τ_base at k = 0,
  1 at k = K (k is clipped to [0, K])."""
  k = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(max(total_steps, 1)))
  return 1.0 - (1.0 - base_momentum) * (jnp.cos(math.pi * k / max(total_steps, 1)) + 1.0) / 2.0


def ema(target, online, momentum):
  """ξ ← m·ξ + (1 − m)·θ leaf by leaf (BYOL eq. 1; DINO §3.1); trees must match."""
  return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


def subtree(tree, keys):
  return {k: tree[k] for k in keys if k in tree}


def embedding_std_metrics(z: jax.Array) -> dict:
  """Collapse watch (BYOL/SimSiam analysis): the mean per-dimension std of L2-normalised
  embeddings z [B, D] is ≈ 1/√D when they are spread over the sphere and 0 when they
  collapse to a point. Returns it raw and × √D (≈ 1 healthy, → 0 at collapse)."""
  std = jnp.mean(jnp.std(losses.l2_normalize(z.astype(jnp.float32)), axis=0))
  return {"embedding_std": std, "embedding_std_rel": std * math.sqrt(z.shape[-1])}


def std_warning(metrics: dict, threshold: float) -> str | None:
  rel = metrics.get("embedding_std_rel")
  if rel is not None and rel < threshold:
    return (
      f"representation collapse? the std of the L2-normalised embeddings is "
      f"{rel:.3g}/sqrt(dim) (healthy ≈ 1/sqrt(dim), 0 when all images map to one point)"
    )
  return None
