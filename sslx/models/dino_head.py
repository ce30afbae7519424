"""The DINO projection head (Caron et al. 2021, §3.1 and Appendix; also iBOT and DINOv2).

    x [B, D] → Linear(hidden) → GELU → Linear(hidden) → GELU → Linear(bottleneck)   (nlayers=3)
             → L2-normalise → weight-normalised Linear(K, no bias) → [B, K] logits

The last layer is weight-normalised (Salimans & Kingma 2016): its weight is ``g · v / ||v||``
per output unit, with ``g`` fixed to 1 when ``norm_last_layer`` (DINO's default, which the
paper finds stabilises training); then every logit is the cosine between the bottleneck
feature and a unit-norm prototype, so logits lie in [-1, 1] before the temperature.

The MLP's Linear layers use a truncated normal init with std 0.02 and zero biases (the DINO
reference); ``v`` uses PyTorch's default Linear init U(±1/√bottleneck) (it is normalised, so
only its scale relative to its gradient matters). ``use_bn`` adds BatchNorm after the hidden
Linear layers (DINO's ResNet-50 setting).

Not registered as an encoder: methods import :class:`DINOHead` directly.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx.models import precision
from sslx.models.vit import FlatDense

_TRUNC_002 = nn.initializers.truncated_normal(stddev=0.02)
_TORCH_LINEAR = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class DINOHead(nn.Module):
  """DINO head; see the module docstring.

  Attributes:
    out_dim: K, the number of prototypes (65,536 in DINO).
    hidden_dim: width of the hidden layers (2048).
    bottleneck_dim: width before the L2 normalisation (256).
    nlayers: number of Linear layers before the bottleneck output (≥ 1; 3 in DINO).
    use_bn: BatchNorm after each hidden Linear.
    norm_last_layer: fix the weight-norm gain g to 1 (True) or learn it (False).
    dtype: compute dtype of the matmuls ("float32" | "bfloat16", the encoder's
      ``model.dtype``). The L2 normalisation, the weight norm and the logits are float32
      (the prototype matmul takes bf16 operands and accumulates in float32).
  """

  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  nlayers: int = 3
  use_bn: bool = False
  norm_last_layer: bool = True
  dtype: Any = "float32"

  @nn.compact
  def __call__(self, x, train: bool = True, freeze_last_layer=False):
    """Args:
      x: [B, D] features.
      train: BatchNorm mode (only with ``use_bn``).
      freeze_last_layer: bool (may be traced): when true the prototypes get no gradient
        (DINO freezes them during the first epoch, which it reports helps optimisation).

    Returns:
      [B, out_dim] logits (cosines in [-1, 1] when ``norm_last_layer``).
    """
    if self.nlayers < 1:
      raise ValueError(f"DINOHead.nlayers must be >= 1, got {self.nlayers}")
    dtype = precision.compute_dtype(self.dtype)
    x = jnp.asarray(x, jnp.float32)
    widths = [self.hidden_dim] * (self.nlayers - 1) + [self.bottleneck_dim]
    for i, w in enumerate(widths):
      x = FlatDense(
        w, kernel_init=_TRUNC_002, bias_init=nn.initializers.zeros, dtype=dtype, name=f"fc{i}"
      )(x)
      if i < len(widths) - 1:
        if self.use_bn:
          x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=f"bn{i}"
          )(x)
        x = nn.gelu(x, approximate=False)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))
    v = self.param("last_v", _TORCH_LINEAR, (self.bottleneck_dim, self.out_dim))
    frozen = jnp.asarray(freeze_last_layer)
    v = jnp.where(frozen, jax.lax.stop_gradient(v), v)
    # Weight norm over each prototype's input weights (columns of v).
    w = v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=0, keepdims=True), 1e-12))
    if not self.norm_last_layer:
      g = self.param("last_g", nn.initializers.ones, (self.out_dim,))
      w = w * jnp.where(frozen, jax.lax.stop_gradient(g), g)
    return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
