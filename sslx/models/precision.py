"""Mixed precision and rematerialisation switches shared by the encoders.

``dtype`` (config ``model.dtype``): the *compute* dtype of an encoder. ``"float32"`` (default)
or ``"bfloat16"``. Parameters are always created and stored in float32 (the optimizer updates
float32 master weights); with ``"bfloat16"`` each layer casts its input and its parameters to
bfloat16 for the matmul / convolution, normalisation statistics and softmax are reduced in
float32, and the encoder's outputs are cast back to float32, so heads, losses and metrics stay
float32. This is the usual "bf16 compute, fp32 params and loss" recipe for TPUs and recent GPUs.

``remat`` (config ``model.remat``): rematerialisation per block (``jax.checkpoint`` through
``flax.linen.remat``). ``"none"`` (default) keeps every activation for the backward pass;
``"block"`` keeps only each block's input and recomputes the block in the backward pass (least
memory, about one extra forward); ``"dots"`` keeps the outputs of convolutions and of matmuls
that have no batch dimension in their contraction, and recomputes the cheap elementwise work
between them (normalisation, activations): jax's ``dots_with_no_batch_dims_saveable`` alone
sees no convolution, which made ``"dots"`` equal to ``"block"`` on a ResNet.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _matmuls_and_convolutions_saveable(prim, *avals, **params) -> bool:
  if prim is jax.lax.conv_general_dilated_p:
    return True
  return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *avals, **params)


_POLICIES = {
  "block": jax.checkpoint_policies.nothing_saveable,
  "dots": _matmuls_and_convolutions_saveable,
}
REMAT_CHOICES = ("none",) + tuple(_POLICIES)


def compute_dtype(name: Any):
  """`model.dtype` ("float32" | "bfloat16", or a jnp dtype) -> jnp dtype, or a clear error."""
  if isinstance(name, str):
    if name not in _DTYPES:
      raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]
  dt = jnp.dtype(name)
  if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"model.dtype must be float32 or bfloat16, got {dt}")
  return dt.type


def check_remat(remat: str) -> str:
  if remat not in REMAT_CHOICES:
    raise ValueError(f"model.remat must be one of {REMAT_CHOICES}, got {remat!r}")
  return remat


def maybe_remat(block_cls, remat: str, static_argnums=()):
  """`block_cls` wrapped in `nn.remat` with the policy named by `remat` (or as is)."""
  if check_remat(remat) == "none":
    return block_cls
  return nn.remat(block_cls, policy=_POLICIES[remat], static_argnums=static_argnums)
