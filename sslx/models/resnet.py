"""ResNet-18/34 (BasicBlock) and ResNet-50 (Bottleneck, stride on the 3x3 conv: "v1.5").

``stem="imagenet"``: 7x7/2 conv + BN + ReLU + 3x3/2 max-pool (a 224 input reaches stage 1 at
56x56, i.e. downsampled x4). ``stem="cifar"``: one 3x3/1 conv + BN + ReLU, no max-pool (a 32
input stays 32x32 through stage 1; stages 2-4 halve it).

Widths: ``widths=(64, 128, 256, 512)`` by default, or scaled by ``width`` (a multiplier), or
given explicitly (the CPU demo uses e.g. ``(16, 32, 64, 128)``). ResNet-50's stage outputs are
4x the given widths.

Outputs (dict): ``pre_logits`` [B, C] (global average pool of the last stage), ``feature_map``
[B, h, w, C] (last stage), and ``logits`` if ``num_classes > 0``.

BatchNorm is ``nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)`` with no
``axis_name``. Under ``jax.jit`` with the batch sharded across devices, the mean/variance
reductions are ordinary array reductions over the (global) batch axis, so XLA computes them over
the global batch and inserts the cross-device collectives itself -- exactly the global BN that
SimCLR needs, with no ``pmap``-style ``axis_name``. (Under ``pmap``/``shard_map`` the statistics
would be per-device.)

``conv_impl``: ``"xla"`` uses ``flax.linen.Conv`` (``lax.conv_general_dilated``); ``"fast"``
uses :mod:`sslx.models.fast_conv`, whose custom VJP computes the weight gradient in a form that
XLA:CPU runs much faster (values and gradients equal ``lax.conv`` to 1e-5, see the tests);
``"auto"`` (default) picks ``"fast"`` when the default backend is CPU and ``"xla"`` otherwise.
Parameters are named and shaped identically in both cases (``kernel`` ``[kh, kw, in, out]``).

``dtype="bfloat16"``: bf16 convolutions with float32 parameters, BN statistics and outputs;
``remat="block"|"dots"``: rematerialise each residual block (see :mod:`sslx.models.precision`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sslx.models import precision
from sslx.models.fast_conv import FastConv, resolve_conv_impl
from sslx.models.registry import register_model

ModuleDef = Any

_KAIMING = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's init


class ResidualBlock(nn.Module):
  """What BasicBlock and Bottleneck share: their fields and the end of the block."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  zero_init_last: bool = False

  def add_shortcut(self, x, y, out: int, last_norm: str):
    """relu(shortcut(x) + norm(y)) for the residual branch y with `out` channels (called from
    the compact `__call__`). The last norm's scale starts at zero with `zero_init_last` (each
    block starts as the identity); the shortcut is a 1 × 1 conv + norm where the width or
    resolution changes, else x itself."""
    y = self.norm(
      name=last_norm,
      scale_init=nn.initializers.zeros if self.zero_init_last else nn.initializers.ones,
    )(y)
    if x.shape[-1] != out or self.strides != 1:
      x = self.conv(out, (1, 1), self.strides, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class BasicBlock(ResidualBlock):
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), self.strides, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), 1, name="conv2")(y)
    return self.add_shortcut(x, y, self.features, "bn2")


class Bottleneck(ResidualBlock):
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.features * self.expansion
    y = self.conv(self.features, (1, 1), 1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), self.strides, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(out, (1, 1), 1, name="conv3")(y)
    return self.add_shortcut(x, y, out, "bn3")


def _make_conv(impl: str, dtype=jnp.float32):
  def conv(features, kernel_size, strides, name):
    if impl == "fast":
      return FastConv(
        features, tuple(kernel_size), strides, kernel_init=_KAIMING, dtype=dtype, name=name
      )
    k = tuple(kernel_size)
    return nn.Conv(
      features,
      k,
      (strides, strides),
      padding=[(k[0] // 2, k[0] // 2), (k[1] // 2, k[1] // 2)],
      use_bias=False,
      kernel_init=_KAIMING,
      dtype=dtype,
      name=name,
    )

  return conv


class ResNet(nn.Module):
  """ResNet encoder. See the module docstring for options and outputs."""

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"  # "basic" | "bottleneck"
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"  # "imagenet" | "cifar"
  zero_init_last_bn: bool = False
  conv_impl: str = "auto"  # "auto" | "xla" | "fast"
  num_classes: int = 0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = "float32"  # compute dtype; params stay float32 (see models/precision.py)
  remat: str = "none"  # "none" | "block" | "dots" (see models/precision.py)

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(
        f"widths {tuple(self.widths)} and stage_sizes "
        f"{tuple(self.stage_sizes)} must have the same length"
      )
    dtype = precision.compute_dtype(self.dtype)
    block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
    block_cls = precision.maybe_remat(block_cls, self.remat)
    conv = _make_conv(resolve_conv_impl(self.conv_impl), dtype)
    # BN statistics are reduced in float32 whatever `dtype` (flax's float32 reductions)
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=dtype,
    )
    x = jnp.asarray(x, jnp.float32)
    if self.stem == "imagenet":
      x = conv(self.widths[0], (7, 7), 2, name="stem_conv")(x)
    else:
      x = conv(self.widths[0], (3, 3), 1, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = block_cls(
          w,
          2 if (i > 0 and j == 0) else 1,
          conv=conv,
          norm=norm,
          zero_init_last=self.zero_init_last_bn,
          name=f"stage{i + 1}_block{j + 1}",
        )(x)
    x = x.astype(jnp.float32)
    out = {"feature_map": x, "pre_logits": jnp.mean(x, axis=(1, 2))}
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, name="head")(out["pre_logits"])
    return out


_DEFAULT_WIDTHS = (64, 128, 256, 512)


def _resnet(
  stage_sizes,
  block,
  *,
  stem="imagenet",
  width: float = 1.0,
  widths: Sequence[int] | None = None,
  zero_init_last_bn: bool = False,
  conv_impl: str = "auto",
  num_classes: int = 0,
  bn_momentum: float = 0.9,
  bn_epsilon: float = 1e-5,
  dtype: str = "float32",
  remat: str = "none",
):
  precision.compute_dtype(dtype)
  precision.check_remat(remat)
  if widths is None:
    widths = tuple(int(round(c * width)) for c in _DEFAULT_WIDTHS)
  elif width != 1.0:
    raise ValueError("give either widths or width, not both")
  return ResNet(
    stage_sizes=tuple(stage_sizes),
    block=block,
    widths=tuple(widths),
    stem=stem,
    zero_init_last_bn=zero_init_last_bn,
    conv_impl=conv_impl,
    num_classes=num_classes,
    bn_momentum=bn_momentum,
    bn_epsilon=bn_epsilon,
    dtype=dtype,
    remat=remat,
  )


def _factory(stage_sizes, block):
  """A registered constructor: `_resnet` with the stage layout bound (its keyword arguments
  are the model's config keys)."""
  return functools.partial(_resnet, stage_sizes, block)


resnet18 = register_model("resnet18")(_factory((2, 2, 2, 2), "basic"))
resnet34 = register_model("resnet34")(_factory((3, 4, 6, 3), "basic"))
resnet50 = register_model("resnet50")(_factory((3, 4, 6, 3), "bottleneck"))
