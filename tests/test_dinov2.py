"""DINOv2-style: Sinkhorn-Knopp, KoLeo, iBOT's masked-patch loss, the masked ViT and CNN, the
EMA teacher, sharding and a short learning run."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import models
from sslx.methods import dinov2
from tests.helpers import assert_learns, assert_method_state_gets_no_gradient, experiment, tiny
from tests.test_dino import assert_steps_close, batches, one_step, sgd, tiny_dino


def tiny_dinov2(**overrides):
  return tiny_dino(name="dinov2", **overrides)


def numpy_sinkhorn(logits, temp, iters, weights=None):
  q = np.exp((logits - logits.max()) / temp).astype(np.float64)
  w = np.ones(len(q)) if weights is None else weights.astype(np.float64)
  q = q * w[:, None]
  n, k = w.sum(), q.shape[1]
  q /= q.sum()
  for _ in range(iters):
    q /= q.sum(0, keepdims=True)
    q /= k
    q /= np.maximum(q.sum(1, keepdims=True), 1e-300)
    q /= n
  return q * n


def test_sinkhorn_knopp_rows_and_columns():
  rng = np.random.default_rng(0)
  m, k = 48, 6
  logits = rng.normal(size=(m, k)).astype(np.float32)
  logits[:, 0] += 2.0  # one prototype favoured by every sample
  q3 = np.asarray(dinov2.sinkhorn_knopp(jnp.asarray(logits), 0.5, 3))
  np.testing.assert_allclose(q3, numpy_sinkhorn(logits, 0.5, 3), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(q3.sum(1), 1.0, rtol=1e-5)  # each sample: a distribution
  q50 = np.asarray(dinov2.sinkhorn_knopp(jnp.asarray(logits), 0.5, 50))
  np.testing.assert_allclose(q50.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(q50.sum(0), m / k, rtol=1e-3)  # equal share per prototype
  # Plain softmax would give prototype 0 most of the mass; SK equalises it.
  soft = jax.nn.softmax(logits / 0.5, axis=-1).sum(0)
  assert soft[0] > 2 * m / k and abs(q3.sum(0)[0] - m / k) < abs(soft[0] - m / k)
  # Weights: invalid rows come back zero and M counts the valid ones only.
  w = (np.arange(m) % 3 != 0).astype(np.float32)
  qw = np.asarray(dinov2.sinkhorn_knopp(jnp.asarray(logits), 0.5, 50, weights=jnp.asarray(w)))
  assert np.all(qw[w == 0] == 0)
  np.testing.assert_allclose(qw[w == 1].sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(qw.sum(0), w.sum() / k, rtol=1e-3)
  np.testing.assert_allclose(qw, numpy_sinkhorn(logits, 0.5, 50, w), rtol=1e-4, atol=1e-7)


def test_koleo_against_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(10, 5)).astype(np.float32)
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  dist = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
  np.fill_diagonal(dist, np.inf)
  ref = -np.mean(np.log(dist.min(1) + 1e-8))
  np.testing.assert_allclose(float(dinov2.koleo_loss(jnp.asarray(x))), ref, rtol=1e-4)
  # Spreading the points out lowers it: it rewards a uniform spread over the sphere.
  bunched = x * 0.05 + np.array([5.0, 0, 0, 0, 0], np.float32)
  assert float(dinov2.koleo_loss(jnp.asarray(bunched))) > float(dinov2.koleo_loss(x))


def test_koleo_over_fixed_groups_does_not_depend_on_the_global_batch():
  """koleo_group_size: the loss is the mean of per-group KoLeo, so a global batch made of more
  groups (more devices, same per-group batch) keeps the value and the meaning of its weight."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
  per_group = [float(dinov2.koleo_loss(x[i : i + 8])) for i in range(0, 32, 8)]
  np.testing.assert_allclose(float(dinov2.grouped_koleo_loss(x, 8)), np.mean(per_group), rtol=1e-5)
  # Two devices' worth of the same 8 images: unchanged with groups; the whole-batch KoLeo
  # instead sees every image's twin at distance 0 and explodes.
  twice = jnp.concatenate([x[:8], x[:8]])
  np.testing.assert_allclose(
    float(dinov2.grouped_koleo_loss(twice, 8)), float(dinov2.koleo_loss(x[:8])), rtol=1e-6
  )
  assert float(dinov2.koleo_loss(twice)) > 5 + float(dinov2.koleo_loss(x[:8]))
  # A batch no larger than the group (or group 0) is one group.
  assert float(dinov2.grouped_koleo_loss(x, 64)) == float(dinov2.koleo_loss(x))
  assert float(dinov2.grouped_koleo_loss(x, 0)) == float(dinov2.koleo_loss(x))
  with pytest.raises(ValueError, match="koleo_group_size=24"):
    dinov2.create(tiny_dinov2(**{"method.koleo_group_size": 24, "batch_size": 32}), 10)


