"""Context encoders: feature learning by inpainting (Pathak, Krähenbühl, Donahue, Darrell &
Efros 2016, CVPR).

A region of the (normalised) image is blanked out (filled with 0, the dataset mean after
normalisation, as the paper fills with the mean pixel) and an encoder–decoder
(`pretext_nets.InpaintingGenerator`: the configured encoder, a channel-wise fully-connected
bottleneck, up-convolutions) predicts it.

Masks (`mask_mode`):
  "center":       the central square of side S/2 is predicted (the paper's main setting). The
                  hole in the input is that square shrunk by `overlap` px on every side, so
                  the prediction overlaps the visible context; the L2 loss weighs those
                  overlap pixels `overlap_weight` = 10 times more (the paper's overlap
                  weighting, released code: overlapPred = 4 px of 64, weight 10).
  "random_block": `num_blocks` squares of side S/4 at random positions (possibly
                  overlapping, covering up to 1/4 of the image: the paper's random-block
                  variant); the decoder predicts the whole image and L2 counts masked pixels.

Joint loss (§3.2, eq. 3–5): λ_rec·L_rec + λ_adv·L_adv with λ_rec = 0.999, λ_adv = 0.001;
L_adv is the GAN game with a discriminator D (`pretext_nets.PatchDiscriminator`) that sees the
real region vs the prediction (center) or the real image vs the completed image
(random_block). The generator uses the non-saturating form −log D(G(x)).

ONE optimizer, ONE scalar. The trainer updates `params["model"]` with one optax optimizer
from one loss. Generator and discriminator are disjoint subtrees
(`params["model"] = {"generator", "discriminator"}`) and the returned scalar is

    total = [0.999·L_rec(G) + 0.001·L_adv^G(G, sg(D))] + L_D(sg(G(x)), D)

(sg = stop_gradient), so ∂total/∂G is exactly the generator's gradient and ∂total/∂D exactly
the discriminator's (tests/test_context_encoder.py checks both); the two are stepped in the
same jitted update, each with its own Adam moments inside the shared optimizer state.

Config (`config.method`):
  mask_mode: "center" | "random_block";  overlap, overlap_weight: center mode's overlap
  num_blocks: random blocks;  rec_weight, adv_weight: 0.999, 0.001
  decoder_base: width of the last up-convolution (doubles toward the bottleneck)
  disc_widths: the discriminator's conv widths
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sslx import augment
from sslx.methods import base
from sslx.models import pretext_nets

MASK_MODES = ("center", "random_block")


def center_masks(size: int, overlap: int):
  """(hole [S, S] bool: blanked in the input, weights [S/2, S/2] float: L2 weight over the
  predicted central region, `1` in the hole and the overlap weight on its border)."""
  lo, hi = size // 4, size // 4 + size // 2
  idx = jnp.arange(size)
  inside = (idx >= lo + overlap) & (idx < hi - overlap)
  hole = inside[:, None] & inside[None, :]
  return hole, hole[lo:hi, lo:hi]


def random_block_mask(rng, size: int, num_blocks: int) -> jax.Array:
  """[S, S] bool: union of `num_blocks` squares of side S/4 at uniform random positions."""
  side = size // 4
  corners = jax.random.randint(rng, (num_blocks, 2), 0, size - side + 1)
  idx = jnp.arange(size)
  rows = (idx[None, :] >= corners[:, :1]) & (idx[None, :] < corners[:, :1] + side)
  cols = (idx[None, :] >= corners[:, 1:]) & (idx[None, :] < corners[:, 1:] + side)
  return jnp.any(rows[:, :, None] & cols[:, None, :], axis=0)


def _bce_logits(logits, target: float):
  """Mean binary cross-entropy of logits against a constant label (1 = real)."""
  return jnp.mean(jax.nn.softplus(-logits) if target == 1.0 else jax.nn.softplus(logits))


@dataclasses.dataclass(frozen=True)
class ContextEncoder(base.Method):
  generator: pretext_nets.InpaintingGenerator
  discriminator: pretext_nets.PatchDiscriminator
  preprocess: base.Preprocess
  view: augment.ViewParams | None
  image_size: int
  mask_mode: str
  overlap: int
  overlap_weight: float
  num_blocks: int
  rec_weight: float
  adv_weight: float

  @property
  def target_size(self) -> int:
    return self.image_size // 2 if self.mask_mode == "center" else self.image_size

  def init(self, rng, images) -> base.Variables:
    kg, kd = jax.random.split(rng)
    x = jnp.zeros((2, self.image_size, self.image_size, 3), jnp.float32)
    g = self.generator.init(kg, x, train=False)
    d = self.discriminator.init(
      kd, jnp.zeros((2, self.target_size, self.target_size, 3), jnp.float32)
    )
    params = {"generator": g["params"], "discriminator": d["params"]}
    return base.Variables(params, {"generator": g.get("batch_stats", {})}, {})

  def mask_batch(self, rng, x):
    """Normalised images [B, S, S, 3] -> (masked input, target [B, T, T, 3], L2 weights
    [B, T, T], hole [B, S, S])."""
    b, s = x.shape[0], self.image_size
    if self.mask_mode == "center":
      hole, weights = center_masks(s, self.overlap)
      weights = jnp.where(weights, 1.0, self.overlap_weight)
      lo = s // 4
      target = x[:, lo : lo + s // 2, lo : lo + s // 2]
      hole = jnp.broadcast_to(hole, (b, s, s))
      weights = jnp.broadcast_to(weights, (b,) + weights.shape)
    else:
      hole = jax.vmap(lambda k: random_block_mask(k, s, self.num_blocks))(jax.random.split(rng, b))
      target, weights = x, hole.astype(jnp.float32)
    masked = jnp.where(hole[..., None], 0.0, x)
    return masked, target, weights, hole

  def _complete(self, masked, prediction, hole):
    """What D judges as fake: the predicted region (center) or the completed image."""
    if self.mask_mode == "center":
      return prediction
    return jnp.where(hole[..., None], prediction, masked)

  def loss_terms(self, params, batch_stats, images, rng):
    """(generator loss, discriminator loss, aux) with the stop-gradients that make the sum's
    gradient split exactly: generator loss sees sg(D), discriminator loss sees sg(G(x))."""
    k_view, k_mask = jax.random.split(rng)
    rgb = base.view_pixels(k_view, images, self.view)
    x = self.preprocess(rgb)
    masked, target, weights, hole = self.mask_batch(k_mask, x)
    (_, prediction), updates = self.generator.apply(
      {"params": params["generator"], "batch_stats": batch_stats["generator"]},
      masked,
      train=True,
      mutable=["batch_stats"],
    )
    # Reconstruction: weighted L2 over the region (overlap border ×10), per pixel over RGB.
    err = jnp.sum(jnp.square(prediction - target), axis=-1)
    rec = jnp.sum(weights * err) / jnp.maximum(jnp.sum(weights), 1.0)
    fake = self._complete(masked, prediction, hole)
    real = target if self.mask_mode == "center" else x
    d_frozen = jax.lax.stop_gradient(params["discriminator"])
    adv_g = _bce_logits(self.discriminator.apply({"params": d_frozen}, fake), 1.0)
    g_loss = self.rec_weight * rec + self.adv_weight * adv_g
    d_real = self.discriminator.apply({"params": params["discriminator"]}, real)
    d_fake = self.discriminator.apply(
      {"params": params["discriminator"]}, jax.lax.stop_gradient(fake)
    )
    d_loss = _bce_logits(d_real, 1.0) + _bce_logits(d_fake, 0.0)
    metrics = {
      "rec_l2": rec,
      "adv_g": adv_g,
      "d_loss": d_loss,
      "d_real_prob": jnp.mean(jax.nn.sigmoid(d_real)),
      "d_fake_prob": jnp.mean(jax.nn.sigmoid(d_fake)),
    }
    return g_loss, d_loss, (updates["batch_stats"], metrics, prediction)

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    g_loss, d_loss, (g_stats, metrics, _) = self.loss_terms(params, batch_stats, images, rng)
    total = g_loss + d_loss
    new_stats = {"generator": g_stats}
    features = jax.lax.stop_gradient(self.encode(params, new_stats, images))
    metrics = dict(metrics, loss=total, g_loss=g_loss)
    return total, base.LossAux(new_stats, method_state, metrics, features)

  def inpaint(self, params, batch_stats, images, rng):
    """uint8 [B, S, S, 3] -> (masked inputs, completions), both [B, S, S, 3] in [0, 1]."""
    x = self.preprocess(images)
    masked, _, _, hole = self.mask_batch(rng, x)
    _, prediction = self.generator.apply(
      {"params": params["generator"], "batch_stats": batch_stats["generator"]}, masked, train=False
    )
    if self.mask_mode == "center":
      lo = self.image_size // 4
      completed = jax.lax.dynamic_update_slice(x, prediction, (0, lo, lo, 0))
    else:
      completed = jnp.where(hole[..., None], prediction, x)
    mean = jnp.asarray(self.preprocess.mean)
    std = jnp.asarray(self.preprocess.std)
    show = lambda z: jnp.clip(z * std + mean, 0.0, 1.0)  # noqa: E731
    masked_show = jnp.where(hole[..., None], 1.0, show(masked))  # holes drawn white
    return masked_show, show(completed)

  def encode(self, params, batch_stats, images):
    return self.generator.apply(
      {"params": params["generator"], "batch_stats": batch_stats["generator"]},
      self.preprocess(images),
      method=pretext_nets.InpaintingGenerator.encode,
    )


# The paper's losses (λ_rec 0.999, λ_adv 0.001, overlap weight 10) on a central hole.
# What `python -m sslx.main` draws from the final checkpoint: masked inputs, inpaintings and originals.
PICTURES = ("inpainting",)

# fmt: off
DEFAULTS = dict(
  mask_mode="center", overlap=1, overlap_weight=10.0, num_blocks=4, rec_weight=0.999,
  adv_weight=0.001, decoder_base=32, disc_widths=(32, 64, 128),
)
# fmt: on


def create(config, total_steps: int) -> ContextEncoder:
  del total_steps
  m = config.method
  mode = base.check_choice("mask_mode", str(m.mask_mode), MASK_MODES)
  view = base.view_params(config.augment)
  size = base.crop_size(view, config)
  encoder = base.encoder_from_config(config)
  fmap = jax.eval_shape(
    lambda x: encoder.init_with_output(jax.random.PRNGKey(0), x, train=False)[0]["feature_map"],
    jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
  ).shape[1]
  target = size // 2 if mode == "center" else size
  doublings = max(int(round(jnp.log2(target / fmap))), 1)
  base_width = int(m.decoder_base)
  widths = tuple(base_width * 2 ** (doublings - 2 - i) for i in range(doublings - 1))
  if fmap * 2**doublings != target:
    raise ValueError(f"encoder feature map {fmap} cannot be doubled to {target}")
  generator = pretext_nets.InpaintingGenerator(encoder, decoder_widths=widths)
  disc = pretext_nets.PatchDiscriminator(widths=tuple(m.disc_widths))
  return ContextEncoder(
    generator=generator,
    discriminator=disc,
    preprocess=base.Preprocess.from_config(config.dataset),
    view=view,
    image_size=size,
    mask_mode=mode,
    overlap=int(m.overlap),
    overlap_weight=float(m.overlap_weight),
    num_blocks=int(m.num_blocks),
    rec_weight=float(m.rec_weight),
    adv_weight=float(m.adv_weight),
  )
