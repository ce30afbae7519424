"""MAE: the asymmetric encoder, the masked-only loss, the exported encoder, a short run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.methods import mae
from tests.helpers import assert_learns, override, tiny


def tiny_config(ratio=0.75, steps=4):
  """The tiny preset with a one-block 32-wide decoder."""
  return tiny(
    "mae",
    total_steps=steps,
    **{
      "method.mask_ratio": ratio,
      "method.decoder_dim": 32,
      "method.decoder_depth": 1,
      "method.decoder_heads": 2,
    },
  )


def images(n=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), np.uint8))


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75])
def test_encoder_sequence_is_visible_patches_plus_cls(ratio):
  method = mae.create(tiny_config(ratio), total_steps=1)
  x = images()
  v = method.init(jax.random.PRNGKey(0), x)
  f = method.forward(v.params, method.preprocess(x), jax.random.PRNGKey(1))
  n = 64  # 32 px / patch 4 → 8 × 8
  assert f.latent.shape[1] == int((1 - ratio) * n) + 1
  assert f.pred.shape == f.target.shape == (4, n, 4 * 4 * 3)
  np.testing.assert_array_equal(np.asarray(f.mask).sum(1), int(ratio * n))
  assert mae.encoder_cost(method.encoder, 32, 2, ratio)["seq_len"] == int((1 - ratio) * n) + 1


def test_loss_ignores_visible_targets():
  method = mae.create(tiny_config(), total_steps=1)
  x = images()
  v = method.init(jax.random.PRNGKey(0), x)
  f = method.forward(v.params, method.preprocess(x), jax.random.PRNGKey(1))
  base_loss = mae.masked_mse(f.pred, f.target, f.mask)
  noise = jax.random.normal(jax.random.PRNGKey(2), f.target.shape) * 10
  visible_changed = f.target + noise * (~f.mask)[:, :, None]
  masked_changed = f.target + noise * f.mask[:, :, None]
  np.testing.assert_allclose(mae.masked_mse(f.pred, visible_changed, f.mask), base_loss, rtol=1e-6)
  assert abs(float(mae.masked_mse(f.pred, masked_changed, f.mask)) - float(base_loss)) > 1.0


def test_norm_pix_targets_are_standardised_per_patch():
  t = mae.patch_targets(jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3)) * 3 + 1, 4, True)
  np.testing.assert_allclose(t.mean(-1), 0.0, atol=1e-4)
  np.testing.assert_allclose(t.std(-1, ddof=1), 1.0, atol=1e-3)  # unbiased, as MAE's code


def test_exported_encoder_has_no_decoder():
  method = mae.create(tiny_config(), total_steps=1)
  x = images()
  v = method.init(jax.random.PRNGKey(0), x)
  assert set(v.params) == {"encoder", "decoder"}
  enc = mae.encoder_params(v.params)
  paths = ["/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(enc)]
  assert not any("decoder" in p or "mask_token" in p for p in paths)
  # The ViT alone consumes exactly that tree, and encode() needs nothing else.
  vit_vars = method.encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  assert jax.tree.structure(vit_vars["params"]) == jax.tree.structure(enc)
  feats = method.encode({"encoder": enc}, {}, x)
  assert feats.shape == (4, 32)


def _mae_reference_sincos(dim, side):
  """MAE's get_2d_sincos_pos_embed (models' util/pos_embed.py), without the CLS row."""
  grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float64), np.arange(side)), 0)  # w first

  def one(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1)


def test_encoder_position_embedding_is_the_fixed_sincos_table():
  import optax

  from sslx import optim
  from tests.helpers import experiment

  method = mae.create(tiny_config(), total_steps=1)
  v = method.init(jax.random.PRNGKey(0), images())
  pos = np.asarray(v.params["encoder"]["pos_embed"])[0]  # 8x8 patches of 4 px, 32 wide
  np.testing.assert_allclose(pos, _mae_reference_sincos(32, 8), atol=1e-6)
  # MAE gives it no gradient: the optimizer leaves it as it is (no weight decay either)
  c = experiment("mae")
  tx = method.wrap_optimizer(optim.make_optimizer(c.optimizer, optax.constant_schedule(1e-2), 10))
  grads = jax.tree.map(jnp.ones_like, v.params)
  updates, _ = tx.update(grads, tx.init(v.params), v.params)
  assert not np.any(np.asarray(updates["encoder"]["pos_embed"]))
  assert np.all(np.asarray(updates["encoder"]["cls_token"]) != 0)
  # a learned one on request
  learned = mae.create(override(tiny_config(), **{"method.fixed_pos_embed": False}), 1)
  lv = learned.init(jax.random.PRNGKey(0), images())
  assert np.std(np.asarray(lv.params["encoder"]["pos_embed"])) < 0.05
  assert learned.wrap_optimizer(tx) is tx


def test_masking_is_a_pure_function_of_the_rng():
  method = mae.create(tiny_config(), total_steps=1)
  x = images()
  v = method.init(jax.random.PRNGKey(0), x)
  a = method.loss(v.params, {}, {}, x, jax.random.PRNGKey(3), 0)[0]
  b = method.loss(v.params, {}, {}, x, jax.random.PRNGKey(3), 0)[0]
  c = method.loss(v.params, {}, {}, x, jax.random.PRNGKey(4), 0)[0]
  assert float(a) == float(b) and float(a) != float(c)


def test_encoder_flops_fall_with_the_mask_ratio():
  method = mae.create(tiny_config(), total_steps=1)
  full = mae.encoder_cost(method.encoder, 32, 4, 0.0)["flops"]
  masked = mae.encoder_cost(method.encoder, 32, 4, 0.75)["flops"]
  assert 3.0 < full / masked < 5.0


@pytest.mark.slow
def test_short_cpu_run_learns(tmp_path):
  config = override(
    tiny_config(steps=12),
    batch_size=32,
    **{"optimizer.warmup_epochs": 0.0, "optimizer.warmup_steps": 1},
  )
  # 12 steps cut the held-out masked-patch loss by 0.556 (seed 0); about half is asked.
  assert_learns(config, tmp_path, margin=0.28, measured=0.556)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["steps"] == 12 and "knn@5" in saved