def test_ibot_loss_only_on_masked_positions():
  rng = np.random.default_rng(2)
  m, p, k = 3, 6, 5
  s = rng.normal(size=(m, p, k)).astype(np.float32)
  t = rng.dirichlet(np.ones(k), size=(m, p)).astype(np.float32)
  mask = np.zeros((m, p), bool)
  mask[0, [1, 4]] = True
  mask[1, [0]] = True  # crop 2 has no masked patch
  loss = float(dinov2.ibot_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(mask), 0.1))
  logp = s / 0.1 - np.log(np.exp(s / 0.1).sum(-1, keepdims=True))
  ce = -(t * logp).sum(-1)
  ref = np.mean([ce[i][mask[i]].sum() / max(mask[i].sum(), 1) for i in range(m)])
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  # Unmasked positions do not matter, even if their logits are wild (or non-finite).
  s2 = np.where(mask[..., None], s, rng.normal(size=s.shape) * 100).astype(np.float32)
  s2[2, 3] = np.inf
  np.testing.assert_allclose(
    float(dinov2.ibot_loss(jnp.asarray(s2), jnp.asarray(t), jnp.asarray(mask), 0.1)),
    loss,
    rtol=1e-6,
  )
  g = jax.grad(lambda x: dinov2.ibot_loss(x, jnp.asarray(t), jnp.asarray(mask), 0.1))(
    jnp.asarray(s)
  )
  assert float(jnp.abs(g[~mask]).max()) == 0.0 and float(jnp.abs(g[mask]).min()) > 0.0


def test_masks_and_masked_positions():
  masks = np.asarray(dinov2.random_token_masks(jax.random.PRNGKey(0), 400, 64, 0.5, (0.1, 0.5)))
  counts = masks.sum(1)
  assert 0.35 < np.mean(counts > 0) < 0.65  # about half the crops
  assert counts.max() <= 32 and counts[counts > 0].min() >= 6  # ⌊r·64⌋, r ∈ [0.1, 0.5)
  ids, valid = dinov2.masked_positions(jnp.asarray(masks), 32)
  ids, valid = np.asarray(ids), np.asarray(valid)
  for i in range(20):
    np.testing.assert_array_equal(ids[i][valid[i]], np.flatnonzero(masks[i]))
    assert valid[i].sum() == counts[i]


