"""BEiT stage one: a small VQ-VAE image tokenizer, trained by the normal trainer as a "method".

BEiT (Bao et al. 2022, §2.1) tokenizes each p × p patch into one of |V| discrete codes with the
DALL-E dVAE; those weights cannot be downloaded here, so sslx trains its own tokenizer: a VQ-VAE
(van den Oord et al. 2017) whose encoder maps an image to a (H/p) × (W/p) grid — one code per
ViT patch, the grid BEiT predicts.

  z_e = Enc(x)            [B, gh, gw, d]   per-patch MLP + 3×3 conv on the grid, l2-normalised
  k   = argmax_j ⟨z_e, e_j⟩ over the l2-normalised codebook (cosine nearest neighbour: the
        normalised codes of Yu et al. 2022 "ViT-VQGAN" keep more of a small codebook in use)
  z_q = z_e + sg(e_k − z_e)          straight-through estimator (VQ-VAE eq. 3)
  x̂  = Dec(z_q)
  L  = ‖x − x̂‖² + β‖z_e − sg(e_k)‖²    (VQ-VAE eq. 3, β = 0.25; the codebook term is replaced
       by EMA k-means updates of the codebook, VQ-VAE App. A.1, with dead-code restarts)
  With `norm_pix`, x̂ reconstructs every patch standardised by its own mean and variance
  (MAE's target) instead of x: the codes then carry each patch's structure (edges, texture)
  rather than its mean colour, which a neighbouring patch already tells. With a few hundred
  codes for 4 × 4 patches, colour codes make BEiT's masked prediction an interpolation.

Parameters: {"encoder", "decoder"}; method_state: {"codebook" [K, d], "ema_sum", "ema_count"}
(a small randomly initialised codebook trained by gradient collapsed to ~2 codes here). `tokenize({"encoder", "codebook"}, images)` → [B, gh·gw]
int32 codes (row-major, as `vit.patchify` orders patches). `encode` (for the trainer's k-NN /
linear probe) is the mean of z_e over the grid. Metrics: `perplexity` of the code histogram
in the batch (how many codes are in use), `recon_mse`.

Config (`config.method`): codebook_size, code_dim, hidden (widths), beta, ema_decay,
dead_threshold, norm_pix (False: reconstruct the pixels, as DALL-E's dVAE), patch_size
(must equal BEiT's ViT patch size; any size dividing the image).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import augment
from sslx.methods import base, mae
from sslx.models import vit as vit_lib


def _l2n(x, eps=1e-6):
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class VQEncoder(nn.Module):
  """patchify ▸ per-patch MLP ▸ a 3 × 3 conv over the patch grid (context) ▸ 1 × 1 to d.
  (Strided 4 × 4 convs / transposed convs were ~20× slower on the 2-core CPU.)"""

  hidden: int
  code_dim: int
  patch_size: int

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    p = self.patch_size
    t = vit_lib.patchify(x, p)
    t = nn.gelu(nn.Dense(self.hidden, name="fc1")(t))
    t = nn.gelu(nn.Dense(self.hidden, name="fc2")(t))
    g = t.reshape(b, h // p, w // p, self.hidden)
    g = g + nn.gelu(nn.Conv(self.hidden, (3, 3), padding=1, name="ctx")(g))
    return nn.Dense(self.code_dim, name="out")(g)


class VQDecoder(nn.Module):
  """3 × 3 conv over the code grid ▸ per-patch MLP to p²·3 pixels ▸ unpatchify."""

  hidden: int
  patch_size: int

  @nn.compact
  def __call__(self, z):
    b, gh, gw, _ = z.shape
    p = self.patch_size
    g = nn.gelu(nn.Conv(self.hidden, (3, 3), padding=1, name="ctx")(z))
    g = nn.gelu(nn.Dense(self.hidden, name="fc1")(g))
    t = nn.Dense(p * p * 3, name="out")(g).reshape(b, gh * gw, p * p * 3)
    return vit_lib.unpatchify(t, p, (gh, gw))


@dataclasses.dataclass(frozen=True)
class VQTokenizer(base.Method):
  enc: VQEncoder
  dec: VQDecoder
  view: augment.ViewParams | None
  preprocess: base.Preprocess
  codebook_size: int
  beta: float
  ema_decay: float = 0.99
  dead_threshold: float = 0.03
  norm_pix: bool = False

  @property
  def code_dim(self) -> int:
    return self.enc.code_dim

  @property
  def patch_size(self) -> int:
    """One code per patch_size × patch_size patch (the encoder's, which BEiT's ViT must match)."""
    return self.enc.patch_size

  def init(self, rng, images) -> base.Variables:
    s = self.view.crop_size if self.view is not None else images.shape[1]
    x = jnp.zeros((1, s, s, 3), jnp.float32)
    r1, r2, r3 = jax.random.split(rng, 3)
    enc = self.enc.init(r1, x)["params"]
    g = s // self.patch_size
    dec = self.dec.init(r2, jnp.zeros((1, g, g, self.code_dim)))["params"]
    codebook = _l2n(jax.random.normal(r3, (self.codebook_size, self.code_dim)))
    state = {
      "codebook": codebook,
      "ema_sum": codebook,
      "ema_count": jnp.ones((self.codebook_size,), jnp.float32),
    }
    return base.Variables({"encoder": enc, "decoder": dec}, {}, state)

  def quantize(self, params, x):
    """(z_e [B, gh, gw, d], codes [B, gh, gw], e_k [B, gh, gw, d]) for normalised x;
    `params` holds "encoder" and "codebook" (the codebook is method_state's)."""
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
    x = (
      self.preprocess(images)
      if self.view is None
      else self.preprocess(augment.augment_batch(rng, images, self.view))
    )
    z_e, codes, e_k = self.quantize(dict(params, codebook=method_state["codebook"]), x)
    z_q = z_e + jax.lax.stop_gradient(e_k - z_e)  # straight-through (VQ-VAE eq. 3)
    recon = self.dec.apply({"params": params["decoder"]}, z_q)
    recon_mse = jnp.mean(jnp.square(recon - self.target(x)))
    commit = jnp.mean(jnp.sum(jnp.square(z_e - jax.lax.stop_gradient(e_k)), -1))
    loss = recon_mse + self.beta * commit
    onehot = jax.nn.one_hot(codes.reshape(-1), self.codebook_size)
    hist = jnp.mean(onehot, axis=0)
    perplexity = jnp.exp(-jnp.sum(hist * jnp.log(hist + 1e-10)))
    new_state = self.update_codebook(method_state, jax.lax.stop_gradient(z_e), onehot, rng)
    metrics = {"loss": loss, "recon_mse": recon_mse, "commitment": commit, "perplexity": perplexity}
    return loss, base.LossAux(batch_stats, new_state, metrics, z_e.mean(axis=(1, 2)))

  def target(self, x):
    """What the decoder reconstructs: x, or each patch of x standardised (`norm_pix`)."""
    if not self.norm_pix:
      return x
    p = self.patch_size
    patches = mae.patch_targets(x, p, norm_pix=True)
    return vit_lib.unpatchify(patches, p, (x.shape[1] // p, x.shape[2] // p))

  def update_codebook(self, state, z_e, onehot, rng):
    """EMA k-means codebook (VQ-VAE App. A.1 / VQ-VAE-2): N_k ← γN_k + (1−γ)n_k,
    m_k ← γm_k + (1−γ)Σ z_e, e_k = m_k / N_k (l2-normalised). Codes whose N_k falls below
    `dead_threshold`·(mean usage) are restarted at random encoder outputs of the batch
    (a standard fix for dead codes), so the small codebook stays in use."""
    flat = z_e.reshape(-1, self.code_dim)
    g = self.ema_decay
    count = g * state["ema_count"] + (1 - g) * onehot.sum(0)
    total = g * state["ema_sum"] + (1 - g) * (onehot.T @ flat)
    book = _l2n(total / count[:, None].clip(1e-6))
    expected = flat.shape[0] / self.codebook_size
    dead = count < self.dead_threshold * expected
    picks = flat[
      jax.random.randint(jax.random.fold_in(rng, 7), (self.codebook_size,), 0, flat.shape[0])
    ]
    book = jnp.where(dead[:, None], picks, book)
    total = jnp.where(dead[:, None], picks * expected, total)
    count = jnp.where(dead, expected, count)
    return {"codebook": book, "ema_sum": total, "ema_count": count}

  def encode(self, params, batch_stats, images):
    del batch_stats
    z_e = _l2n(self.enc.apply({"params": params["encoder"]}, self.preprocess(images)))
    return z_e.mean(axis=(1, 2))

  def collapse_warning(self, metrics: dict) -> str | None:
    if metrics.get("perplexity", 2.0) < 2.0:
      return (
        f"codebook perplexity {metrics['perplexity']:.2f}: nearly every patch maps to the same code"
      )
    return None


# A per-patch VQ-VAE with an EMA k-means codebook (BEiT uses DALL-E's 8192-code tokenizer).
# fmt: off
DEFAULTS = dict(
  patch_size=16, codebook_size=8192, code_dim=32, hidden=256, beta=0.25, ema_decay=0.99,
  dead_threshold=0.03, norm_pix=False,
)
# fmt: on


def create(config, total_steps: int) -> VQTokenizer:
  del total_steps
  m = config.method
  p = int(m.patch_size)
  hidden = int(m.hidden)
  return VQTokenizer(
    enc=VQEncoder(hidden, int(m.code_dim), p),
    dec=VQDecoder(hidden, p),
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
    codebook_size=int(m.codebook_size),
    beta=float(m.beta),
    ema_decay=float(m.ema_decay),
    dead_threshold=float(m.dead_threshold),
    # runs saved before the option existed reconstructed pixels
    norm_pix=bool(m.get("norm_pix", False)),
  )
