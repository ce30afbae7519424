"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization
for Self-Supervised Learning").

Two views of each image go through the encoder and an *expander* MLP to embeddings
Z, Z' ∈ R^{n×d}. The loss (eq. 6) is

    ℓ = λ·s(Z, Z') + μ·[v(Z) + v(Z')]/2 + ν·[c(Z) + c(Z')]

with λ = μ = 25, ν = 1 and

  invariance  s(Z, Z') = mean over samples and dimensions of (z_i − z'_i)²            (eq. 5)
  variance    v(Z) = 1/d Σ_j max(0, γ − √(Var(z^j) + ε)),  γ = 1, ε = 1e-4            (eq. 1–2)
  covariance  c(Z) = 1/d Σ_{i≠j} [C(Z)]²_{ij},  C(Z) = 1/(n − 1) Σ_i (z_i − z̄)(z_i − z̄)ᵀ  (eq. 3–4)

Var is the unbiased variance. s is averaged over dimensions and the two variance terms are
averaged (the paper's reference implementation, with which λ = μ = 25, ν = 1 were tuned; the
paper's eq. 5–6 write a sum over dimensions and a sum of the two v terms). All statistics are
over the *global* batch: under jit with the batch sharded, the means and Zᵀ Z are global
reductions (no collective axis names here).

No EMA, no negatives, no stop-gradient: collapse is prevented by the variance term.
Evaluation uses the encoder's ``pre_logits`` (the representation, not the embedding).

Config (``config.method``):
  expander_hidden (8192, 8192), expander_dim 8192   the paper's 3-layer expander
  sim_coeff λ (25), std_coeff μ (25), cov_coeff ν (1), gamma γ (1), eps ε (1e-4)
  collapse_std (0.05, see BYOL)
Views: two global views from :class:`sslx.multicrop.MultiCrop` (the paper uses BYOL's
augmentations: blur p 1.0 / 0.1, solarize p 0 / 0.2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sslx import multicrop
from sslx.methods import base
from sslx.methods.common import (
  EncoderWithHead,
  embedding_std_metrics,
  encoder_with_head,
  std_warning,
)


def invariance(z1: jax.Array, z2: jax.Array) -> jax.Array:
  """s(Z, Z'): MSE over samples and dimensions. [n, d], [n, d] → scalar."""
  return jnp.mean(jnp.square(z1 - z2))


def variance(z: jax.Array, gamma: float = 1.0, eps: float = 1e-4) -> jax.Array:
  """v(Z) = mean_j max(0, γ − √(Var(z^j) + ε)), unbiased Var over the batch. [n, d] → scalar."""
  std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps)
  return jnp.mean(jax.nn.relu(gamma - std))


def covariance(z: jax.Array) -> jax.Array:
  """c(Z) = Σ_{i≠j} C_ij² / d with C the unbiased covariance over the batch. [n, d] → scalar."""
  n, d = z.shape
  zc = z - jnp.mean(z, axis=0, keepdims=True)
  cov = zc.T @ zc / (n - 1)
  off = cov - jnp.diag(jnp.diag(cov))
  return jnp.sum(jnp.square(off)) / d


def vicreg_loss(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, gamma=1.0, eps=1e-4):
  """Eq. 6 over the global batch. Returns (loss, {"invariance", "variance", "covariance"})."""
  z1 = z1.astype(jnp.float32)
  z2 = z2.astype(jnp.float32)
  s = invariance(z1, z2)
  v = (variance(z1, gamma, eps) + variance(z2, gamma, eps)) / 2.0
  c = covariance(z1) + covariance(z2)
  loss = sim_coeff * s + std_coeff * v + cov_coeff * c
  return loss, {"invariance": s, "variance": v, "covariance": c}


@dataclasses.dataclass(frozen=True)
class VICReg(base.Method):
  net: EncoderWithHead
  views: multicrop.MultiCrop
  preprocess: base.Preprocess
  sim_coeff: float  # the settings' values: DEFAULTS below
  std_coeff: float
  cov_coeff: float
  gamma: float
  eps: float
  collapse_std: float

  def init(self, rng, images) -> base.Variables:
    variables = base.init_net(self.net, self.preprocess, rng, images, self.views.global_size)
    return base.Variables(variables["params"], variables.get("batch_stats", {}), {})

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    x = self.preprocess(self.views(rng, images).global_crops)  # [B·2, S, S, 3] image-major
    # One forward pass over both views: BatchNorm statistics over all 2B views.
    (features, z), updates = self.net.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    pairs = multicrop.per_image(z, 2)  # [B, 2, d]: an image's views on its own device
    loss, terms = vicreg_loss(
      pairs[:, 0], pairs[:, 1], self.sim_coeff, self.std_coeff, self.cov_coeff, self.gamma, self.eps
    )
    metrics = {"loss": loss, **terms, **embedding_std_metrics(z)}
    features = multicrop.first_view(features, 2)
    return loss, base.LossAux(updates.get("batch_stats", {}), method_state, metrics, features)

  def collapse_warning(self, metrics: dict) -> str | None:
    return std_warning(metrics, self.collapse_std)


# The paper's settings (§4.1): a 3-layer 8192-wide expander, λ = μ = 25, ν = 1, γ = 1.
# fmt: off
DEFAULTS = dict(
  expander_hidden=(8192, 8192), expander_dim=8192, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0,
  gamma=1.0, eps=0.0001, collapse_std=0.05,
)
# fmt: on


def create(config, total_steps: int) -> VICReg:
  del total_steps  # no schedule inside VICReg's loss
  m = config.method
  views = multicrop.MultiCrop.from_config(config.augment, num_global=2)
  if views.num_local:
    raise ValueError("VICReg uses two views: set augment.num_local_crops=0")
  return VICReg(
    net=encoder_with_head(config, "expander"),
    views=views,
    preprocess=base.Preprocess.from_config(config.dataset),
    **base.read_settings(VICReg, m, "sim_coeff std_coeff cov_coeff gamma eps collapse_std"),
  )
