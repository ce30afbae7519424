"""BEiT stage one: a small VQ-VAE image tokenizer, trained by the normal trainer as a "method".

BEiT (Bao et al. 2022, §2.1) tokenizes each p × p patch into one of |V| discrete codes with the
DALL-E dVAE; those weights cannot be downloaded here, so sslx trains its own tokenizer: a VQ-VAE
(van den Oord et al. 2017) whose encoder maps an image to a (H/p) × (W/p) grid — one code per
ViT patch, the grid BEiT predicts.

  z_e = Enc(x)            [B, gh, gw, d]   strided convs (log2 p stride-2 stages), l2-normalised
  k   = argmax_j ⟨z_e, e_j⟩ over the l2-normalised codebook (cosine nearest neighbour: the
        normalised codes of Yu et al. 2022 "ViT-VQGAN" keep more of a small codebook in use)
  z_q = z_e + sg(e_k − z_e)          straight-through estimator (VQ-VAE eq. 3)
  x̂  = Dec(z_q)
  L  = ‖x − x̂‖² + ‖sg(z_e) − e_k‖² + β‖z_e − sg(e_k)‖²    (VQ-VAE eq. 3, β = 0.25)

Parameters: {"encoder", "codebook" [K, d], "decoder"}. `tokenize(params, images)` → [B, gh·gw]
int32 codes (row-major, as `vit.patchify` orders patches). `encode` (for the trainer's k-NN /
linear probe) is the mean of z_e over the grid. Metrics: `perplexity` of the code histogram
in the batch (how many codes are in use), `recon_mse`.

Config (`config.method`): codebook_size, code_dim, hidden (conv widths), beta, patch_size
(must equal BEiT's ViT patch size).
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import augment
from sslx.methods import base


def _l2n(x, eps=1e-6):
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class VQEncoder(nn.Module):
  hidden: int
  code_dim: int
  stages: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.stages):
      x = nn.gelu(nn.Conv(self.hidden, (4, 4), strides=(2, 2), padding=1, name=f"down{i}")(x))
    x = nn.gelu(nn.Conv(self.hidden, (3, 3), padding=1, name="mid")(x))
    return nn.Conv(self.code_dim, (1, 1), name="out")(x)


class VQDecoder(nn.Module):
  hidden: int
  stages: int

  @nn.compact
  def __call__(self, z):
    x = nn.gelu(nn.Conv(self.hidden, (3, 3), padding=1, name="in")(z))
    for i in range(self.stages):
      x = nn.gelu(nn.ConvTranspose(self.hidden, (4, 4), strides=(2, 2), padding="SAME",
                                   name=f"up{i}")(x))
    return nn.Conv(3, (3, 3), padding=1, name="out")(x)


@dataclasses.dataclass(frozen=True)
class VQTokenizer:
  enc: VQEncoder
  dec: VQDecoder
  view: augment.ViewParams | None
  preprocess: base.Preprocess
  codebook_size: int
  code_dim: int
  beta: float
  patch_size: int

  def init(self, rng, images) -> base.Variables:
    s = self.view.crop_size if self.view is not None else images.shape[1]
    x = jnp.zeros((1, s, s, 3), jnp.float32)
    r1, r2, r3 = jax.random.split(rng, 3)
    enc = self.enc.init(r1, x)["params"]
    g = s // self.patch_size
    dec = self.dec.init(r2, jnp.zeros((1, g, g, self.code_dim)))["params"]
    codebook = _l2n(jax.random.normal(r3, (self.codebook_size, self.code_dim)))
    return base.Variables({"encoder": enc, "codebook": codebook, "decoder": dec}, {}, {})

  def quantize(self, params, x):
    """(z_e [B, gh, gw, d], codes [B, gh, gw], e_k [B, gh, gw, d]) for normalised x."""
    z_e = _l2n(self.enc.apply({"params": params["encoder"]}, x))
    book = _l2n(params["codebook"])
    codes = jnp.argmax(jnp.einsum("bhwd,kd->bhwk", z_e, book), axis=-1)
    return z_e, codes.astype(jnp.int32), book[codes]

  def tokenize(self, params, x):
    """[B, gh·gw] int32 visual tokens of *normalised* images x [B, S, S, 3]."""
    _, codes, _ = self.quantize(params, x)
    return codes.reshape(codes.shape[0], -1)

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    x = (self.preprocess(images) if self.view is None
         else self.preprocess(augment.augment_batch(rng, images, self.view)))
    z_e, codes, e_k = self.quantize(params, x)
    z_q = z_e + jax.lax.stop_gradient(e_k - z_e)  # straight-through (VQ-VAE eq. 3)
    recon = self.dec.apply({"params": params["decoder"]}, z_q)
    recon_mse = jnp.mean(jnp.square(recon - x))
    codebook_loss = jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(z_e) - e_k), -1))
    commit = jnp.mean(jnp.sum(jnp.square(z_e - jax.lax.stop_gradient(e_k)), -1))
    loss = recon_mse + codebook_loss + self.beta * commit
    hist = jnp.mean(jax.nn.one_hot(codes.reshape(-1), self.codebook_size), axis=0)
    perplexity = jnp.exp(-jnp.sum(hist * jnp.log(hist + 1e-10)))
    metrics = {"loss": loss, "recon_mse": recon_mse, "commitment": commit,
               "perplexity": perplexity}
    return loss, base.LossAux(batch_stats, method_state, metrics, z_e.mean(axis=(1, 2)))

  def encode(self, params, batch_stats, images):
    del batch_stats
    z_e, _, _ = self.quantize(params, self.preprocess(images))
    return z_e.mean(axis=(1, 2))

  def collapse_warning(self, metrics: dict) -> str | None:
    if metrics.get("perplexity", 2.0) < 2.0:
      return (f"codebook perplexity {metrics['perplexity']:.2f}: nearly every patch maps to "
              "the same code")
    return None


def create(config, total_steps: int) -> VQTokenizer:
  del total_steps
  m = config.method
  p = int(m.patch_size)
  stages = int(round(math.log2(p)))
  if 2 ** stages != p:
    raise ValueError(f"method.patch_size={p} must be a power of two (stride-2 stages)")
  hidden = int(m.hidden)
  return VQTokenizer(enc=VQEncoder(hidden, int(m.code_dim), stages),
                     dec=VQDecoder(hidden, stages), view=base.view_params(config.augment),
                     preprocess=base.Preprocess.from_config(config.dataset),
                     codebook_size=int(m.codebook_size), code_dim=int(m.code_dim),
                     beta=float(m.get("beta", 0.25)), patch_size=p)
