"""2-D convolution with a custom VJP tuned for XLA:CPU.

Forward and input gradient are plain ``lax.conv_general_dilated``; only the weight gradient
differs from autodiff. See ``conv2d`` for the formulation.
"""
from __future__ import annotations

import functools
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
DW_VARIANT = "conv_t"


def _pads(k: Tuple[int, int]):
    return ((k[0] // 2, k[0] // 2), (k[1] // 2, k[1] // 2))


def _fwd_conv(x, w, stride):
    return lax.conv_general_dilated(x, w, (stride, stride), _pads(w.shape[:2]),
                                    dimension_numbers=_DN)


def _dw_conv_t(x, dy, kshape, stride):
    kh, kw = kshape
    (pt, pb), (pl, pr) = _pads(kshape)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if (pt or pl) else x
    xt = jnp.transpose(xp, (3, 1, 2, 0))          # [Ci, Hp, Wp, N]
    dyt = jnp.transpose(dy, (1, 2, 0, 3))         # [Ho, Wo, N, Co]
    out = lax.conv_general_dilated(xt, dyt, (1, 1), "VALID", rhs_dilation=(stride, stride),
                                   dimension_numbers=_DN)  # [Ci, >=kh, >=kw, Co]
    out = out[:, :kh, :kw, :]
    return jnp.transpose(out, (1, 2, 0, 3))


def _dw_matmul(x, dy, kshape, stride):
    kh, kw = kshape
    (pt, pb), (pl, pr) = _pads(kshape)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if (pt or pl) else x
    n, ho, wo, co = dy.shape
    rows = []
    for i in range(kh):
        cols = []
        for j in range(kw):
            xs = lax.slice(xp, (0, i, j, 0),
                           (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, xp.shape[3]),
                           (1, stride, stride, 1))
            cols.append(lax.dot_general(xs, dy, (((0, 1, 2), (0, 1, 2)), ((), ()))))
        rows.append(jnp.stack(cols))
    return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x, w, stride: int = 1):
    """NHWC x HWIO convolution, symmetric padding k//2, given stride (no bias)."""
    return _fwd_conv(x, w, stride)


def _conv2d_fwd(x, w, stride):
    return _fwd_conv(x, w, stride), (x, w)


def _conv2d_bwd(stride, res, dy):
    x, w = res
    _, vjp_x = jax.vjp(lambda x_: _fwd_conv(x_, w, stride), x)
    (dx,) = vjp_x(dy)
    kshape = w.shape[:2]
    if DW_VARIANT == "autodiff":
        _, vjp_w = jax.vjp(lambda w_: _fwd_conv(x, w_, stride), w)
        (dw,) = vjp_w(dy)
    elif DW_VARIANT == "matmul":
        dw = _dw_matmul(x, dy, kshape, stride)
    else:
        dw = _dw_conv_t(x, dy, kshape, stride)
    return dx, dw.astype(w.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class FastConv(nn.Module):
    """Drop-in for ``nn.Conv(features, kernel_size, strides, padding=k//2, use_bias=False)``
    using :func:`conv2d`. Parameter: ``kernel`` ``[kh, kw, in, features]``."""

    features: int
    kernel_size: Tuple[int, int] = (3, 3)
    strides: int = 1
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", self.kernel_init,
                       tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
        return conv2d(x, w, self.strides)
