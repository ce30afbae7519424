"""Vision Transformer (ViT) encoder.

Variants (dim, depth, heads): Tiny (192, 12, 3), Small (384, 12, 6), Base (768, 12, 12),
Large (1024, 24, 16), Huge (1280, 32, 16), giant (1536, 40, 24: DINOv2's ViT-g width, depth
and heads with the plain 4x MLP, 1.1B parameters); any ``patch_size``; ``mlp_dim = mlp_ratio * dim``
(4 by default). Pre-norm blocks, LayerNorm eps 1e-6, exact (erf) GELU by default.

Patch embedding is a dense layer on flattened non-overlapping patches (reshape + matmul; the
same maths as a stride-p conv, faster on CPU). Its ``kernel`` is stored conv-shaped
``[p, p, 3, dim]`` so conv checkpoints load as is. A learned CLS token is prepended; learned
position embeddings (normal, std 0.02) are added to the patch tokens. The CLS token has no
separate position embedding: ``cls + pos[0]`` of the usual formulation is a single free vector,
so that is the same function class with one fewer redundant parameter vector (load a
checkpoint's ``cls + pos[0]`` into ``cls_token``). If the input's patch grid differs from the
grid the position embedding was created for, the embedding is resized bicubically without
antialiasing, as DINO's ``interpolate_pos_encoding`` does (PyTorch's bicubic: a = -0.75, half-pixel
centres; e.g. DINO's small local crops).

Options from BEiT: ``layer_scale`` (> 0: each residual branch is multiplied by a learned
per-channel vector initialised to that value, ``block{i}/ls1`` and ``ls2``; BEiT 0.1) and
``rel_pos_bias`` (one relative position bias, a learned scalar per head for every 2-D offset
between patches, shared by all blocks: ``rel_pos_bias`` [(2gh-1)(2gw-1)+3, heads], zeros at init).

Attention is written with einsums (no fused kernel). Every token-wise matmul (qkv, proj, the
MLP) runs on the flattened [B*T, D] matrix: XLA:CPU runs a 3-D [B, T, D] @ [D, F] product
nearly 2x slower than the same 2-D one (ViT-Tiny block forward+backward 202 -> 161 ms).

``__call__(x, train, mask=None, num_keep=None, return_attention=False, token_mask=None,
mask_embedding=None, return_blocks=False)``; ``train=True`` applies stochastic depth
(``drop_path_rate``, linear in depth; needs a ``"dropout"`` rng):

- ``mask``: optional ``[B, N]`` bool, True = drop the patch; every image must keep the same
  number K of patches (static: give ``num_keep=K`` when ``mask`` is traced under jit, otherwise
  it is read from the concrete mask). Or ``[B, K]`` int array of kept patch indices
  (``ids_keep``). Kept tokens are gathered (in increasing index order for a bool mask), so the
  transformer runs on K+1 tokens -- the MAE encoder.
- ``token_mask``: ``[B, N]`` bool, True = replace that patch's embedding by a mask embedding
  before the position embedding; the transformer still sees all N + 1 tokens (BEiT, data2vec,
  iBOT / DINOv2's masked student). The embedding is ``mask_embedding`` ([1, 1, D], owned by the
  caller: BEiT's and data2vec's ``params["mask_token"]``) or, when not given, the ViT's own
  learned ``mask_token`` (built with ``mask_token=True``; zeros at init, as DINOv2). The one
  forward, so drop-path, dtype and remat apply to masked inputs as to any other.
- ``return_blocks``: also return ``block_outputs``, the list of every block's output (the
  residual stream, before the final norm) [B, T, D] in float32 (data2vec's targets).
- ``return_attention``: also return the last block's attention weights under ``"attention"``
  ``[B, heads, T, T]`` (T = tokens incl. CLS), for DINO attention maps.

Outputs: ``pre_logits`` [B, D] (CLS after the final norm, or the mean of patch tokens with
``pool="mean"``), ``tokens`` [B, T, D] (all tokens after the final norm), ``patch_tokens``
[B, T-1, D], ``ids_keep`` [B, K] when masked, ``logits`` if ``num_classes > 0``.

Parameter names: ``patch_embed/{kernel,bias}``, ``cls_token``, ``pos_embed``,
``block{i}/{norm1,attn/{qkv,proj},norm2,mlp/{fc1,fc2}}``, ``norm``, ``head``.

``gelu_approximate=True`` switches to the tanh GELU approximation: slightly faster, but
*different maths* (not the exact GELU used by the reference ViT / PyTorch's default).

``dtype="bfloat16"``: bf16 compute with float32 parameters, LayerNorm statistics, softmax and
outputs; ``remat="block"|"dots"``: rematerialise each block (see :mod:`sslx.models.precision`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sslx.models import precision
from sslx.models.registry import register_model

_DENSE_INIT = nn.initializers.xavier_uniform()


def patchify(images, patch_size: int):
  """``[B, H, W, C]`` -> ``[B, (H/p)*(W/p), p*p*C]`` (row-major patches, (py, px, c) inside)."""
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"image size {(h, w)} is not divisible by patch size {p}")
  x = images.reshape(b, h // p, p, w // p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches, patch_size: int, grid: tuple, channels: int = 3):
  """Inverse of :func:`patchify` for a ``(gh, gw)`` grid."""
  b = patches.shape[0]
  gh, gw = grid
  p = patch_size
  x = patches.reshape(b, gh, gw, p, p, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, gh * p, gw * p, channels)


def gelu(x, approximate: bool = False):
  """GELU. Exact form ``0.5 * x * (1 + erf(x / sqrt(2)))`` -- PyTorch's formula. (``jax.nn.gelu``
  writes the exact form with ``erfc``, which XLA:CPU evaluates several times slower than
  ``erf``; the two agree to float32 rounding.) ``approximate=True``: the tanh approximation,
  a different function (max abs difference ~1e-3)."""
  if approximate:
    return jax.nn.gelu(x, approximate=True)
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1.0 / np.sqrt(2.0))))


def cubic_weights(t, a: float = -0.75):
  """The 4 taps' weights of the cubic convolution kernel (Keys 1981) for a sample at
  fractional offset ``t`` in [0, 1) past its left neighbour: taps at -1, 0, 1, 2.
  ``a=-0.75`` is PyTorch's (and OpenCV's) bicubic; ``jax.image`` uses Keys' ``a=-0.5``."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] matrix of bicubic interpolation without antialiasing, as
  ``torch.nn.functional.interpolate(size=n_out, mode="bicubic", align_corners=False)``:
  half-pixel centres (source x = (i + 0.5)·n_in/n_out − 0.5), a = −0.75, edge taps clamped."""
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  left = np.floor(src).astype(np.int64)
  w = cubic_weights(src - left)  # [n_out, 4]
  m = np.zeros((n_out, n_in))
  for k in range(4):
    np.add.at(m, (np.arange(n_out), np.clip(left - 1 + k, 0, n_in - 1)), w[:, k])
  return m.astype(np.float32)


def resize_pos_embed(pos, grid):
  """[g0, g0, D] position embedding resampled to ``grid`` = (gh, gw) by separable bicubic
  interpolation without antialiasing (DINO's ``interpolate_pos_encoding``, PyTorch's bicubic).
  ``jax.image.resize`` would low-pass filter (antialias) when shrinking, which DINO does not."""
  rows = jnp.asarray(bicubic_matrix(pos.shape[0], grid[0]))
  cols = jnp.asarray(bicubic_matrix(pos.shape[1], grid[1]))
  return jnp.einsum("ai,bj,ijd->abd", rows, cols, pos.astype(jnp.float32))


def pos_embed_for_images(params, image_hw: tuple[int, int]):
  """`params` (any tree holding ViTs) with each ViT's learned position embedding resampled
  once to the patch grid of `image_hw` images, where it was stored for another grid (the
  training crop's): fine-tuning at a new resolution then trains an embedding of the new grid,
  as timm and DeiT do, instead of resampling the old one in every step. Everything else is
  returned as it is."""
  if not isinstance(params, dict):
    return params
  out = {k: pos_embed_for_images(v, image_hw) for k, v in params.items()}
  if "pos_embed" in out and isinstance(out.get("patch_embed"), dict):
    p = out["patch_embed"]["kernel"].shape[0]
    grid = (image_hw[0] // p, image_hw[1] // p)
    pos = out["pos_embed"]
    g0 = int(round(np.sqrt(pos.shape[1])))
    if pos.shape[1] != grid[0] * grid[1] and g0 * g0 == pos.shape[1]:
      d = pos.shape[-1]
      resized = resize_pos_embed(pos.reshape(g0, g0, d), grid)
      out["pos_embed"] = resized.reshape(1, grid[0] * grid[1], d).astype(pos.dtype)
  return out


def relative_position_index(grid) -> np.ndarray:
  """[N+1, N+1] int index into BEiT's relative position bias table for a (gh, gw) patch grid
  with CLS first: patch pairs by their 2-D offset (dy, dx) -> (dy + gh − 1)·(2gw − 1) +
  dx + gw − 1; then CLS->patch, patch->CLS, CLS->CLS at the three last entries."""
  gh, gw = grid
  yy, xx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  y, x = yy.reshape(-1), xx.reshape(-1)
  dy = y[:, None] - y[None, :] + gh - 1
  dx = x[:, None] - x[None, :] + gw - 1
  size = (2 * gh - 1) * (2 * gw - 1) + 3
  index = np.zeros((gh * gw + 1,) * 2, np.int32)
  index[1:, 1:] = dy * (2 * gw - 1) + dx
  index[0, :] = size - 3
  index[:, 0] = size - 2
  index[0, 0] = size - 1
  return index


class PatchEmbed(nn.Module):
  dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    c = x.shape[-1]
    # conv-shaped kernel, xavier-uniform over the flattened (p*p*c, dim) matrix (MAE/timm)
    kernel = self.param("kernel", _patch_init, (p, p, c, self.dim))
    bias = self.param("bias", nn.initializers.zeros, (self.dim,))
    tokens = patchify(x, p).astype(self.dtype)
    b, n, _ = tokens.shape
    out = tokens.reshape(b * n, p * p * c) @ kernel.reshape(p * p * c, self.dim).astype(
      self.dtype
    ) + bias.astype(self.dtype)
    return out.reshape(b, n, self.dim)


class FlatDense(nn.Dense):
  """``nn.Dense`` (same parameters) that multiplies the input flattened to a 2-D matrix:
  XLA:CPU runs a 3-D ``[B, T, D] @ [D, F]`` product nearly 2x slower than the same 2-D one.
  Use it for token-wise layers."""

  def __call__(self, x):
    lead = x.shape[:-1]
    return super().__call__(x.reshape(-1, x.shape[-1])).reshape(lead + (self.features,))


def _patch_init(key, shape, dtype=jnp.float32):
  p, q, c, d = shape
  return _DENSE_INIT(key, (p * q * c, d), dtype).reshape(shape)


class _DenseParams(nn.Module):
  """The ``kernel [in, out]`` / ``bias [out]`` of a Dense layer, returned unapplied so the
  caller can contract them in the layout it needs (names match ``nn.Dense``)."""

  features: int

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", _DENSE_INIT, (in_features, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return kernel, bias


def _scores(q, k):
  return jnp.einsum("bqhe,bkhe->bhqk", q, k, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _scores_low_precision(q, k):
  return _scores(q, k)


def _scores_fwd(q, k):
  return _scores(q, k), (q, k)


def _scores_bwd(res, g):
  # The float32 cotangent of the logits goes back to the operands' dtype, so the two
  # backward matmuls run in bf16 as well (autodiff would upcast them to float32).
  q, k = res
  g = g.astype(q.dtype)
  dq = jnp.einsum("bhqk,bkhe->bqhe", g, k, preferred_element_type=jnp.float32)
  dk = jnp.einsum("bhqk,bqhe->bkhe", g, q, preferred_element_type=jnp.float32)
  return dq.astype(q.dtype), dk.astype(k.dtype)


_scores_low_precision.defvjp(_scores_fwd, _scores_bwd)


def attention_scores(q, k):
  """``[B, Q, h, e] x [B, K, h, e] -> [B, h, Q, K]`` float32 attention logits. With bf16
  ``q, k`` the products accumulate in float32 and the logits are not rounded to bf16 before
  the softmax; the backward matmuls take bf16 operands."""
  if q.dtype == jnp.float32:
    return _scores(q, k)
  return _scores_low_precision(q, k)


class Attention(nn.Module):
  """Multi-head self-attention written with einsums over q, k, v as the qkv matmul wrote
  them (``[B, T, 3, heads, head_dim]``), leaving each attention matmul's layout to XLA."""

  dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attn_bias=None):
    """x [B, T, D]; attn_bias: optional additive attention-logit bias [B or 1, heads, T, T]."""
    b, t, d = x.shape
    h = self.num_heads
    hd = d // h
    kernel, bias = _DenseParams(3 * d, name="qkv")(d)
    # Token-wise matmuls on [B*T, D] matrices: XLA:CPU runs a 3-D [B, T, D] @ [D, F]
    # dot_general nearly 2x slower than the same product on the flattened 2-D matrix.
    x = x.astype(self.dtype).reshape(b * t, d)
    qkv = x @ kernel.astype(self.dtype) + bias.astype(self.dtype)
    # [B, T, 3, h, hd] as the matmul wrote it; the einsums leave the layout of each
    # attention matmul to XLA (an explicit transpose to [3, B, h, T, hd] cost ~12%).
    qkv = qkv.reshape(b, t, 3, h, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Logits accumulate and come out in float32 (bf16 operands): rounding them to bf16 before
    # the softmax would cost ~3 significant digits exactly where exp() magnifies errors.
    logits = attention_scores(q * jnp.asarray(hd**-0.5, self.dtype), k)
    if attn_bias is not None:
      logits = logits + attn_bias.astype(jnp.float32)
    attn = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhe->bqhe", attn.astype(self.dtype), v).reshape(b * t, d)
    proj = nn.Dense(d, kernel_init=_DENSE_INIT, dtype=self.dtype, name="proj")(out)
    return proj.reshape(b, t, d), attn


class Mlp(nn.Module):
  hidden: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = FlatDense(self.hidden, kernel_init=_DENSE_INIT, dtype=self.dtype, name="fc1")(x)
    x = gelu(x, self.gelu_approximate)
    return FlatDense(d, kernel_init=_DENSE_INIT, dtype=self.dtype, name="fc2")(x)


class Block(nn.Module):
  dim: int
  num_heads: int
  mlp_dim: int
  gelu_approximate: bool = False
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  layer_scale: float = 0.0  # > 0: per-channel residual-branch scales ls1, ls2 (CaiT / BEiT)

  @nn.compact
  def __call__(self, x, train: bool = False, attn_bias=None):
    y, attn = Attention(self.dim, self.num_heads, self.dtype, name="attn")(
      nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x), attn_bias
    )
    x = x + self._drop_path(self._scale(y, "ls1"), train)
    y = Mlp(self.mlp_dim, self.gelu_approximate, self.dtype, name="mlp")(
      nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
    )
    return x + self._drop_path(self._scale(y, "ls2"), train), attn

  def _scale(self, y, name):
    if not self.layer_scale:
      return y
    gamma = self.param(name, nn.initializers.constant(self.layer_scale), (self.dim,))
    return y * gamma.astype(y.dtype)

  def _drop_path(self, y, train):
    if not train or self.drop_path == 0.0:
      return y
    keep = 1.0 - self.drop_path
    rng = self.make_rng("dropout")
    m = jax.random.bernoulli(rng, keep, (y.shape[0],) + (1,) * (y.ndim - 1))
    return y * m / keep


