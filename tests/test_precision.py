"""Mixed precision (bf16 compute, fp32 params and loss), per-block rematerialisation, and a
ViT-g-sized model that initialises born sharded over an 8-device FSDP mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import ad_checkpoint  # saved_residuals: what reverse mode keeps

from sslx import methods, models, train
from tests.helpers import tiny_simclr

VIT = {"name": "vit_tiny", "patch_size": 8, "dim": 64, "depth": 2, "num_heads": 2}
RESNET = {"name": "resnet18", "stem": "cifar", "widths": (8, 16, 16, 32)}


def simclr(model: dict, **model_overrides):
  c = tiny_simclr()
  c.model = dict(model, **model_overrides)
  return methods.get("simclr").create(c, total_steps=10)


def images(n=8, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (n, 32, 32, 3), 0, 256).astype(jnp.uint8)


def loss_and_grads(method, v, x):
  fn = lambda p: method.loss(p, v.batch_stats, {}, x, jax.random.PRNGKey(2), 0)
  (loss, aux), grads = jax.jit(jax.value_and_grad(fn, has_aux=True))(v.params)
  return loss, aux, grads


# Loss rtol and least gradient cosine per model. bf16 has an 8-bit mantissa (~0.4% per
# rounding), and how far the loss and gradient move depends on the CPU's bf16 arithmetic.
# Measured on an AMD EPYC with AVX512-BF16: ViT loss 0.05% off, cosine 0.996; ResNet (its
# BatchNorm over 16 views amplifies the rounding) 1.1% and 0.91, where the CPU these bounds
# were first set on gave under 1% and 0.95. The bounds leave about twice the worst error; the
# same fp32 network on another batch moves the loss by 2% (ViT) and 50% (ResNet), and an
# unrelated gradient has a cosine of ~0.
@pytest.mark.parametrize(
  "model, rtol, least_cos", [(VIT, 1e-2, 0.95), (RESNET, 2.5e-2, 0.8)], ids=["vit", "resnet"]
)
def test_bf16_compute_keeps_fp32_params_and_loss_close_to_fp32(model, rtol, least_cos):
  x = images()
  fp32, bf16 = simclr(model), simclr(model, dtype="bfloat16")
  v = jax.jit(fp32.init)(jax.random.PRNGKey(1), x)
  v16 = jax.jit(bf16.init)(jax.random.PRNGKey(1), x)
  # Same parameters, stored in float32 either way: the optimizer updates fp32 master weights.
  for a, b in zip(jax.tree.leaves(v.params), jax.tree.leaves(v16.params)):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  l32, _, g32 = loss_and_grads(fp32, v, x)
  l16, aux16, g16 = loss_and_grads(bf16, v, x)
  assert l16.dtype == jnp.float32 and aux16.features.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
  assert float(l16) == pytest.approx(float(l32), rel=rtol)
  assert float(l16) != float(l32)  # it really computed in bf16
  flat32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g32)])
  flat16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g16)])
  cos = flat32 @ flat16 / np.linalg.norm(flat32) / np.linalg.norm(flat16)
  assert cos > least_cos, cos


def test_bf16_compute_really_runs_the_matmuls_in_bf16():
  model = models.create_model(
    "vit_tiny", patch_size=8, dim=32, depth=1, num_heads=2, dtype="bfloat16"
  )
  x = jnp.zeros((2, 32, 32, 3))
  v = model.init(jax.random.PRNGKey(0), x, train=False)
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(v, x).as_text()
  assert "bf16" in hlo and "dot_general" in hlo
  out = model.apply(v, x, train=False)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(out))


@pytest.mark.parametrize("model", [VIT, RESNET], ids=["vit", "resnet"])
@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_gives_the_same_loss_and_gradients(model, remat):
  x = images()
  plain, rem = simclr(model), simclr(model, remat=remat)
  v = jax.jit(plain.init)(jax.random.PRNGKey(1), x)
  v_rem = jax.jit(rem.init)(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(v.params) == jax.tree.structure(v_rem.params)  # same names
  l0, aux0, g0 = loss_and_grads(plain, v, x)
  l1, aux1, g1 = loss_and_grads(rem, v, x)
  assert float(l1) == pytest.approx(float(l0), rel=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(aux0.batch_stats), jax.tree.leaves(aux1.batch_stats)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_remat_shrinks_what_the_backward_pass_keeps():
  """JAX's own accounting of the residuals the gradient saves from the forward pass: per-block
  remat keeps each block's input (and the weights) instead of every intermediate; "dots" keeps
  the matmul outputs too. (XLA:CPU merges the recomputation back, so the compiled CPU program
  shows no saving; on GPU/TPU the residuals are what the step holds in memory.)"""
  x = images(8)
  saved = {}
  for remat in ("none", "block", "dots"):
    c = tiny_simclr()
    c.augment.enabled = False
    c.model = dict(VIT, depth=3, remat=remat)
    method = methods.get("simclr").create(c, total_steps=10)
    v = jax.jit(method.init)(jax.random.PRNGKey(1), x)
    fn = lambda p: method.loss(p, v.batch_stats, {}, x, jax.random.PRNGKey(2), 0)[0]
    residuals = ad_checkpoint.saved_residuals(fn, v.params)
    saved[remat] = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a, _ in residuals)
  assert saved["block"] < 0.25 * saved["none"], saved
  assert saved["block"] < saved["dots"] < 0.6 * saved["none"], saved


def test_bad_dtype_and_remat_are_named():
  with pytest.raises(ValueError, match="model.dtype must be one of"):
    models.create_model("vit_tiny", dtype="float16")
  with pytest.raises(ValueError, match="model.remat must be one of"):
    models.create_model("resnet18", remat="yes")


def test_vit_giant_initialises_born_sharded_over_an_fsdp_mesh():
  """ViT-g (1536 wide, 40 deep: 1.1B parameters, 4.5 GB in float32, 13.5 GB with AdamW's two
  moments) on `[("data", -1), ("fsdp", 8)]` with every large weight fsdp-sharded: each device
  holds 1/8 of the state, and XLA's memory accounting of the compiled sharded initialiser shows
  no device ever holds more than a small fraction of one full copy of the parameters."""
  c = tiny_simclr()
  c.model = {"name": "vit_giant", "patch_size": 16}
  c.method.projector_bn = False
  c.mesh = [("data", -1), ("fsdp", 8)]
  c.sharding_rules = [(".*", "fsdp")]
  c.optimizer.name = "adamw"
  sample = np.zeros((2, 16, 16, 3), np.uint8)  # one patch: the init's forward pass is tiny
  setup = train.build(c, sample, num_examples=64, num_classes=10)
  assert dict(setup.mesh.shape) == {"data": 1, "fsdp": 8}
  abstract = jax.eval_shape(lambda: train.create_state(setup, 0, sample))
  n_params = sum(a.size for a in jax.tree.leaves(abstract.params["model"]["encoder"]))
  assert 1.10e9 < n_params < 1.15e9, n_params

  def nbytes(tree, shardings, per_device):
    total = 0
    for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
      shape = s.shard_shape(a.shape) if per_device else a.shape
      total += int(np.prod(shape)) * a.dtype.itemsize
    return total

  full = nbytes(abstract, setup.state_sharding, False)
  per_device = nbytes(abstract, setup.state_sharding, True)
  assert full > 13e9
  assert per_device < full / 8 * 1.01, (per_device, full)  # optimizer state sharded like params
  # Compile (never run) the sharded initialiser: its per-device outputs are the 1/8 shards and
  # its scratch space stays far below one unsharded copy of the parameters (4.5 GB; measured
  # 0.58 GB, the largest per-layer random draws).
  # (never run, so LLVM need not optimise it: level 0 compiles in about half the time)
  init = jax.jit(
    lambda rng, x: train.init_state(setup.method, setup.tx, rng, x, num_classes=10),
    out_shardings=setup.state_sharding,
    compiler_options={"xla_backend_optimization_level": 0},
  )
  mem = init.lower(jax.random.PRNGKey(0), sample).compile().memory_analysis()
  assert mem.output_size_in_bytes < full / 8 * 1.01
  assert mem.temp_size_in_bytes < 0.25 * n_params * 4, mem.temp_size_in_bytes
