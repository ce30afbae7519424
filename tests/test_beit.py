"""BEiT: the VQ-VAE tokenizer stage, loading it, blockwise masking, masked-only CE, a run."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import train
from sslx.methods import beit, beit_tokenizer
from tests.helpers import assert_learns, override, tiny


def tokenizer_config(steps=2):
  """The tiny tokenizer preset with a 16-code, 8-dimensional codebook and no evaluation."""
  small = {"method.codebook_size": 16, "method.code_dim": 8, "method.hidden": 8}
  return tiny("beit_tokenizer", total_steps=steps, evals={}, **small)


def beit_config(tok_dir, steps=4):
  return tiny("beit", total_steps=steps, **{"method.tokenizer_workdir": str(tok_dir)})


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  results = train.train_and_evaluate(tokenizer_config(steps=6), str(d))
  assert results["train_loss_last"] < results["train_loss_first"]
  return d


def images(n=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), np.uint8))


def test_tokenizer_gives_one_code_per_patch():
  tok = beit_tokenizer.create(tokenizer_config(), 0)
  x = images()
  v = tok.init(jax.random.PRNGKey(0), x)
  codes = tok.tokenize(dict(v.params, codebook=v.method_state["codebook"]), tok.preprocess(x))
  assert codes.shape == (4, 64) and codes.dtype == jnp.int32
  assert int(codes.min()) >= 0 and int(codes.max()) < 16
  loss, aux = tok.loss(v.params, {}, v.method_state, x, jax.random.PRNGKey(1), 0)
  assert aux.method_state["codebook"].shape == (16, 8)
  assert np.isfinite(float(loss)) and aux.features.shape == (4, 8)


def test_norm_pix_tokenizer_reconstructs_standardised_patches():
  """With norm_pix the decoder's target is every 4×4 patch standardised on its own: zero mean,
  unit (unbiased) variance per patch, and blind to a patch's brightness and contrast; the
  recon_mse metric is the decoder's error against that target."""

  def with_norm_pix(on):
    cfg = tokenizer_config()
    cfg.unlock()
    cfg.method.norm_pix = on
    return beit_tokenizer.create(cfg, 0)

  tok = with_norm_pix(True)
  x = tok.preprocess(images())
  t = np.asarray(tok.target(x)).reshape(4, 8, 4, 8, 4, 3).transpose(0, 1, 3, 2, 4, 5)
  t = t.reshape(4, 64, 48)
  np.testing.assert_allclose(t.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(t.var(-1, ddof=1), 1.0, rtol=1e-4)
  # a per-patch affine change of the pixels (brighter, more contrast) leaves the target
  scale = jnp.repeat(jnp.repeat(jnp.linspace(0.5, 2.0, 64).reshape(1, 8, 8, 1), 4, 1), 4, 2)
  np.testing.assert_allclose(tok.target(x * scale + 0.3), tok.target(x), atol=1e-4)
  # off, the target is the image itself
  assert with_norm_pix(False).target(x) is x
  tok = dataclasses.replace(tok, view=None)  # the loss on x as given, no augmentation
  v = tok.init(jax.random.PRNGKey(0), images())
  _, aux = tok.loss(v.params, {}, v.method_state, images(), jax.random.PRNGKey(1), 0)
  z_e, _, e_k = tok.quantize(dict(v.params, codebook=v.method_state["codebook"]), x)
  recon = tok.dec.apply({"params": v.params["decoder"]}, e_k)
  expected = float(jnp.mean(jnp.square(recon - tok.target(x))))
  np.testing.assert_allclose(float(aux.metrics["recon_mse"]), expected, rtol=1e-4)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="train it first"):
    beit.create(beit_config(tmp_path / "nothing"), 0)
  with pytest.raises(ValueError, match="tokenizer_workdir is empty"):
    beit.create(beit_config(""), 0)


def test_stage_two_loads_the_tokenizer_and_loss_is_masked_only(tok_dir):
  method = beit.create(beit_config(tok_dir), 0)
  x = images()
  v = method.init(jax.random.PRNGKey(0), x)
  xn = method.preprocess(x)
  mask = method.mask(jax.random.PRNGKey(1), xn)
  np.testing.assert_array_equal(np.asarray(mask).sum(1), round(0.4 * 64))
  logits, codes, _ = method.forward(v.params, v.method_state, xn, mask)
  assert logits.shape == (4, 64, 16) and codes.shape == (4, 64)
  # Same tokens as the stage-one tokenizer on the same images.
  tok, tok_params = beit.load_tokenizer(str(tok_dir))
  np.testing.assert_array_equal(codes, tok.tokenize(tok_params, tok.preprocess(x)))
  loss, _ = beit.masked_cross_entropy(logits, codes, mask)
  other = jnp.where(mask, codes, (codes + 1) % 16)  # change targets at visible positions
  np.testing.assert_allclose(beit.masked_cross_entropy(logits, other, mask)[0], loss, rtol=1e-6)
  flipped = jnp.where(mask, (codes + 1) % 16, codes)
  assert float(beit.masked_cross_entropy(logits, flipped, mask)[0]) != pytest.approx(float(loss))
  # The exported encoder is the ViT alone.
  assert set(v.params) == {"encoder", "mask_token", "head"}
  assert method.encode(v.params, {}, x).shape == (4, 32)


@pytest.mark.slow
def test_short_cpu_run_learns(tok_dir, tmp_path):
  config = override(
    beit_config(tok_dir, steps=12),
    batch_size=32,
    **{"optimizer.warmup_epochs": 0.0, "optimizer.warmup_steps": 1},
  )
  # 12 steps cut the held-out masked-token cross-entropy by 0.558 (seed 0); about half is
  # asked.
  assert_learns(config, tmp_path, margin=0.28, measured=0.558)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["steps"] == 12 and "knn@5" in saved
