"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

  images ──crop/flip──► patches [B, N, p²·3]
     random_masking (ratio r, exact per image) ──► ids_keep [B, K], K = N − round(r·N)
  encoder  = the ViT on the K visible patches + CLS  (sequence K + 1: the asymmetry, §3)
  decoder  = Dense(D_enc→D_dec) ▸ append N−K mask tokens ▸ unshuffle (ids_restore) ▸ + its own
             fixed 2-D sin-cos position embeddings ▸ L_dec ViT blocks ▸ LayerNorm ▸ Dense(p²·3)
  loss     = mean over *masked* patches of the per-pixel MSE (§3 "Reconstruction target"),
             on per-patch normalised pixels by default ("norm_pix_loss": each target patch is
             standardised by its own mean/variance, Table 1(c)).

Parameters: {"encoder": ViT params, "decoder": MAEDecoder params}. After pretraining the
decoder is dropped: `encode` applies only `params["encoder"]` (full image, no mask) and returns
the ViT's `pre_logits` — the CLS token, or the mean of patch tokens with `model.pool="mean"`
(the presets' choice: for this short training the mean pool is the better probe feature; MAE
§A.2 notes both work). `encoder_params(params)` is the exported encoder.

Config (`config.method`):
  mask_ratio:       fraction of patches masked (0.75, paper Fig. 5)
  decoder_dim, decoder_depth, decoder_heads: the light decoder (512, 8, 16 at ImageNet scale)
  norm_pix_loss:    standardise each target patch (True)
  fixed_pos_embed:  the encoder's position embedding is MAE's fixed 2-D sin-cos table (True:
                    initialised with it, `wrap_optimizer` gives it no updates, so no weight
                    decay either); False: a learned one (N(0, 0.02) at init). Fine-tuning and
                    the exported weights see it as an ordinary position embedding, as MAE's
                    fine-tuning code does.
Augmentation (`config.augment`): MAE uses only random-resized-crop (scale 0.2–1) and flip.

`encoder_cost(...)` returns XLA's cost analysis of the encoder forward at a given ratio, for the
asymmetry benchmark (≈ (1 − r) of the FLOPs, slightly less since attention is quadratic).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sslx import augment, losses, masking
from sslx.methods import base
from sslx.models import precision
from sslx.models import vit as vit_lib


class MAEDecoder(nn.Module):
  """The light decoder (MAE §3 "MAE decoder").

  Input: encoder tokens [B, K+1, D_enc] (CLS first) and ids_restore [B, N].
  Output: [B, N, p²·3] float32 predicted pixels of every patch (only masked ones enter the
  loss), or [B, N, out_dim] with `out_dim` > 0 (data2vec 2.0's teacher features). ``dtype`` and ``remat`` follow the encoder's ``model.dtype`` / ``model.remat``
  (sslx/models/precision.py): the decoder runs on all N + 1 tokens, so at 75% masking it
  holds most of the step's activations."""

  dim: int
  depth: int
  num_heads: int
  patch_size: int
  grid: tuple[int, int]
  mlp_ratio: float = 4.0
  dtype: Any = "float32"
  remat: str = "none"
  out_dim: int = 0  # 0: pixels (p²·3 per patch)

  @nn.compact
  def __call__(self, latent, ids_restore):
    dtype = precision.compute_dtype(self.dtype)
    block_cls = precision.maybe_remat(vit_lib.Block, self.remat, static_argnums=(2,))
    b = latent.shape[0]
    n = ids_restore.shape[1]
    x = vit_lib.FlatDense(
      self.dim, kernel_init=nn.initializers.xavier_uniform(), dtype=dtype, name="embed"
    )(latent)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.dim))
    visible = x[:, 1:]
    tokens = jnp.concatenate(
      [visible, jnp.broadcast_to(mask_token.astype(dtype), (b, n - visible.shape[1], self.dim))],
      axis=1,
    )
    tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)  # unshuffle
    pos = jnp.asarray(vit_lib.sincos_pos_embed_2d(self.dim, self.grid), dtype)[None]
    tokens = jnp.concatenate([x[:, :1], tokens + pos], axis=1)
    mlp_dim = int(self.mlp_ratio * self.dim)
    for i in range(self.depth):
      tokens, _ = block_cls(self.dim, self.num_heads, mlp_dim, False, 0.0, dtype, name=f"block{i}")(
        tokens, False
      )
    tokens = nn.LayerNorm(epsilon=1e-6, dtype=dtype, name="norm")(tokens)
    pred = vit_lib.FlatDense(
      self.out_dim or self.patch_size**2 * 3,
      kernel_init=nn.initializers.xavier_uniform(),
      dtype=dtype,
      name="pred",
    )(tokens)
    return pred[:, 1:].astype(jnp.float32)


