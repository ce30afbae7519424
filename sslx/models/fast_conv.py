"""2-D convolutions that run fast on XLA:CPU: ``conv2d`` (ResNet's) with a custom VJP for its
weight gradient, and ``small_map_conv2d`` (the demo CNN's and the CPC patch encoder's) for the
1x1 and 2x2 maps where XLA:CPU's convolution is slowest; see its docstring.

``conv2d(x, w, stride)`` is ``lax.conv_general_dilated`` (NHWC x HWIO, symmetric padding k//2,
no bias). Forward and input gradient are exactly what autodiff produces. Only the weight
gradient (dW) is formulated differently, for two reasons found by profiling a ResNet-18 train
step on a 2-core AVX-512 CPU (see ``sslx/models/resnet.py``):

1. dW is a convolution that contracts over batch and space. XLA:CPU hands it to Eigen as a
   convolution whose "batch" is the input channel and whose "features" are the images, so the
   activations ``x [N, H, W, C]`` must be transposed to ``[C, H, W, N]`` (channels leave the
   minor position) and ``dy`` to ``[Ho, Wo, N, Co]`` (cheap: channels stay minor).
2. XLA's fusion pass fuses the elementwise producers of ``x`` -- the BatchNorm/ReLU/residual
   chain, up to three BN layers deep along the identity shortcuts -- into that transpose. The
   fused loop then recomputes the chain while walking all of its inputs in transposed (cache-
   and TLB-hostile) order: 10-30x slower than transposing the stored ``x``; in the naive step
   those fusions are the largest cost, more than all convolutions together.

``optimization_barrier`` is stripped by XLA:CPU before fusion, so it does not help. What does:
the dW computation (both transposes + the convolution) is put in its own XLA computation, the
branch of a ``lax.cond`` whose predicate XLA cannot constant-fold. Operands of a conditional are
materialised buffers (``x`` is materialised anyway: the forward convolution reads it), so the
transposes read stored values with XLA's plain transpose loop and no recomputation. Both
branches are the same function, so the predicate (``w[0,0,0,0] == w[0,0,0,0]``, false only
for NaN) never changes the result; it exists only to keep XLA from inlining the region. (Under
``vmap`` the cond becomes a select that evaluates both branches: correct, twice the dW cost.)

Values and gradients equal ``lax.conv_general_dilated``'s to 1e-5 (tests/test_models.py).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")

# Benchmark/debug switch: False computes the same dW formulation inline (no region).
USE_REGION = True


def _pads(k: tuple[int, int]):
  return ((k[0] // 2, k[0] // 2), (k[1] // 2, k[1] // 2))


def _fwd_conv(x, w, stride: int):
  return lax.conv_general_dilated(x, w, (stride, stride), _pads(w.shape[:2]), dimension_numbers=_DN)


def _weight_grad(x, dy, kshape: tuple[int, int], stride: int):
  """dW[i, j, c, o] = sum_{n,h,w} xpad[n, s*h + i, s*w + j, c] * dy[n, h, w, o]."""
  kh, kw = kshape
  xt = jnp.transpose(x, (3, 1, 2, 0))  # [C, H, W, N]: images become the contracted features
  dyt = jnp.transpose(dy, (1, 2, 0, 3))  # [Ho, Wo, N, O]: dy acts as the (dilated) kernel
  out = lax.conv_general_dilated(
    xt, dyt, (1, 1), _pads(kshape), rhs_dilation=(stride, stride), dimension_numbers=_DN
  )  # [C, >=kh, >=kw, O]
  return jnp.transpose(out[:, :kh, :kw, :], (1, 2, 0, 3))


def _weight_grad_region(x, dy, w, stride):
  f = functools.partial(_weight_grad, kshape=tuple(w.shape[:2]), stride=stride)
  if not USE_REGION:
    return f(x, dy)
  # The probe comes from the (replicated) weight, so a batch-sharded x/dy costs no extra
  # communication; ``probe == probe`` is False only for NaN, and both branches are equal.
  probe = w[(0,) * w.ndim]
  return lax.cond(probe == probe, f, f, x, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x, w, stride: int = 1):
  """NHWC x HWIO convolution, symmetric padding k//2, given stride, no bias."""
  return _fwd_conv(x, w, stride)


def _conv2d_fwd(x, w, stride):
  return _fwd_conv(x, w, stride), (x, w)


