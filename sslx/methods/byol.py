"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning").

An *online* network (encoder f_θ, projector g_θ, predictor q_θ) predicts the projection that a
*target* network (encoder f_ξ, projector g_ξ) gives of another view of the same image. There
are no negatives; the target is an exponential moving average of the online weights (eq. 1):

    ξ ← τ·ξ + (1 − τ)·θ,    τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2     (§3.2)

so τ rises from τ_base (0.996) at step 0 to 1 at the last step K. The loss (eq. 2) is the
normalised MSE between the online prediction and the target projection,

    L_θ,ξ = ||q̄_θ(z_θ) − z̄'_ξ||² = 2 − 2·⟨q_θ(z_θ), z'_ξ⟩ / (||q_θ(z_θ)||·||z'_ξ||),

symmetrised over the two views (L + L̃, each averaged over the batch): loss ∈ [0, 8].

Layout:
  params        {"encoder", "projector", "predictor"}          (trained by the optimizer)
  batch_stats   the online network's BatchNorm statistics
  method_state  {"target": {"params": {"encoder", "projector"},
                            "batch_stats": {"encoder", "projector"}}}

The target runs in training mode (batch statistics, as in the paper's code) with its own
running statistics in ``method_state``; it receives no gradient (``stop_gradient`` on its
output, and the trainer differentiates only ``params``) and moves only by the EMA in
:meth:`BYOL.after_update`, which the trainer calls with the *updated* online params.

Both views go through each network in ONE forward pass, so BatchNorm statistics are taken over
all 2N views of the global batch (as SimCLR does here). Evaluation uses the online encoder's
``pre_logits`` (§3.3; ``eval_encoder="online"``, or "target" for the EMA encoder).

Views: :class:`sslx.multicrop.MultiCrop` with two global views and the paper's asymmetric
augmentation (Table 6: blur p = 1.0 / 0.1, solarize p = 0.0 / 0.2).

Config (``config.method``):
  projector_hidden: hidden widths of g (BYOL: (4096,))
  projector_dim:    output of g and q (256)
  predictor_hidden: hidden widths of q ((4096,))
  base_momentum:    τ_base (0.996 at batch 4096; 0.99 for small batches / short runs)
  collapse_std:     warn when the std of the L2-normalised projections, × √dim, falls below
                    this (1 for well-spread embeddings, 0 at collapse; default 0.05)
  eval_encoder:     "online" (the paper's evaluation) or "target"
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import losses, models, multicrop
from sslx.methods import base
from sslx.methods.common import cosine_momentum, ema, embedding_std_metrics, std_warning, subtree


class BYOLNet(nn.Module):
  encoder: nn.Module
  projector: nn.Module
  predictor: nn.Module

  def __call__(self, x, train: bool = True):
    """[B, S, S, 3] → (features [B, D], projection [B, P], prediction [B, P])."""
    features = self.encoder(x, train=train)["pre_logits"]
    z = self.projector(features, train=train)
    return features, z, self.predictor(z, train=train)

  def target(self, x, train: bool = True):
    """The target branch: encoder and projector only → [B, P]."""
    return self.projector(self.encoder(x, train=train)["pre_logits"], train=train)

  def encode(self, x, train: bool = False):
    return self.encoder(x, train=train)["pre_logits"]


def regression_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """BYOL eq. 2 per row: ||p̄ − z̄||² = 2 − 2·cos(p, z). [B, P], [B, P] → [B]."""
  p = losses.l2_normalize(prediction.astype(jnp.float32))
  z = losses.l2_normalize(target.astype(jnp.float32))
  return 2.0 - 2.0 * jnp.sum(p * z, axis=-1)


@dataclasses.dataclass(frozen=True)
class BYOL(base.Method):
  net: BYOLNet
  views: multicrop.MultiCrop
  preprocess: base.Preprocess
  base_momentum: float
  total_steps: int
  collapse_std: float = 0.05
  eval_encoder: str = "online"

  TARGET_KEYS = ("encoder", "projector")
  EVAL_ENCODERS = ("online", "target")

  def eval_variables(self, params, batch_stats, method_state):
    """The variables evaluation encodes with: the online network's (the paper's) or the
    target's (its encoder subtree replaces the online one)."""
    if self.eval_encoder == "target":
      target = method_state["target"]
      return dict(params, **target["params"]), dict(batch_stats, **target["batch_stats"])
    return params, batch_stats

  def init(self, rng, images) -> base.Variables:
    variables = base.init_net(self.net, self.preprocess, rng, images, self.views.global_size)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    target = {
      "params": copy(subtree(params, self.TARGET_KEYS)),
      "batch_stats": copy(subtree(batch_stats, self.TARGET_KEYS)),
    }
    return base.Variables(params, batch_stats, {"target": target})

  def momentum(self, step):
    return cosine_momentum(step, self.total_steps, self.base_momentum)

  def loss(self, params, batch_stats, method_state, images, rng, step):
    """Symmetrised BYOL loss on two views of `images` [B, H, W, 3] (uint8)."""
    x = self.preprocess(self.views(rng, images).global_crops)  # [B·2, S, S, 3] image-major
    (features, z, q), updates = self.net.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    method_state = jax.lax.stop_gradient(method_state)  # the target: no grad
    target = method_state["target"]
    zt, t_updates = self.net.apply(
      {"params": target["params"], "batch_stats": target["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
      method=BYOLNet.target,
    )
    zt = jax.lax.stop_gradient(zt)
    # Eq. 2 for (view 1 → view 2) plus L̃ for (view 2 → view 1): prediction of view v
    # regresses the target projection of the other view.
    zt_swapped = multicrop.swap_views(zt)
    per_row = regression_loss(q, zt_swapped)  # [2B]
    loss = 2.0 * jnp.mean(per_row)  # = mean(L) + mean(L̃)
    new_state = {
      "target": {"params": target["params"], "batch_stats": t_updates.get("batch_stats", {})}
    }
    metrics = {
      "loss": loss,
      "target_momentum": self.momentum(step),
      "cosine": jnp.mean(1.0 - per_row / 2.0),
      **embedding_std_metrics(z),
    }
    features = multicrop.first_view(features, 2)
    return loss, base.LossAux(updates["batch_stats"], new_state, metrics, features)

  def after_update(self, params, method_state, step):
    """ξ ← τ_k·ξ + (1 − τ_k)·θ with the updated online params θ (eq. 1)."""
    target = method_state["target"]
    new = ema(target["params"], subtree(params, self.TARGET_KEYS), self.momentum(step))
    return dict(method_state, target=dict(target, params=new))

  def collapse_warning(self, metrics: dict) -> str | None:
    return std_warning(metrics, self.collapse_std)


# BYOL's ImageNet settings (§3.3, Appendix B): 4096-wide projector and predictor to 256, τ_base
# 0.996. Experiment presets override what differs (config_lib.method reads this).
# fmt: off
DEFAULTS = dict(
  projector_hidden=(4096,), projector_dim=256, predictor_hidden=(4096,), base_momentum=0.996,
  collapse_std=0.05, eval_encoder="online",
)
# fmt: on


def create(config, total_steps: int) -> BYOL:
  m = config.method
  views = multicrop.MultiCrop.from_config(config.augment, num_global=2)
  if views.num_local:
    raise ValueError("BYOL uses two views: set augment.num_local_crops=0")
  encoder = base.encoder_from_config(config)
  dim = int(m.projector_dim)
  dtype = config.model.get("dtype", "float32")  # the heads compute as the encoder does
  projector = models.MLPHead(hidden_dims=tuple(m.projector_hidden), out_dim=dim, dtype=dtype)
  predictor = models.MLPHead(hidden_dims=tuple(m.predictor_hidden), out_dim=dim, dtype=dtype)
  return BYOL(
    net=BYOLNet(encoder, projector, predictor),
    views=views,
    preprocess=base.Preprocess.from_config(config.dataset),
    base_momentum=float(m.base_momentum),
    total_steps=int(total_steps),
    collapse_std=float(m.collapse_std),
    eval_encoder=base.check_eval_encoder(m.eval_encoder, BYOL.EVAL_ENCODERS),
  )
