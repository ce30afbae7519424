"""BEiT (Bao et al. 2022, "BEiT: BERT Pre-Training of Image Transformers"), stage two.

  tokens  z = Tokenizer(x) ∈ V^{gh·gw}: one discrete code per patch, from the VQ-VAE trained
          in stage one (sslx/methods/beit_tokenizer.py; BEiT used the DALL-E dVAE, §2.1)
  mask    M: blockwise masking of ~40% of the patches (§2.3, Algorithm 1; exact count here)
  input   patch embeddings with e_i replaced by a learned e[M] for i ∈ M (§2.3), + positions,
          CLS, the ViT's blocks
  loss    max Σ_{i∈M} log p(z_i | x^M) — softmax cross-entropy of a linear head on the final
          hidden vectors h_i^L at masked positions only (§2.3 eq. 1)

The tokenizer is loaded in `create` from `config.method.tokenizer_workdir` (its config.json
and latest checkpoint, written by the normal trainer); its parameters live in
`method_state["tokenizer"]` (no gradient, checkpointed with the run). Parameters:
{"encoder": ViT params, "mask_token": [1, 1, D], "head": Dense D→|V|}. `encode` applies only
`params["encoder"]` to the full image and returns the ViT's `pre_logits` (presets:
`model.pool="mean"`, the mean of patch tokens — BEiT's linear-probe feature, §3.1).

Config (`config.method`): tokenizer_workdir, mask_ratio (0.4), min_block (16 patches).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sslx import augment, checkpointing, losses, models, paths
from sslx.methods import base, beit_tokenizer
from sslx.models import vit as vit_lib


def load_tokenizer(workdir: str):
  """(tokenizer method, {"encoder", "codebook"} as numpy) from a stage-one run directory."""
  if not workdir:
    raise ValueError(
      "method.tokenizer_workdir is empty: train the tokenizer first with\n"
      "  python -m sslx.main --config=experiments/beit_tokenizer.py "
      "--workdir=/tmp/beit-tok\nand pass "
      "--config.method.tokenizer_workdir=/tmp/beit-tok"
    )
  cfg_path = paths.join(workdir, "config.json")
  mngr = (
    checkpointing.manager(workdir, async_save=False)
    if paths.isdir(paths.join(workdir, "checkpoints"))
    else None
  )
  step = mngr.latest_step() if mngr is not None else None
  if not paths.exists(cfg_path) or step is None:
    raise FileNotFoundError(
      f"method.tokenizer_workdir={workdir!r} holds no trained tokenizer (config.json and a "
      "checkpoint are needed): train it first with\n  python -m sslx.main "
      f"--config=experiments/beit_tokenizer.py --workdir={workdir}"
    )
  tok_config = ml_collections.ConfigDict(paths.read_json(cfg_path))
  if tok_config.method.name != "beit_tokenizer":
    raise ValueError(f"{workdir} holds a {tok_config.method.name!r} run, not a beit_tokenizer")
  tokenizer = beit_tokenizer.create(tok_config, total_steps=0)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = restored["state"]
  params = {
    "encoder": jax.tree.map(np.asarray, state["params"]["model"]["encoder"]),
    "codebook": np.asarray(state["method_state"]["codebook"]),
  }
  return tokenizer, params


@dataclasses.dataclass(frozen=True)
class BEiT(base.MaskTokenMethod):
  encoder: vit_lib.ViT
  head: nn.Dense
  tokenizer: beit_tokenizer.VQTokenizer
  tokenizer_params: Any = dataclasses.field(compare=False, hash=False, repr=False)
  view: augment.ViewParams | None = None
  preprocess: base.Preprocess | None = None
  mask_ratio: float = 0.4
  min_block: int = 16

  def init(self, rng, images) -> base.Variables:
    tok = jax.tree.map(jnp.asarray, self.tokenizer_params)
    return base.Variables(self.init_params(rng, images), {}, {"tokenizer": tok})

  def forward(self, params, method_state, x, mask, rng=None):
    """(logits [B, N, |V|], visual tokens [B, N], pre_logits [B, D]) for normalised x. With
    `rng` the encoder runs in training mode (stochastic depth), else in eval mode."""
    codes = jax.lax.stop_gradient(
      self.tokenizer.tokenize(
        method_state["tokenizer"],
        self.tokenizer.preprocess(
          x * jnp.asarray(self.preprocess.std) + jnp.asarray(self.preprocess.mean)
        ),
      )
    )
    logits, features = self.predict(params, x, mask, rng)
    return logits, codes, features

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    aug_rng, mask_rng, drop_rng = jax.random.split(rng, 3)
    raw = base.view_pixels(aug_rng, images, self.view)
    x = self.preprocess(raw)
    mask = self.mask(mask_rng, x)
    logits, codes, features = self.forward(params, method_state, x, mask, drop_rng)
    loss, acc = masked_cross_entropy(logits, codes, mask)
    return loss, base.LossAux(batch_stats, method_state, {"loss": loss, "mim_acc": acc}, features)


def masked_cross_entropy(logits, labels, mask):
  """(mean CE over masked positions, accuracy there); logits [B, N, V], labels [B, N]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, :, None], axis=-1)[..., 0]
  acc = losses.masked_mean((jnp.argmax(logits, -1) == labels).astype(nll.dtype), mask)
  return losses.masked_mean(nll, mask), acc


# BEiT-base (§2.5): 40% of the patches masked in blocks of at least 16; the stage-one tokenizer
# is read from tokenizer_workdir (a beit_tokenizer run).
# fmt: off
DEFAULTS = dict(
  tokenizer_workdir="", mask_ratio=0.4, min_block=16,
)
# fmt: on


def create(config, total_steps: int) -> BEiT:
  del total_steps
  m = config.method
  encoder = models.create_model(config.model.name, **base.model_kwargs(config.model))
  if not isinstance(encoder, vit_lib.ViT):
    raise ValueError(f"BEiT needs a ViT encoder (model.name vit_*), got {config.model.name!r}")
  tokenizer, tok_params = load_tokenizer(m.tokenizer_workdir)
  if tokenizer.patch_size != encoder.patch_size:
    raise ValueError(
      f"the tokenizer has one code per {tokenizer.patch_size} px patch, the "
      f"ViT patch size is {encoder.patch_size}: they must match"
    )
  return BEiT(
    encoder=encoder,
    head=vit_lib.FlatDense(tokenizer.codebook_size),
    tokenizer=tokenizer,
    tokenizer_params=tok_params,
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
    mask_ratio=float(m.mask_ratio),
    min_block=int(m.min_block),
  )