def test_masked_vit_is_the_vit_plus_a_mask_token():
  vit = models.create_model("vit_tiny", patch_size=8, dim=16, depth=2, num_heads=2)
  mvit = dinov2.masked_backbone(vit)
  # jitted: op-by-op dispatch of even a tiny ViT costs tens of seconds on 8 fake devices
  minit = jax.jit(mvit.init, static_argnames="train")
  mapply = jax.jit(mvit.apply, static_argnames="train")
  vapply = jax.jit(vit.apply, static_argnames="train")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  mask = jnp.zeros((2, 16), bool).at[0, 3].set(True)
  params = minit(jax.random.PRNGKey(1), x, train=False, token_mask=mask)["params"]
  plain_init = jax.eval_shape(functools.partial(vit.init, train=False), jax.random.PRNGKey(1), x)
  assert set(params) == set(plain_init["params"]) | {"mask_token"}
  plain = {k: v for k, v in params.items() if k != "mask_token"}
  ref = vapply({"params": plain}, x, train=False)["tokens"]
  np.testing.assert_allclose(
    mapply({"params": params}, x, train=False)["tokens"], ref, rtol=1e-5, atol=1e-6
  )
  masked = mapply({"params": params}, x, train=False, token_mask=mask)["tokens"]
  assert not np.allclose(masked[0], ref[0]) and np.allclose(masked[1], ref[1], atol=1e-6)
  g = jax.jit(
    jax.grad(
      lambda p: jnp.sum(mapply({"params": p}, x, train=False, token_mask=mask)["tokens"] ** 2)
    )
  )(params)
  assert float(jnp.abs(g["mask_token"]).max()) > 0
  with pytest.raises(ValueError, match="a ViT .* or the demo CNN .*got ResNet"):
    dinov2.masked_backbone(models.create_model("resnet18"))


def test_masked_convnet_paints_the_masked_cells_with_a_learned_colour():
  net = models.create_model("convnet", widths=(4, 8, 8, 16))
  masked = dinov2.masked_backbone(net)
  assert masked.patch_size == 8  # the last block runs on a 4x4 grid of a 32 px image
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  mask = jnp.zeros((2, 16), bool).at[0, 6].set(True).at[1, 15].set(True)
  variables = jax.jit(masked.init, static_argnames="train")(
    jax.random.PRNGKey(1), x, train=False, token_mask=mask
  )
  params = dict(variables["params"])
  plain_init = jax.eval_shape(functools.partial(net.init, train=False), jax.random.PRNGKey(1), x)
  assert set(params) == set(plain_init["params"]) | {"mask_token"}
  params["mask_token"] = jnp.asarray([0.5, -1.0, 2.0])
  stats = variables["batch_stats"]
  plain = {k: v for k, v in params.items() if k != "mask_token"}
  apply = jax.jit(masked.apply, static_argnames="train")
  out = apply({"params": params, "batch_stats": stats}, x, train=False, token_mask=mask)
  # Reference: the plain CNN on images painted by hand (cell 6 = row 1, column 2 of the 4x4
  # grid: pixels [8:16, 16:24]; cell 15 = pixels [24:32, 24:32]).
  painted = (
    x.at[0, 8:16, 16:24].set(params["mask_token"]).at[1, 24:32, 24:32].set(params["mask_token"])
  )
  ref = net.apply({"params": plain, "batch_stats": stats}, painted, train=False)
  for key in ("pre_logits", "patch_tokens"):
    np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert out["patch_tokens"].shape == (2, 16, 16)
  unmasked = net.apply({"params": plain, "batch_stats": stats}, x, train=False)
  np.testing.assert_allclose(
    apply({"params": params, "batch_stats": stats}, x, train=False)["pre_logits"],
    unmasked["pre_logits"],
    rtol=1e-5,
    atol=1e-6,
  )
  g = jax.grad(
    lambda p: jnp.sum(
      masked.apply({"params": p, "batch_stats": stats}, x, train=False, token_mask=mask)[
        "pre_logits"
      ]
      ** 2
    )
  )(params)
  assert float(jnp.abs(g["mask_token"]).max()) > 0
  with pytest.raises(ValueError, match="4x4 cells of 8 px"):
    masked.apply({"params": params, "batch_stats": stats}, x, train=False, token_mask=mask[:, :4])
  with pytest.raises(ValueError, match="mask_token=True"):
    net.apply({"params": plain, "batch_stats": stats}, x, train=False, token_mask=mask)