POS_EMBED_INITS = ("normal", "sincos")


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
  """[gh·gw, dim] fixed 2-D sine-cosine position embedding, as MAE's `get_2d_sincos_pos_embed`
  (its patch rows; the CLS token gets none): the first half of the channels encodes the
  column, the second half the row, each as [sin, cos] of ω_k·pos with ω_k = 1/10000^(k/(D/4))."""
  if dim % 4:
    raise ValueError(f"sin-cos position embedding needs dim % 4 == 0, got {dim}")
  gh, gw = grid
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

  def one(pos):
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  return np.concatenate([one(cols), one(rows)], axis=1).astype(np.float32)


class ViT(nn.Module):
  """ViT encoder; see the module docstring."""

  patch_size: int = 16
  dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  gelu_approximate: bool = False
  drop_path_rate: float = 0.0
  pool: str = "cls"  # "cls" | "mean"
  num_classes: int = 0
  dtype: Any = "float32"  # compute dtype; params stay float32 (see models/precision.py)
  remat: str = "none"  # "none" | "block" | "dots" (see models/precision.py)
  mask_token: bool = False  # a learned [MASK] embedding for `token_mask` (iBOT / DINOv2)
  layer_scale: float = 0.0  # > 0: layer-scale init value (BEiT 0.1); 0 = no layer scale
  rel_pos_bias: bool = False  # one relative position bias shared by all blocks (BEiT)
  # "normal": learned, N(0, 0.02) at init; "sincos": initialised with the fixed 2-D sin-cos
  # table (`sincos_pos_embed_2d`; MAE keeps it fixed by giving it no updates)
  pos_embed_init: str = "normal"

  @nn.compact
  def __call__(
    self,
    x,
    train: bool = True,
    mask=None,
    num_keep: int | None = None,
    return_attention: bool = False,
    token_mask=None,
    mask_embedding=None,
    return_blocks: bool = False,
  ):
    if self.dim % self.num_heads:
      raise ValueError(f"dim {self.dim} not divisible by num_heads {self.num_heads}")
    if self.pool not in ("cls", "mean"):
      raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
    dtype = precision.compute_dtype(self.dtype)
    block_cls = precision.maybe_remat(Block, self.remat, static_argnums=(2,))
    x = jnp.asarray(x, jnp.float32)
    b, hh, ww, _ = x.shape
    p = self.patch_size
    grid = (hh // p, ww // p)
    tokens = PatchEmbed(self.dim, p, dtype, name="patch_embed")(x)  # [B, N, D]
    mask_emb = None
    if self.mask_token:
      # zeros at init, as DINOv2; replaces masked patch embeddings before the positions
      mask_emb = self.param("mask_token", nn.initializers.zeros, (1, 1, self.dim))
    if mask_embedding is not None:
      mask_emb = jnp.reshape(mask_embedding, (1, 1, self.dim))
    if token_mask is not None:
      if mask_emb is None:
        raise ValueError(
          "token_mask needs a mask embedding: build the ViT with mask_token=True or pass "
          "mask_embedding=[1, 1, dim]"
        )
      if token_mask.shape != tokens.shape[:2]:
        raise ValueError(
          f"token_mask has shape {token_mask.shape}, the image has {tokens.shape[:2]} patches"
        )
      tokens = jnp.where(token_mask[..., None], mask_emb.astype(dtype), tokens)
    tokens = tokens + self._pos_embed(grid).astype(dtype)
    out = {}
    keep = None
    if mask is not None:
      ids_keep = self._ids_keep(mask, num_keep, tokens.shape[1])
      tokens = jnp.take_along_axis(tokens, ids_keep[:, :, None], axis=1)
      out["ids_keep"] = ids_keep
      keep = ids_keep
    cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.dim))
    tokens = jnp.concatenate(
      [jnp.broadcast_to(cls.astype(dtype), (b, 1, self.dim)), tokens], axis=1
    )
    attn_bias = self._rel_pos_bias(grid, keep) if self.rel_pos_bias else None
    mlp_dim = int(self.mlp_ratio * self.dim)
    attn = None
    blocks = []
    for i in range(self.depth):
      dp = self.drop_path_rate * i / max(self.depth - 1, 1)
      tokens, attn = block_cls(
        self.dim,
        self.num_heads,
        mlp_dim,
        self.gelu_approximate,
        dp,
        dtype,
        self.layer_scale,
        name=f"block{i}",
      )(tokens, train, attn_bias)
      if return_blocks:
        blocks.append(tokens.astype(jnp.float32))
    # the final norm's output in float32: heads, losses and evaluation see float32
    tokens = nn.LayerNorm(epsilon=1e-6, name="norm")(tokens.astype(jnp.float32))
    out["tokens"] = tokens
    out["patch_tokens"] = tokens[:, 1:]
    out["pre_logits"] = tokens[:, 0] if self.pool == "cls" else jnp.mean(tokens[:, 1:], 1)
    if return_attention:
      out["attention"] = attn.astype(jnp.float32)
    if return_blocks:
      out["block_outputs"] = blocks
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, name="head")(out["pre_logits"])
    return out

  def _pos_embed(self, grid):
    n = grid[0] * grid[1]
    if self.has_variable("params", "pos_embed"):
      stored = self.get_variable("params", "pos_embed").shape
    else:
      stored = (1, n, self.dim)
    if self.pos_embed_init == "sincos":
      # runs only when the parameter is created, i.e. at this grid (stored is (1, n, dim))
      init = lambda key, shape: jnp.asarray(sincos_pos_embed_2d(self.dim, grid))[None]  # noqa: E731
    else:
      init = nn.initializers.normal(0.02)
    pos = self.param("pos_embed", init, stored)
    if stored[1] == n:
      return pos
    g0 = int(round(np.sqrt(stored[1])))
    if g0 * g0 != stored[1]:
      raise ValueError(
        f"cannot resize a non-square position embedding of {stored[1]} tokens to grid {grid}"
      )
    return resize_pos_embed(pos.reshape(g0, g0, self.dim), grid).reshape(1, n, self.dim)

  def _rel_pos_bias(self, grid, keep):
    """[1 or B, heads, T, T] relative position bias (BEiT §2.5, shared by all blocks): one
    learned scalar per head for every 2-D offset between patches, plus three for CLS->patch,
    patch->CLS and CLS->CLS; zeros at init. With dropped tokens (`keep` [B, K]) the rows and
    columns of the kept tokens are gathered."""
    gh, gw = grid
    size = (2 * gh - 1) * (2 * gw - 1) + 3
    if self.has_variable("params", "rel_pos_bias"):
      stored = self.get_variable("params", "rel_pos_bias").shape[0]
      if stored != size:
        raise ValueError(
          f"the relative position bias was created for another patch grid ({stored} "
          f"offsets, grid {grid} needs {size}): resize it before changing the input size"
        )
    table = self.param("rel_pos_bias", nn.initializers.zeros, (size, self.num_heads))
    index = jnp.asarray(relative_position_index(grid))  # [N+1, N+1]
    if keep is not None:
      ids = jnp.concatenate([jnp.zeros((keep.shape[0], 1), keep.dtype), keep + 1], axis=1)
      index = index[ids[:, :, None], ids[:, None, :]]  # [B, K+1, K+1]
    else:
      index = index[None]
    return jnp.moveaxis(table[index], -1, 1)  # [1 or B, heads, T, T]

  @staticmethod
  def _ids_keep(mask, num_keep, n):
    if not isinstance(mask, jax.Array):
      mask = np.asarray(mask)
    if jnp.issubdtype(mask.dtype, jnp.integer):
      return mask.astype(jnp.int32)
    if mask.dtype != jnp.bool_:
      raise TypeError(f"mask must be bool [B, N] or int ids_keep [B, K], got {mask.dtype}")
    if mask.shape[1] != n:
      raise ValueError(f"mask has {mask.shape[1]} tokens, the image has {n} patches")
    if num_keep is None:
      try:
        counts = np.asarray(~mask).sum(axis=1)
      except jax.errors.TracerArrayConversionError:
        raise ValueError(
          "mask is traced: pass num_keep (kept patches per image, static) or ids_keep instead"
        ) from None
      if not (counts == counts[0]).all():
        raise ValueError(
          f"every image must keep the same number of patches, got {sorted(set(counts.tolist()))}"
        )
      num_keep = int(counts[0])
    # stable argsort: kept (False) first, each group in increasing index order
    return jnp.argsort(mask, axis=1, stable=True)[:, :num_keep].astype(jnp.int32)


