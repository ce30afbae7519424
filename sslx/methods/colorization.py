"""Colorization as classification (Zhang, Isola & Efros 2016, "Colorful Image Colorization").

The network sees only the lightness L of an image (CIE Lab, `sslx.color`) and predicts, at
1/4 of the input resolution (the paper's output stride), a distribution Ẑ over the Q
in-gamut ab bins of grid 10 (`color.ab_bins`). Targets Z are soft-encoded: each pixel's true
ab spread over its 5 nearest bins with a Gaussian of σ = 5 (§2.1). The loss is the rebalanced
multinomial cross-entropy (eq. 2)

    L(Ẑ, Z) = − Σ_{h,w} v(Z_{h,w}) Σ_q Z_{h,w,q} log Ẑ_{h,w,q},   v(Z) = w_{argmax_q Z},

averaged over pixels, with w ∝ ((1 − λ)·p̃ + λ/Q)⁻¹ (λ = 1/2) and p̃ the smoothed empirical
distribution of ab bins (§2.2). The paper estimates p̃ once over ImageNet; here it is a
RUNNING estimate kept in `method_state["bin_counts"]` ([Q], the soft-encoded targets summed
over every training pixel seen so far, starting from a uniform pseudo-count of 1 per bin),
so no pass over the data is needed at creation and the prior is saved in every checkpoint.
The weights used at a step come from the counts *before* that step's batch (the state is
updated after, outside the gradient).

Colours are decoded with the annealed mean, T = 0.38 (§2.3; `predict_ab`).
Evaluation (`encode`) feeds the L channel of the whole image, as in training.

Config (`config.method`):
  rebalance_lambda: λ (0.5); 1.0 gives uniform weights (no rebalancing)
  temperature:      T of the annealed mean (0.38)
  soft_k, soft_sigma: 5 nearest bins, σ = 5
  decoder_widths:   widths of the up-convolutions from the encoder's feature map to 1/4
                    resolution (one per factor of 2)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sslx import augment, color
from sslx.methods import base
from sslx.models import pretext_nets


def to_lightness_input(rgb: jax.Array) -> jax.Array:
  """[B, H, W, 3] sRGB in [0, 1] -> [B, H, W, 1] network input L/50 − 1 (in [−1, 1])."""
  return color.srgb_to_lab(rgb)[..., :1] / 50.0 - 1.0


def target_ab(rgb: jax.Array, size: int) -> jax.Array:
  """[B, H, W, 3] sRGB -> the ab of every (H // size)-th pixel, [B, size, size, 2]: Zhang et
  al.'s targets subsample the full-resolution ab (their `data_ab_ss`, a stride-4 1x1
  convolution) instead of averaging colours, which would desaturate them at colour edges."""
  f = rgb.shape[1] // size
  return color.srgb_to_lab(rgb[:, ::f, ::f][:, :size, :size])[..., 1:]


@dataclasses.dataclass(frozen=True)
class Colorization(base.Method):
  net: pretext_nets.ColorizationNet
  view: augment.ViewParams | None
  bins: tuple  # Q (a, b) centres
  out_size: int
  rebalance_lambda: float
  temperature: float
  soft_k: int
  soft_sigma: float

  @property
  def num_bins(self) -> int:
    return len(self.bins)

  def _bins(self):
    return jnp.asarray(self.bins, jnp.float32)

  def init(self, rng, images) -> base.Variables:
    x = to_lightness_input(images[:2].astype(jnp.float32) / 255.0)
    if self.view is not None:
      size = self.view.crop_size
      x = jax.image.resize(x, (x.shape[0], size, size, 1), "bilinear")
    variables = self.net.init(rng, x, train=False)
    return base.Variables(
      variables["params"],
      variables.get("batch_stats", {}),
      {"bin_counts": jnp.ones((self.num_bins,), jnp.float32)},
    )

  def targets(self, rgb):
    """[B, S, S, 3] in [0, 1] -> soft targets [B, s, s, Q] at the output resolution."""
    ab = target_ab(rgb, self.out_size)
    return color.soft_encode(ab, self._bins(), self.soft_k, self.soft_sigma)

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    rgb = base.view_pixels(rng, images, self.view)
    (features, logits), updates = self.net.apply(
      {"params": params, "batch_stats": batch_stats},
      to_lightness_input(rgb),
      train=True,
      mutable=["batch_stats"],
    )
    z = self.targets(rgb)  # [B, s, s, Q]
    prior = color.smooth_prior(method_state["bin_counts"], self._bins(), self.soft_sigma)
    w = color.rebalance_weights(prior, self.rebalance_lambda)  # [Q]
    v = w[jnp.argmax(z, axis=-1)]  # [B, s, s]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.sum(z * logp, axis=-1)
    loss = jnp.mean(v * ce)
    counts = method_state["bin_counts"] + jax.lax.stop_gradient(jnp.sum(z, axis=(0, 1, 2)))
    acc = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(z, -1))
    ab_err = jnp.mean(
      jnp.abs(
        color.annealed_mean(logits, self._bins(), self.temperature) - target_ab(rgb, self.out_size)
      )
    )
    metrics = {"loss": loss, "unweighted_ce": jnp.mean(ce), "bin_acc": acc, "ab_abs_error": ab_err}
    return loss, base.LossAux(updates["batch_stats"], {"bin_counts": counts}, metrics, features)

  def predict_ab(self, params, batch_stats, images):
    """uint8 [B, S, S, 3] -> annealed-mean ab [B, s, s, 2] from the L channel alone."""
    x = to_lightness_input(images.astype(jnp.float32) / 255.0)
    _, logits = self.net.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return color.annealed_mean(logits, self._bins(), self.temperature)

  def colorize(self, params, batch_stats, images):
    """uint8 [B, S, S, 3] -> sRGB [B, S, S, 3] in [0, 1]: the input's L with the predicted
    ab upsampled (bilinear) to full resolution, as the paper renders its results."""
    rgb = images.astype(jnp.float32) / 255.0
    lab = color.srgb_to_lab(rgb)
    ab = self.predict_ab(params, batch_stats, images)
    ab = jax.image.resize(ab, lab.shape[:3] + (2,), "bilinear")
    return color.lab_to_srgb(jnp.concatenate([lab[..., :1], ab], axis=-1))

  def encode(self, params, batch_stats, images):
    x = to_lightness_input(images.astype(jnp.float32) / 255.0)
    return self.net.apply(
      {"params": params, "batch_stats": batch_stats}, x, method=pretext_nets.ColorizationNet.encode
    )


# The paper's rebalancing (λ = 0.5), annealed-mean temperature 0.38 and soft encoding (5
# neighbours, σ = 5); out_size 0 = a quarter of the crop (the paper's output stride 4).
# What `python -m sslx.main` draws from the final checkpoint: grayscale inputs, colorizations and originals.
PICTURES = ("colorization",)

# fmt: off
DEFAULTS = dict(
  decoder_widths=(128, 128), out_size=0, rebalance_lambda=0.5, temperature=0.38, soft_k=5,
  soft_sigma=5.0,
)
# fmt: on


def create(config, total_steps: int) -> Colorization:
  del total_steps
  m = config.method
  bins = color.ab_bins(10)
  decoder_widths = tuple(m.decoder_widths)
  encoder = base.encoder_from_config(config)
  net = pretext_nets.ColorizationNet(encoder, num_bins=len(bins), decoder_widths=decoder_widths)
  view = base.view_params(config.augment)
  size = base.crop_size(view, config)
  # Output stride 4 (the paper's 1/4 resolution), reached by the decoder from the encoder.
  return Colorization(
    net=net,
    view=view,
    bins=tuple((float(a), float(b)) for a, b in bins),
    out_size=int(m.out_size) or size // 4,
    rebalance_lambda=float(m.rebalance_lambda),
    temperature=float(m.temperature),
    soft_k=int(m.soft_k),
    soft_sigma=float(m.soft_sigma),
  )