def test_cnn_step_trains_the_mask_colour_and_shards_exactly():
  """The default's backbone: one step of the CNN with the iBOT term moves the mask colour,
  and the same step on 8 devices equals it (global BatchNorm, KoLeo groups, masks)."""
  cnn = {"model": {"name": "convnet", "widths": (4, 8, 8, 16)}, "batch_size": 16}
  config = sgd(tiny_dinov2(**cnn))
  setup, before, one, m1 = one_step(config, batches(config)[0], mesh=[("data", 1)])
  assert m1["ibot_loss"] > 0 and m1["masked_fraction"] > 0
  assert float(jnp.abs(one.params["model"]["backbone"]["mask_token"]).max()) > 0
  _, _, eight, m8 = one_step(sgd(tiny_dinov2(**cnn)), batches(config)[0], mesh=[("data", 8)])
  for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
  assert_steps_close(eight, one, before)


# DINOv2's own choices (Sinkhorn-Knopp, a separate iBOT head); the preset's centering runs in
# the short end-to-end test.
_STEP_VARIANT = {
  "method.centering": "sinkhorn_knopp",
  "method.separate_ibot_head": True,
  "method.patch_out_dim": 32,
}


@pytest.fixture(scope="module")
def dinov2_step():
  """One one-device step, shared by the teacher test and the sharding comparison."""
  config = sgd(tiny_dinov2(**_STEP_VARIANT))
  return (config,) + one_step(config, batches(config)[0], mesh=[("data", 1)])


def test_teacher_moves_only_by_ema_and_gets_no_gradient(dinov2_step):
  config, setup, before, after, metrics = dinov2_step
  m = float(setup.method.momentum(0))
  for a, s, b in zip(
    jax.tree.leaves(before.method_state["teacher"]["params"]),
    jax.tree.leaves(after.params["model"]),
    jax.tree.leaves(after.method_state["teacher"]["params"]),
  ):
    np.testing.assert_allclose(b, m * a + (1 - m) * s, rtol=1e-6, atol=1e-7)
  for key in ("dino_loss", "ibot_loss", "koleo_loss", "masked_fraction"):
    assert np.isfinite(metrics[key]), key
  assert metrics["masked_fraction"] > 0
  assert np.any(after.method_state["center"]) and np.any(after.method_state["patch_center"])
  images = jnp.asarray(batches(config)[0]["image"])
  assert_method_state_gets_no_gradient(setup.method, before, images)


def test_sharded_step_equals_single_device_with_sinkhorn_knopp(dinov2_step):
  config, _, before, one, m1 = dinov2_step
  _, _, eight, m8 = one_step(
    sgd(tiny_dinov2(**_STEP_VARIANT)), batches(config)[0], mesh=[("data", 8)]
  )
  assert "ibot_head" in one.params["model"]
  for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
  assert_steps_close(eight, one, before)


def test_variants_give_the_vit_sizes():
  g = experiment("dinov2", "imagenet,variant=g,patch=14")
  assert (g.model.name, g.model.dim, g.model.depth, g.model.num_heads) == ("vit_huge", 1536, 40, 24)
  assert g.model.patch_size == 14 and g.augment.local_crop_size == 98
  assert experiment("dinov2", "imagenet").model.name == "vit_large"
  assert experiment("dinov2", "cifar10,variant=B").model.name == "vit_base"
  with pytest.raises(ValueError, match="variant"):
    experiment("dinov2", "cpu,variant=XL")


@pytest.mark.slow
def test_short_cpu_run_learns(tmp_path):
  config = tiny(
    "dinov2",
    total_steps=12,
    batch_size=32,
    **{"augment.num_local_crops": 2, "optimizer.warmup_epochs": 0.0},
  )
  # The default's CNN: 12 steps cut the held-out loss against the trained teacher by 0.363
  # (seed 0); about half of it is asked.
  assert_learns(config, tmp_path, margin=0.18, measured=0.363)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["steps"] == 12 and "knn@5" in saved