def _conv2d_bwd(stride, res, dy):
  x, w = res
  _, vjp_x = jax.vjp(lambda a: _fwd_conv(a, w, stride), x)
  (dx,) = vjp_x(dy)
  dw = _weight_grad_region(x, dy, w, stride)
  return dx, dw.astype(w.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class FastConv(nn.Module):
  """Drop-in for ``nn.Conv(features, kernel_size, strides, padding=k//2, use_bias=False)``
  computed with :func:`conv2d`. Parameter: ``kernel`` ``[kh, kw, in, features]``."""

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32  # compute dtype; the kernel is stored in float32

  @nn.compact
  def __call__(self, x):
    w = self.param(
      "kernel",
      self.kernel_init,
      tuple(self.kernel_size) + (x.shape[-1], self.features),
      jnp.float32,
    )
    return conv2d(jnp.asarray(x, self.dtype), w.astype(self.dtype), self.strides)


def resolve_conv_impl(conv_impl: str) -> str:
  """``"auto"``: ``"fast"`` (this module's convolutions) on CPU, ``"xla"`` (``nn.Conv``) on
  accelerators, whose own convolutions are the fast ones."""
  if conv_impl not in ("auto", "xla", "fast"):
    raise ValueError(f"conv_impl must be 'auto', 'xla' or 'fast', got {conv_impl!r}")
  if conv_impl == "auto":
    return "fast" if jax.default_backend() == "cpu" else "xla"
  return conv_impl


def im2col_conv2d(x, w):
  """The convolution at stride 1 (odd kernel, padding k//2) as one matmul: the kh·kw shifted
  windows of the padded input side by side on the channel axis, [N·H·W, kh·kw·C], times the
  kernel read as [kh·kw·C, O]. Autodiff gives both gradients as matmuls too."""
  n, h, wd, c = x.shape
  kh, kw, _, o = w.shape
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f"im2col_conv2d needs an odd kernel (padding k//2 each side), got {kh}x{kw}")
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  cols = jnp.concatenate([xp[:, i : i + h, j : j + wd] for i in range(kh) for j in range(kw)], -1)
  return (cols.reshape(n * h * wd, kh * kw * c) @ w.reshape(kh * kw * c, o)).reshape(n, h, wd, o)


def small_map_conv2d(x, w):
  """A stride-1 convolution with padding k//2 (odd kernel), each shape computed the way that
  runs fastest on XLA:CPU (fwd+bwd of 3x3 convolutions with sslx's CPU flags):

  * a 1x1 map: only the kernel's centre tap meets the input, so one [N, C] x [C, O] matmul
    (128->256, 576 maps: 5.4 ms against 24.6 ms for ``lax.conv``);
  * a map with a side of 2: :func:`im2col_conv2d` (128->256 on 2x2, 256 maps: 8.7 ms against
    132 ms);
  * anything else: ``lax.conv`` itself. It is faster on larger maps (0.7-0.94x as a matmul)
    except for the 3-channel first layer (2.2-2.7x as a matmul, yet only 2% of the SimCLR
    demo's step), and it keeps runs on whole 32 px images bit-identical to ``nn.Conv``'s.

  The demo CNN meets the 1x1 and 2x2 maps on jigsaw tiles, DINO's 16 px local crops and
  CPC's 8 px patches. Values and gradients equal ``lax.conv``'s to float32 rounding.
  """
  n, h, wd, c = x.shape
  kh, kw, _, o = w.shape
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f"small_map_conv2d needs an odd kernel, got {kh}x{kw}")
  if h == 1 and wd == 1:
    return (x.reshape(n, c) @ w[kh // 2, kw // 2]).reshape(n, 1, 1, o)
  if min(h, wd) <= 2:
    return im2col_conv2d(x, w)
  return _fwd_conv(x, w, 1)


class SmallMapConv(nn.Module):
  """Drop-in for ``nn.Conv(features, kernel_size, padding="SAME")`` at stride 1 computed with
  :func:`small_map_conv2d`. Parameters as ``nn.Conv``'s: ``kernel`` ``[kh, kw, in, features]``
  and, with ``use_bias``, ``bias`` ``[features]``."""

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32  # compute dtype; parameters are stored in float32

  @nn.compact
  def __call__(self, x):
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    w = self.param("kernel", self.kernel_init, shape, jnp.float32)
    y = small_map_conv2d(jnp.asarray(x, self.dtype), w.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
        y.dtype
      )
    return y