def patch_targets(images, patch_size: int, norm_pix: bool):
  """[B, N, p²·3] reconstruction targets; with `norm_pix`, each patch standardised by its own
  mean and variance (MAE Table 1(c); the reference's torch.var is unbiased, eps 1e-6)."""
  target = vit_lib.patchify(images, patch_size)
  if norm_pix:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  return target


def masked_mse(pred, target, mask):
  """MAE's loss: per-patch mean squared error, averaged over masked patches only.
  pred, target [B, N, P]; mask [B, N] bool (True = masked). Visible patches get weight 0."""
  return losses.masked_mean(jnp.mean(jnp.square(pred - target), axis=-1), mask)


class Forward(NamedTuple):
  pred: jax.Array  # [B, N, p²·3]
  target: jax.Array  # [B, N, p²·3]
  mask: jax.Array  # [B, N] bool
  latent: jax.Array  # [B, K+1, D_enc]: the encoder's sequence (visible patches + CLS)
  features: jax.Array  # [B, D_enc] encoder pre_logits on the visible tokens
  images: jax.Array  # [B, S, S, 3] the normalised (augmented) input


@dataclasses.dataclass(frozen=True)
class MAE(base.MaskedImageMethod):
  encoder: vit_lib.ViT
  decoder: MAEDecoder
  view: augment.ViewParams | None
  preprocess: base.Preprocess
  mask_ratio: float
  norm_pix_loss: bool
  fixed_pos_embed: bool = True

  def wrap_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` for every parameter but the encoder's fixed position embedding, which gets none."""
    if not self.fixed_pos_embed:
      return tx

    def labels(params):
      def label(path, _):
        keys = [getattr(k, "key", None) for k in path]
        return "fixed" if keys[:1] == ["encoder"] and keys[-1] == "pos_embed" else "trained"

      return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"trained": tx, "fixed": optax.set_to_zero()}, labels)

  def _size(self, images):
    return self.view.crop_size if self.view is not None else images.shape[1]

  def num_patches(self, image_size: int) -> int:
    return (image_size // self.encoder.patch_size) ** 2

  def init(self, rng, images) -> base.Variables:
    s = self._size(images)
    x = jnp.zeros((2, s, s, 3), jnp.float32)
    enc_rng, dec_rng = jax.random.split(rng)
    enc = self.encoder.init(enc_rng, x, train=False)["params"]
    dec = init_decoder(
      self.decoder, dec_rng, self.encoder.dim, self.num_patches(s), self.mask_ratio
    )
    return base.Variables({"encoder": enc, "decoder": dec}, {}, {})

  def inputs(self, rng, images):
    """[B, S, S, 3] normalised training input (crop + flip for MAE, or as given)."""
    if self.view is None:
      return self.preprocess(images)
    return self.preprocess(augment.augment_batch(rng, images, self.view))

  def forward(self, params, x, mask_rng) -> Forward:
    """Masked encoding and reconstruction of normalised images x [B, S, S, 3]."""
    b = x.shape[0]
    n = self.num_patches(x.shape[1])
    m = masking.random_masking(mask_rng, b, n, self.mask_ratio)
    out = self.encoder.apply({"params": params["encoder"]}, x, train=True, mask=m.ids_keep)
    latent = out["tokens"]
    pred = self.decoder.apply({"params": params["decoder"]}, latent, m.ids_restore)
    target = patch_targets(x, self.encoder.patch_size, self.norm_pix_loss)
    return Forward(pred, target, m.mask, latent, out["pre_logits"], x)

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    aug_rng, mask_rng = jax.random.split(rng)
    f = self.forward(params, self.inputs(aug_rng, images), mask_rng)
    loss = masked_mse(f.pred, f.target, f.mask)
    metrics = {
      "loss": loss,
      "visible_mse": masked_mse(f.pred, f.target, ~f.mask),  # not trained on
      "encoder_tokens": jnp.asarray(f.latent.shape[1], jnp.float32),
    }
    return loss, base.LossAux(batch_stats, method_state, metrics, f.features)

  def encode(self, params, batch_stats, images):
    """[B, D] encoder features of the full (unmasked) image; the decoder is not used."""
    del batch_stats
    out = self.encoder.apply(
      {"params": encoder_params(params)}, self.preprocess(images), train=False
    )
    return out["pre_logits"]

  def reconstruct(self, params, images, rng):
    """For the visualizer: (masked input, reconstruction) in [0, 1] pixel space, [B, S, S, 3]
    each, for uint8 images (no augmentation). With norm_pix_loss the predicted patches are
    de-normalised with the true patch mean and (unbiased, as the targets were normalised)
    variance, as the MAE demo does, and visible patches are pasted from the original."""
    x = self.preprocess(images)
    f = self.forward(params, x, rng)
    p = self.encoder.patch_size
    grid = (x.shape[1] // p, x.shape[2] // p)
    raw = vit_lib.patchify(x, p)
    pred = f.pred
    if self.norm_pix_loss:
      pred = pred * jnp.sqrt(raw.var(-1, keepdims=True, ddof=1) + 1e-6) + raw.mean(
        -1, keepdims=True
      )
    m = f.mask[:, :, None]
    recon = jnp.where(m, pred, raw)

    def to_pixels(patches):
      img = vit_lib.unpatchify(patches, p, grid)
      mean = jnp.asarray(self.preprocess.mean)
      std = jnp.asarray(self.preprocess.std)
      return jnp.clip(img * std + mean, 0.0, 1.0)

    pixel_mask = vit_lib.unpatchify(jnp.broadcast_to(m, raw.shape).astype(jnp.float32), p, grid)
    masked_in = jnp.where(pixel_mask > 0, 0.5, to_pixels(raw))  # masked patches mid-grey
    return masked_in, to_pixels(recon)


def encoder_params(params):
  """The exported encoder: the ViT's own parameter tree (no decoder)."""
  return params["encoder"]


def encoder_cost(
  encoder: vit_lib.ViT, image_size: int, batch: int, mask_ratio: float, time_steps: int = 0
) -> dict:
  """XLA's cost analysis of the MAE encoder forward on `batch` images at `mask_ratio`
  ({"flops", "seq_len"}; with `time_steps` > 0 also the mean forward+backward seconds)."""
  n = (image_size // encoder.patch_size) ** 2
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  params = encoder.init(jax.random.PRNGKey(0), x[:1], train=False)["params"]
  ids = masking.random_masking(jax.random.PRNGKey(1), batch, n, mask_ratio).ids_keep

  def fwd(params, x, ids):
    return encoder.apply({"params": params}, x, train=True, mask=ids)["tokens"]

  compiled = jax.jit(fwd).lower(params, x, ids).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  out = {"flops": float(cost["flops"]), "seq_len": int(fwd(params, x[:1], ids[:1]).shape[1])}
  if time_steps:
    grad = jax.jit(jax.grad(lambda p, x, i: jnp.mean(fwd(p, x, i) ** 2)))
    jax.block_until_ready(grad(params, x, ids))
    t0 = time.perf_counter()
    for _ in range(time_steps):
      jax.block_until_ready(grad(params, x, ids))
    out["step_s"] = (time.perf_counter() - t0) / time_steps
  return out


# The paper's ViT-B recipe: 75% masking, an 8-block 512-wide decoder, normalised-pixel targets.
# What `python -m sslx.main` draws from the final checkpoint: masked inputs and reconstructions.
PICTURES = ("reconstruction",)

# fmt: off
DEFAULTS = dict(
  mask_ratio=0.75, decoder_dim=512, decoder_depth=8, decoder_heads=16, norm_pix_loss=True,
  fixed_pos_embed=True,
)
# fmt: on


def init_decoder(decoder: MAEDecoder, rng, encoder_dim: int, num_patches: int, mask_ratio: float):
  """The decoder's initial params for an encoder of width `encoder_dim` that keeps
  num_patches − round(mask_ratio · num_patches) patches (+ CLS)."""
  keep = num_patches - masking.num_masked(num_patches, mask_ratio)
  latent = jnp.zeros((2, keep + 1, encoder_dim), jnp.float32)
  ids = jnp.tile(jnp.arange(num_patches, dtype=jnp.int32), (2, 1))
  return decoder.init(rng, latent, ids)["params"]


def decoder_from_config(config, encoder: vit_lib.ViT, out_dim: int = 0) -> MAEDecoder:
  """The decoder `config.method.decoder_dim/depth/heads` describe, on the grid of the images
  the encoder sees, in the encoder's dtype and remat (`out_dim` 0: pixels)."""
  m = config.method
  g = base.crop_size(base.view_params(config.augment), config) // encoder.patch_size
  return MAEDecoder(
    dim=int(m.decoder_dim),
    depth=int(m.decoder_depth),
    num_heads=int(m.decoder_heads),
    patch_size=encoder.patch_size,
    grid=(g, g),
    dtype=config.model.get("dtype", "float32"),
    remat=config.model.get("remat", "none"),
    out_dim=out_dim,
  )


def create(config, total_steps: int) -> MAE:
  del total_steps  # no schedule inside MAE's loss
  m = config.method
  encoder = base.encoder_from_config(config)
  if not isinstance(encoder, vit_lib.ViT):
    raise ValueError(f"MAE needs a ViT encoder (model.name vit_*), got {config.model.name!r}")
  ratio = float(m.mask_ratio)
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"method.mask_ratio={ratio} must be in [0, 1)")
  fixed = bool(m.get("fixed_pos_embed", True))
  if fixed:
    encoder = encoder.clone(pos_embed_init="sincos")
  return MAE(
    encoder=encoder,
    decoder=decoder_from_config(config, encoder),
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
    mask_ratio=ratio,
    norm_pix_loss=bool(m.norm_pix_loss),
    fixed_pos_embed=fixed,
  )