_VARIANTS = {
  "vit_tiny": (192, 12, 3),
  "vit_small": (384, 12, 6),
  "vit_base": (768, 12, 12),
  "vit_large": (1024, 24, 16),
  "vit_huge": (1280, 32, 16),
  # ViT-g as in DINOv2 (width 1536, depth 40, 24 heads; here with the plain 4x MLP): 1.1B
  "vit_giant": (1536, 40, 24),
}


def _factory(name):
  d0, depth0, heads0 = _VARIANTS[name]

  def make(
    patch_size: int = 16,
    dim: int = d0,
    depth: int = depth0,
    num_heads: int = heads0,
    mlp_ratio: float = 4.0,
    gelu_approximate: bool = False,
    drop_path_rate: float = 0.0,
    pool: str = "cls",
    num_classes: int = 0,
    dtype: str = "float32",
    remat: str = "none",
    layer_scale: float = 0.0,
    rel_pos_bias: bool = False,
    pos_embed_init: str = "normal",
  ):
    precision.compute_dtype(dtype)
    if pos_embed_init not in POS_EMBED_INITS:
      raise ValueError(
        f"model.pos_embed_init={pos_embed_init!r}: expected one of {POS_EMBED_INITS}"
      )
    precision.check_remat(remat)
    return ViT(
      patch_size=patch_size,
      dim=dim,
      depth=depth,
      num_heads=num_heads,
      mlp_ratio=mlp_ratio,
      gelu_approximate=gelu_approximate,
      drop_path_rate=drop_path_rate,
      pool=pool,
      num_classes=num_classes,
      dtype=dtype,
      remat=remat,
      layer_scale=layer_scale,
      rel_pos_bias=rel_pos_bias,
      pos_embed_init=pos_embed_init,
    )

  make.__name__ = name
  return register_model(name)(make)


for _n in _VARIANTS:
  globals()[_n] = _factory(_n)
