"""Tests for sslx.models (encoders, heads, fast conv) and sslx.xla. Tiny inputs, narrow widths."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import xla as sxla
from sslx.models import MLPHead, ResNet, available_models, create_model, fast_conv

KEY = jax.random.PRNGKey(0)
SMALL_RESNET = dict(widths=(8, 16, 32, 64))


def _init(model, x, **kw):
  return jax.jit(lambda k, a: model.init(k, a, train=False, **kw))(KEY, x)


def _shapes(model, x, **kw):
  """Output shapes of init + apply, by tracing only (no compilation)."""
  return jax.eval_shape(lambda: model.apply(model.init(KEY, x, train=False), x, train=False, **kw))


def _count(tree):
  return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(tree)))


def _param_count(name, size, **kw):
  model = create_model(name, **kw)
  shapes = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, size, size, 3)), train=False))
  return _count(shapes["params"])


# ---------------------------------------------------------------------------------- registry


def test_registry_names():
  assert set(available_models()) >= {
    "resnet18",
    "resnet34",
    "resnet50",
    "vit_tiny",
    "vit_small",
    "vit_base",
    "vit_large",
    "vit_huge",
    "convnet",
  }
  assert available_models() == sorted(available_models())


def test_unknown_model_name_lists_choices():
  with pytest.raises(ValueError) as e:
    create_model("resnet19")
  msg = str(e.value)
  assert "model.name" in msg and "'resnet19'" in msg
  assert ", ".join(available_models()) in msg


def test_unknown_kwarg_is_named():
  with pytest.raises(TypeError, match="'depht'"):
    create_model("vit_tiny", depht=2)
  with pytest.raises(TypeError, match="'stemm'"):
    create_model("resnet18", stemm="cifar")


# ---------------------------------------------------------------------------------- ResNet


@pytest.mark.parametrize("name,mult", [("resnet18", 1), ("resnet34", 1), ("resnet50", 4)])
def test_resnet_shapes_cifar_stem(name, mult):
  x = jnp.ones((2, 16, 16, 3))
  model = create_model(name, stem="cifar", **SMALL_RESNET)
  out = _shapes(model, x)
  assert set(out) == {"pre_logits", "feature_map"}
  assert out["pre_logits"].shape == (2, 64 * mult)
  # CIFAR stem keeps 16x16 through stage 1; stages 2-4 halve: 16 -> 8 -> 4 -> 2
  assert out["feature_map"].shape == (2, 2, 2, 64 * mult)
  params = jax.eval_shape(lambda: model.init(KEY, x, train=False))["params"]
  assert {"stem_conv", "stem_bn", "stage1_block1", "stage4_block2"} <= set(params)


def test_cifar_stem_keeps_resolution_until_stage2():
  x = jnp.ones((1, 16, 16, 3))
  model = create_model("resnet18", stem="cifar", widths=(8, 16, 32, 64))
  _, inter = _shapes(model, x, capture_intermediates=True)
  inter = inter["intermediates"]
  assert inter["stage1_block2"]["__call__"][0].shape == (1, 16, 16, 8)
  assert inter["stage2_block1"]["__call__"][0].shape == (1, 8, 8, 16)


def test_imagenet_stem_downsamples_by_4():
  x = jnp.ones((1, 32, 32, 3))
  model = create_model("resnet18", stem="imagenet", widths=(8, 16, 32, 64))
  out, inter = _shapes(model, x, capture_intermediates=True)
  assert inter["intermediates"]["stage1_block2"]["__call__"][0].shape == (1, 8, 8, 8)
  assert out["feature_map"].shape == (1, 1, 1, 64)


def test_resnet_width_multiplier_and_logits():
  x = jnp.ones((2, 16, 16, 3))
  model = create_model("resnet18", stem="cifar", width=0.125, num_classes=10)
  out = _shapes(model, x)
  assert out["pre_logits"].shape == (2, 64)
  assert out["logits"].shape == (2, 10)


def test_resnet_param_counts_match_torchvision():
  # torchvision resnet18 / resnet50 without the fc layer (BN affine included, stats not)
  assert _param_count("resnet18", 64, conv_impl="xla") == 11_689_512 - 513_000
  assert _param_count("resnet50", 64, conv_impl="xla") == 25_557_032 - 2_049_000


def test_zero_init_last_bn():
  x = jnp.ones((1, 8, 8, 3))
  model = ResNet(stage_sizes=(1, 1), widths=(4, 8), stem="cifar", zero_init_last_bn=True)
  p = jax.eval_shape(lambda: model.init(KEY, x, train=False))  # structure first (cheap)
  assert "bn2" in p["params"]["stage1_block1"]
  p = _init(model, x)["params"]
  assert float(jnp.abs(p["stage1_block1"]["bn2"]["scale"]).max()) == 0.0
  assert float(jnp.abs(p["stage1_block1"]["bn1"]["scale"]).min()) == 1.0


def test_batchnorm_train_vs_eval_and_stats_update():
  x = jax.random.normal(KEY, (4, 8, 8, 3)) * 3 + 1
  model = ResNet(stage_sizes=(1, 1), widths=(4, 8), stem="cifar", conv_impl="xla")
  v = _init(model, x)
  out_train, upd = model.apply(
    v, x, train=True, mutable=["batch_stats"], capture_intermediates=True
  )
  inter = upd
  out_eval = model.apply(v, x, train=False)
  assert not np.allclose(out_train["pre_logits"], out_eval["pre_logits"], atol=1e-4)
  old = v["batch_stats"]["stem_bn"]
  new = upd["batch_stats"]["stem_bn"]
  # momentum 0.9: running = 0.9 * running + 0.1 * batch statistic (over the whole batch)
  conv_out = inter["intermediates"]["stem_conv"]["__call__"][0]
  np.testing.assert_allclose(
    new["mean"], 0.9 * old["mean"] + 0.1 * conv_out.mean((0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    new["var"], 0.9 * old["var"] + 0.1 * conv_out.var((0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  # eval mode uses the running statistics and leaves them alone
  out_eval2, upd2 = model.apply(v, x, train=False, mutable=["batch_stats"])
  np.testing.assert_allclose(out_eval2["pre_logits"], out_eval["pre_logits"], rtol=1e-6)
  np.testing.assert_array_equal(upd2["batch_stats"]["stem_bn"]["mean"], old["mean"])


# ---------------------------------------------------------------------------------- fast conv


@pytest.mark.parametrize(
  "k,stride,hw", [(3, 1, 8), (3, 2, 8), (1, 1, 8), (1, 2, 8), (3, 2, 7), (7, 2, 12)]
)
def test_fast_conv_matches_lax_conv(k, stride, hw):
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(k * 10 + stride), 3)
  x = jax.random.normal(kx, (3, hw, hw, 5))
  w = jax.random.normal(kw, (k, k, 5, 6)) * 0.3

  def ref(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (stride, stride), [(k // 2, k // 2)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  y_ref = ref(x, w)
  y = jax.jit(fast_conv.conv2d, static_argnums=2)(x, w, stride)
  np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)
  dy = jax.random.normal(kd, y_ref.shape)
  g_ref = jax.vjp(ref, x, w)[1](dy)
  g = jax.jit(lambda x, w, dy: jax.vjp(lambda a, b: fast_conv.conv2d(a, b, stride), x, w)[1](dy))(
    x, w, dy
  )
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
  "k,h,wd,c", [(3, 1, 1, 5), (3, 2, 3, 5), (5, 3, 2, 5), (3, 3, 4, 5), (3, 5, 6, 3), (1, 4, 5, 5)]
)
def test_small_map_convs_match_lax_conv(k, h, wd, c):
  """Every path of small_map_conv2d: a 1x1 map, a side of 2, lax.conv; odd kernels > 3."""
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(k * 10 + h), 3)
  x = jax.random.normal(kx, (3, h, wd, c))
  w = jax.random.normal(kw, (k, k, c, 6)) * 0.3

  def ref(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (1, 1), [(k // 2, k // 2)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  y_ref = ref(x, w)
  dy = jax.random.normal(kd, y_ref.shape)
  g_ref = jax.vjp(ref, x, w)[1](dy)
  for conv in (fast_conv.im2col_conv2d, fast_conv.small_map_conv2d):
    np.testing.assert_allclose(jax.jit(conv)(x, w), y_ref, atol=1e-5, rtol=1e-5)
    g = jax.jit(lambda x, w, dy, conv=conv: jax.vjp(conv, x, w)[1](dy))(x, w, dy)
    for a, b in zip(g, g_ref):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="odd kernel"):
      conv(x, jnp.zeros((2, 2, c, 6)))


@pytest.mark.parametrize("name,kw", [("convnet", {}), ("cpc_convnet", dict(widths=(4, 8, 8, 16)))])
def test_small_cnns_im2col_and_xla_agree(name, kw):
  """The demo CNN and CPC's patch encoder: same parameters, values and gradients either way
  (8 px inputs reach the 2x2 and 1x1 maps and every path of small_map_conv2d)."""
  x = jax.random.normal(KEY, (4, 8, 8, 3))
  m_i2c = create_model(name, conv_impl="fast", **kw)
  m_xla = create_model(name, conv_impl="xla", **kw)
  v = _init(m_xla, x)
  assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(_init(m_i2c, x))
  r = jax.random.normal(jax.random.PRNGKey(3), (4, m_xla.widths[-1]))

  def loss(m):
    def f(p):
      out, _ = m.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(out["pre_logits"] * r)

    return jax.jit(jax.value_and_grad(f))(v["params"])

  (l1, g1), (l2, g2) = loss(m_i2c), loss(m_xla)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    # float32 sums in another order, amplified by BatchNorm's backward: 1e-5 of the leaf's scale
    np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.max(jnp.abs(b))), rtol=0)
  with pytest.raises(ValueError, match="conv_impl must be"):
    create_model(name, conv_impl="im2col", **kw)


def test_resnet_fast_and_xla_conv_agree():
  # one block per stage: 3x3 and 1x1 convs, strides 1 and 2, identity and projection shortcuts
  x = jax.random.normal(KEY, (4, 8, 8, 3))
  m_fast = ResNet(stage_sizes=(1, 1, 1), widths=(4, 8, 8), stem="cifar", conv_impl="fast")
  m_xla = ResNet(stage_sizes=(1, 1, 1), widths=(4, 8, 8), stem="cifar", conv_impl="xla")
  v = _init(m_xla, x)
  assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(_init(m_fast, x))

  def loss(m):
    def f(p):
      out, _ = m.apply(
        {"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
      )
      return jnp.sum(out["pre_logits"] ** 2)

    return jax.jit(jax.value_and_grad(f))(v["params"])

  (l1, g1), (l2, g2) = loss(m_fast), loss(m_xla)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------- ViT

TINY_VIT = dict(patch_size=4, depth=2)


def test_vit_shapes_and_param_names():
  x = jnp.ones((2, 16, 16, 3))
  model = create_model("vit_tiny", **TINY_VIT)
  v = jax.eval_shape(lambda: model.init(KEY, x, train=False))
  out = _shapes(model, x)
  assert set(out) == {"pre_logits", "tokens", "patch_tokens"}
  assert out["pre_logits"].shape == (2, 192)
  assert out["tokens"].shape == (2, 17, 192)
  assert out["patch_tokens"].shape == (2, 16, 192)
  p = v["params"]
  assert set(p) == {"patch_embed", "cls_token", "pos_embed", "block0", "block1", "norm"}
  assert set(p["block0"]) == {"norm1", "attn", "norm2", "mlp"}
  assert set(p["block0"]["attn"]) == {"qkv", "proj"}
  assert set(p["block0"]["mlp"]) == {"fc1", "fc2"}
  assert p["patch_embed"]["kernel"].shape == (4, 4, 3, 192)
  assert p["block0"]["mlp"]["fc1"]["kernel"].shape == (192, 768)


@pytest.mark.parametrize(
  "name,dim,heads",
  [("vit_small", 384, 6), ("vit_base", 768, 12), ("vit_large", 1024, 16), ("vit_huge", 1280, 16)],
)
def test_vit_variants(name, dim, heads):
  model = create_model(name)
  assert (model.dim, model.num_heads) == (dim, heads)
  out = _shapes(model, jnp.zeros((1, 32, 32, 3)))
  assert out["pre_logits"].shape == (1, dim)


def test_vit_base_param_count():
  # timm vit_base_patch16_224 without head: 85,798,656; we fold the CLS position embedding
  # into the CLS token (768 fewer parameters, same function class)
  assert _param_count("vit_base", 224, patch_size=16) == 85_798_656 - 768


def test_vit_mask_gathers_kept_tokens():
  x = jax.random.normal(KEY, (2, 16, 16, 3))
  model = create_model("vit_tiny", dim=64, num_heads=2, **TINY_VIT)
  v = _init(model, x)
  n, k = 16, 5
  mask = np.ones((2, n), bool)
  mask[0, [1, 4, 6, 9, 15]] = False
  mask[1, [0, 2, 3, 10, 11]] = False
  out = model.apply(v, x, train=False, mask=mask)
  assert out["tokens"].shape == (2, k + 1, 64)
  ids = np.asarray(out["ids_keep"])
  np.testing.assert_array_equal(ids, [[1, 4, 6, 9, 15], [0, 2, 3, 10, 11]])
  # same under jit with a traced mask (num_keep static) and with ids_keep
  f = jax.jit(lambda v, x, m: model.apply(v, x, train=False, mask=m, num_keep=k))
  np.testing.assert_allclose(f(v, x, mask)["tokens"], out["tokens"], atol=1e-5)
  out_ids = model.apply(v, x, train=False, mask=jnp.asarray(ids))
  np.testing.assert_allclose(out_ids["tokens"], out["tokens"], atol=1e-5)
  # equals running the transformer on the gathered tokens only: zero the patches'
  # contribution is impossible, so check against a manual recomputation
  ref = _manual_vit(v["params"], x, ids, model)
  np.testing.assert_allclose(out["tokens"], ref, atol=1e-4, rtol=1e-4)
  # traced bool mask without num_keep is an error, unequal counts too
  with pytest.raises(ValueError, match="num_keep"):
    jax.jit(lambda v, x, m: model.apply(v, x, train=False, mask=m))(v, x, mask)
  bad = mask.copy()
  bad[0, 0] = False
  with pytest.raises(ValueError, match="same number"):
    model.apply(v, x, train=False, mask=bad)


def _manual_vit(p, x, ids, model):
  """Independent numpy-ish re-implementation of the ViT forward on kept patches."""
  from sslx.models.vit import patchify

  d, h = model.dim, model.num_heads
  t = patchify(x, 4) @ p["patch_embed"]["kernel"].reshape(-1, d) + p["patch_embed"]["bias"]
  t = t + p["pos_embed"]
  t = jnp.take_along_axis(t, jnp.asarray(ids)[:, :, None], axis=1)
  t = jnp.concatenate([jnp.broadcast_to(p["cls_token"], (x.shape[0], 1, d)), t], 1)

  def ln(z, q):
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    return (z - mu) / jnp.sqrt(var + 1e-6) * q["scale"] + q["bias"]

  def dense(z, q):
    return z @ q["kernel"] + q["bias"]

  for i in range(model.depth):
    q = p[f"block{i}"]
    y = dense(ln(t, q["norm1"]), q["attn"]["qkv"])
    b, n, _ = y.shape
    y = y.reshape(b, n, 3, h, d // h).transpose(2, 0, 3, 1, 4)
    a = jax.nn.softmax(y[0] @ y[1].transpose(0, 1, 3, 2) / np.sqrt(d // h), -1)
    o = (a @ y[2]).transpose(0, 2, 1, 3).reshape(b, n, d)
    t = t + dense(o, q["attn"]["proj"])
    z = dense(ln(t, q["norm2"]), q["mlp"]["fc1"])
    z = 0.5 * z * (1 + jax.scipy.special.erf(z / np.sqrt(2)))
    t = t + dense(z, q["mlp"]["fc2"])
  return ln(t, p["norm"])


def test_vit_unmasked_matches_manual():
  x = jax.random.normal(KEY, (2, 16, 16, 3))
  model = create_model("vit_tiny", dim=64, num_heads=2, **TINY_VIT)
  v = _init(model, x)
  out = model.apply(v, x, train=False)
  ref = _manual_vit(v["params"], x, np.tile(np.arange(16), (2, 1)), model)
  np.testing.assert_allclose(out["tokens"], ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(out["pre_logits"], ref[:, 0], atol=1e-4, rtol=1e-4)


def test_vit_attention_weights():
  x = jax.random.normal(KEY, (2, 16, 16, 3))
  model = create_model("vit_tiny", dim=64, num_heads=2, **TINY_VIT)
  v = _init(model, x)
  out = model.apply(v, x, train=False, return_attention=True)
  att = out["attention"]
  assert att.shape == (2, 2, 17, 17)
  np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
  assert float(att.min()) >= 0.0


def test_vit_position_embedding_resizes():
  model = create_model("vit_tiny", dim=32, num_heads=2, **TINY_VIT)
  v = _init(model, jnp.ones((1, 16, 16, 3)))
  out = jax.eval_shape(lambda: model.apply(v, jnp.ones((1, 8, 8, 3)), train=False))
  assert out["tokens"].shape == (1, 5, 32)


def test_vit_tanh_gelu_option_differs():
  x = jax.random.normal(KEY, (1, 8, 8, 3))
  m1 = create_model("vit_tiny", dim=32, num_heads=2, **TINY_VIT)
  m2 = create_model("vit_tiny", dim=32, num_heads=2, gelu_approximate=True, **TINY_VIT)
  v = _init(m1, x)
  a = m1.apply(v, x, train=False)["pre_logits"]
  b = m2.apply(v, x, train=False)["pre_logits"]
  assert not np.array_equal(a, b)
  np.testing.assert_allclose(a, b, atol=1e-2)


# ---------------------------------------------------------------------------------- convnet, heads


def test_convnet():
  x = jnp.ones((2, 16, 16, 3))
  model = create_model("convnet")
  v = jax.eval_shape(lambda: model.init(KEY, x, train=False))
  out = _shapes(model, x)
  assert out["pre_logits"].shape == (2, 256)
  assert out["feature_map"].shape == (2, 1, 1, 256)
  assert _count(v["params"]) == _param_count("convnet", 32)
  assert 0.38e6 < _count(v["params"]) < 0.40e6


def test_mlp_head():
  x = jnp.ones((4, 32))
  head = MLPHead((64,), 16)
  v = head.init(KEY, x, train=False)
  p = v["params"]
  assert set(p) == {"fc0", "bn0", "fc1"}
  assert "bias" not in p["fc0"] and "bias" in p["fc1"]
  assert head.apply(v, x, train=False).shape == (4, 16)
  head3 = MLPHead((64, 64), 16, use_bn=False, last_bias=False)
  p3 = head3.init(KEY, x, train=False)["params"]
  assert set(p3) == {"fc0", "fc1", "fc2"}
  assert "bias" in p3["fc0"] and "bias" not in p3["fc2"]
  assert "batch_stats" not in head3.init(KEY, x, train=False)


# ---------------------------------------------------------------------------------- XLA flags


def test_merge_flags_preserves_user_flags():
  user = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution --xla_dump_to=/tmp/d"
  env = {"XLA_FLAGS": user}
  new = sxla.configure_xla_for_cpu(env)
  # the user's value for the same flag wins (kept first, not duplicated); others appended
  assert new.startswith(user + " ")
  assert new.count("--xla_cpu_experimental_ynn_fusion_type") == 1
  assert "--xla_disable_hlo_passes=tree_reduction_rewriter" in new
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
  new = sxla.configure_xla_for_cpu(env)
  assert new.startswith("--xla_dump_to=/tmp/d ") and env["XLA_FLAGS"] == new
  for name in sxla.CPU_FLAGS:
    assert name in new
  assert sxla.configure_xla_for_cpu(env) == new  # idempotent


def test_flags_only_for_cpu():
  env = {"JAX_PLATFORMS": "cuda"}
  assert sxla.configure_xla_for_cpu(env) == "" and "XLA_FLAGS" not in env
  env = {"JAX_PLATFORMS": "cpu"}
  assert sxla.configure_xla_for_cpu(env) != ""
  env = {"SSLX_NO_XLA_FLAGS": "1"}
  assert sxla.configure_xla_for_cpu(env) == ""


def _fake_host(modules=(), nodes=()):
  """`installed` and `device_nodes` callables for sxla.target_platform: a host with these
  plugin modules installed and these device nodes present."""
  import fnmatch

  return (
    lambda m: m in modules,
    lambda pattern: [n for n in nodes if fnmatch.fnmatch(n, pattern)],
  )


@pytest.mark.parametrize(
  "modules, nodes, env, expected",
  [
    # a TPU VM: libtpu and /dev/accel* (v4) or /dev/vfio/N (v5e and later)
    (("libtpu",), ("/dev/accel0", "/dev/accel1"), {}, "tpu"),
    (("libtpu",), ("/dev/vfio/0",), {}, "tpu"),
    # a GPU host
    (("jax_cuda12_plugin",), ("/dev/nvidia0", "/dev/nvidiactl"), {}, "cuda"),
    (("jax_rocm7_plugin",), ("/dev/kfd",), {}, "rocm"),
    # libtpu installed only to compile for a TPU topology, no TPU: the CPU
    (("libtpu",), (), {}, "cpu"),
    # a CUDA plugin without a GPU (CI installing jax[cuda12]), or /dev/nvidiactl only
    (("jax_cuda12_plugin",), ("/dev/nvidiactl",), {}, "cpu"),
    # devices without the plugin: jax cannot use them
    ((), ("/dev/accel0", "/dev/nvidia0"), {}, "cpu"),
    # JAX_PLATFORMS wins either way
    (("libtpu",), ("/dev/accel0",), {"JAX_PLATFORMS": "cpu"}, "cpu"),
    ((), (), {"JAX_PLATFORMS": "gpu,cpu"}, "cuda"),
    ((), (), {"JAX_PLATFORM_NAME": "tpu"}, "tpu"),
  ],
)
def test_target_platform(modules, nodes, env, expected):
  installed, device_nodes = _fake_host(modules, nodes)
  assert sxla.target_platform(env, installed, device_nodes) == expected


def test_cpu_flags_stay_off_accelerator_hosts(monkeypatch):
  """On a TPU VM or GPU host with JAX_PLATFORMS unset (their normal state) XLA_FLAGS is left
  alone; on a CPU host the flags are added."""
  for modules, nodes, added in [
    (("libtpu",), ("/dev/accel0",), False),
    (("jax_cuda12_plugin",), ("/dev/nvidia0",), False),
    (("libtpu",), (), True),
  ]:
    installed, device_nodes = _fake_host(modules, nodes)
    monkeypatch.setattr(sxla, "_module_installed", installed)
    monkeypatch.setattr(sxla.glob, "glob", device_nodes)
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    new = sxla.configure_xla_for_cpu(env)
    assert ("--xla_disable_hlo_passes=tree_reduction_rewriter" in new) == added, modules
    assert new.startswith("--xla_dump_to=/tmp/d")


@pytest.mark.parametrize(
  "modules, nodes, env, expected",
  [
    (("libtpu",), (), {}, "cpu"),  # libtpu for compiling only: the plugin stays asleep
    (("jax_cuda12_plugin",), (), {}, "cpu"),
    (("libtpu",), ("/dev/accel0",), {}, None),  # a TPU VM: jax picks the TPU itself
    ((), (), {}, None),  # nothing to keep asleep
    (("libtpu",), (), {"JAX_PLATFORMS": "tpu"}, "tpu"),  # the user's choice stands
  ],
)
def test_idle_accelerator_plugins_are_not_started(modules, nodes, env, expected):
  installed, device_nodes = _fake_host(modules, nodes)
  set_it = sxla.keep_idle_plugins_asleep(env, installed, device_nodes)
  assert env.get("JAX_PLATFORMS") == expected
  assert set_it == (expected == "cpu")


TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


@pytest.mark.parametrize(
  "env, files, platform, expected",
  [
    ({"JAX_PLATFORMS": "cpu"}, (TCMALLOC,), "linux", TCMALLOC),  # installed: preload it
    ({"JAX_PLATFORMS": "cpu"}, (), "linux", ""),  # none installed: glibc's malloc
    ({"JAX_PLATFORMS": "cpu", "SSLX_MALLOC": "system"}, (TCMALLOC,), "linux", ""),
    ({"JAX_PLATFORMS": "cpu", "LD_PRELOAD": "/opt/libjemalloc.so.2"}, (TCMALLOC,), "linux", ""),
    ({"JAX_PLATFORMS": "cpu", "_SSLX_MALLOC_REEXEC": "1"}, (TCMALLOC,), "linux", ""),
    ({"JAX_PLATFORMS": "tpu"}, (TCMALLOC,), "linux", ""),  # accelerator runs: left alone
    ({"JAX_PLATFORMS": "cpu"}, (TCMALLOC,), "darwin", ""),
    ({"JAX_PLATFORMS": "cpu", "SSLX_MALLOC": "/opt/tc.so"}, ("/opt/tc.so",), "linux", "/opt/tc.so"),
  ],
)
def test_fast_malloc_choice(env, files, platform, expected):
  assert sxla.fast_malloc(env, exists=lambda p: p in files, platform=platform) == expected


def test_fast_malloc_names_a_missing_library():
  with pytest.raises(FileNotFoundError, match="SSLX_MALLOC='/nope.so'"):
    sxla.fast_malloc({"JAX_PLATFORMS": "cpu", "SSLX_MALLOC": "/nope.so"}, platform="linux")


def test_reexec_only_for_sslx_commands(monkeypatch):
  """The restart keeps the interpreter, its flags and arguments and prepends the library to
  LD_PRELOAD; a process whose main module is not sslx's (pytest here) is never restarted."""
  calls = []
  env = {"JAX_PLATFORMS": "cpu", "LD_PRELOAD": "/opt/other.so"}
  monkeypatch.setattr(sxla, "fast_malloc", lambda env: TCMALLOC)
  monkeypatch.setattr(sxla, "backend_initialized", lambda: False)
  assert not sxla.reexec_with_fast_malloc(env, execv=lambda *a: calls.append(a))
  assert not calls and "_SSLX_MALLOC_REEXEC" not in env
  fake_main = type(sys)("__main__")
  fake_main.__spec__ = type("Spec", (), {"name": "sslx.main"})()
  monkeypatch.setitem(sys.modules, "__main__", fake_main)
  monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "utf8", "-m", "sslx.main", "--config=x"])
  assert sxla.reexec_with_fast_malloc(env, execv=lambda *a: calls.append(a))
  assert calls == [
    (sys.executable, [sys.executable, "-X", "utf8", "-m", "sslx.main", "--config=x"])
  ]
  assert env["LD_PRELOAD"] == f"{TCMALLOC}:/opt/other.so" and env["_SSLX_MALLOC_REEXEC"] == "1"


_FLAG_SCRIPT = r"""
import json, os, sys
if sys.argv[1] == "on":
    from sslx.xla import configure_xla_for_cpu
    configure_xla_for_cpu()
import jax, jax.numpy as jnp, numpy as np
from sslx.models import ResNet, create_model
out = {"flags": os.environ.get("XLA_FLAGS", "")}
x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
for name, m in [("resnet", ResNet(stage_sizes=(1, 1), widths=(8, 16), stem="cifar")),
                ("vit_tiny", create_model("vit_tiny", patch_size=4, depth=1, dim=32, num_heads=2))]:
    v = jax.jit(lambda k: m.init(k, x, train=False))(jax.random.PRNGKey(0))
    def loss(p):
        o, _ = m.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(o["pre_logits"] ** 2)
    l, g = jax.jit(jax.value_and_grad(loss))(v["params"])
    out[name] = [float(l)] + np.concatenate(
        [np.ravel(a) for a in jax.tree_util.tree_leaves(g)]).astype(float).tolist()
print(json.dumps(out))
"""


def test_xla_flags_do_not_change_results():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SSLX_NO_XLA_FLAGS")}
  env["JAX_PLATFORMS"] = "cpu"
  # Both processes at once: each is mostly single-threaded start-up and compilation.
  procs = {
    mode: subprocess.Popen(
      [sys.executable, "-c", _FLAG_SCRIPT, mode],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for mode in ("on", "off")
  }
  res = {}
  for mode, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    res[mode] = json.loads(stdout.strip().splitlines()[-1])
  assert res["off"]["flags"] == ""
  assert "--xla_cpu_experimental_ynn_fusion_type" in res["on"]["flags"]
  for name in ("resnet", "vit_tiny"):
    on, off = np.asarray(res["on"][name]), np.asarray(res["off"][name])
    np.testing.assert_allclose(on[0], off[0], rtol=1e-5)  # loss
    np.testing.assert_allclose(on[1:], off[1:], rtol=1e-4, atol=1e-5 * np.abs(off[1:]).max())


def test_convnet_max_pool_gradient_equals_flax():
  import flax.linen as nn

  from sslx.models.convnet import max_pool_2x2

  rng = np.random.default_rng(0)
  for shape in ((2, 8, 8, 3), (2, 7, 5, 4)):  # odd sides: the last row/column is dropped
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    g = jnp.asarray(
      rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])), jnp.float32
    )
    ref = lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) * g)  # noqa: E731
    ours = lambda x: jnp.sum(max_pool_2x2(x) * g)  # noqa: E731
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(ref)(x), atol=1e-6)
  # Ties (ReLU zeros) share the gradient evenly, as the gradient of jnp.max does.
  x = jnp.zeros((1, 2, 2, 1))
  np.testing.assert_allclose(jax.grad(lambda x: max_pool_2x2(x).sum())(x), 0.25)


# ---------------------------------------------------------------------------------- ViT options

# torch.nn.functional.interpolate(g[None, None], size=..., mode="bicubic", align_corners=False)
# of this 5 x 5 grid, computed with PyTorch 1.13 (a = -0.75, half-pixel centres, no antialias)
_GRID = [
  [0.126, -0.132, 0.640, 0.105, -0.536],
  [0.362, 1.304, 0.947, -0.704, -1.265],
  [-0.623, 0.041, -2.325, -0.219, -1.246],
  [-0.732, -0.544, -0.316, 0.412, 1.043],
  [-0.129, 1.366, -0.665, 0.352, 0.903],
]
_TORCH_3x3 = [
  [0.268245, 0.918425, -0.641675],
  [-0.282519, -2.325000, -0.805684],
  [0.073217, -0.443518, 0.911044],
]
_TORCH_7x4 = [
  [0.061766, 0.055931, 0.457675, -0.415563],
  [0.411780, 1.107116, 0.234496, -0.920091],
  [0.250854, 0.908016, -0.424034, -1.369058],
  [-0.529357, -0.877466, -1.021033, -1.117092],
  [-0.792627, -0.824120, -0.207475, 0.448734],
  [-0.413930, 0.063979, 0.084806, 1.151086],
  [0.108082, 0.827408, -0.232842, 0.845724],
]


def test_position_embedding_resize_is_torch_bicubic_without_antialiasing():
  from sslx.models.vit import resize_pos_embed

  g = jnp.asarray(_GRID, jnp.float32)[:, :, None]
  np.testing.assert_allclose(resize_pos_embed(g, (3, 3))[..., 0], _TORCH_3x3, atol=2e-6)
  np.testing.assert_allclose(resize_pos_embed(g, (7, 4))[..., 0], _TORCH_7x4, atol=2e-6)
  # jax.image.resize low-pass filters when shrinking: a different function
  aa = jax.image.resize(g, (3, 3, 1), "bicubic")[..., 0]
  assert float(jnp.abs(aa - jnp.asarray(_TORCH_3x3)).max()) > 0.1


def test_vit_uses_the_resized_position_embedding():
  from sslx.models.vit import resize_pos_embed

  model = create_model("vit_tiny", dim=8, num_heads=2, **TINY_VIT)
  v = _init(model, jnp.ones((1, 20, 20, 3)))  # a 5 x 5 grid

  pos = v["params"]["pos_embed"].reshape(5, 5, 8)
  small = model.clone(depth=0)  # patch embedding + positions, then the final norm only
  x = jnp.zeros((1, 12, 12, 3))  # a 3 x 3 grid: tokens = bias + resized positions
  keys = ("patch_embed", "cls_token", "pos_embed", "norm")
  out = small.apply({"params": {k: v["params"][k] for k in keys}}, x, train=False)
  expect = v["params"]["patch_embed"]["bias"] + resize_pos_embed(pos, (3, 3)).reshape(9, 8)
  mu = expect.mean(-1, keepdims=True)
  ln = (expect - mu) / jnp.sqrt(expect.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out["patch_tokens"][0], ln, atol=1e-5)


def test_masked_forward_applies_drop_path_only_in_training():
  x = jax.random.normal(KEY, (4, 16, 16, 3))
  mask = jnp.asarray(np.random.default_rng(0).random((4, 16)) < 0.5)
  emb = jax.random.normal(jax.random.PRNGKey(3), (1, 1, 64))
  plain = create_model("vit_tiny", dim=64, num_heads=2, **TINY_VIT)
  dropped = create_model("vit_tiny", dim=64, num_heads=2, drop_path_rate=0.5, **TINY_VIT)
  v = _init(plain, x)
  # the same parameter names with and without drop-path
  v2 = _init(dropped, x)
  assert jax.tree.structure(v) == jax.tree.structure(v2)

  def run(model, train, seed=0):
    return model.apply(
      v,
      x,
      train=train,
      token_mask=mask,
      mask_embedding=emb,
      rngs={"dropout": jax.random.PRNGKey(seed)},
    )["tokens"]

  a, b = run(dropped, True, 1), run(dropped, True, 2)
  assert float(jnp.abs(a - b).max()) > 1e-2  # a different stochastic depth per key
  np.testing.assert_allclose(run(dropped, False), run(plain, False), atol=1e-6)
  np.testing.assert_allclose(run(plain, True, 1), run(plain, False), atol=1e-6)
  # the masked forward replaces exactly the masked patch embeddings
  ref = plain.apply(v, x, train=False)["tokens"]
  assert float(jnp.abs(run(plain, False) - ref).max()) > 1e-3
  np.testing.assert_allclose(
    plain.apply(v, x, train=False, token_mask=jnp.zeros_like(mask), mask_embedding=emb)["tokens"],
    ref,
    atol=1e-6,
  )
  with pytest.raises(ValueError, match="mask embedding"):
    plain.apply(v, x, train=False, token_mask=mask)


def test_layer_scale_and_relative_position_bias():
  x = jax.random.normal(KEY, (2, 16, 16, 3))
  model = create_model(
    "vit_tiny", dim=32, num_heads=2, layer_scale=0.1, rel_pos_bias=True, **TINY_VIT
  )
  v = _init(model, x)
  p = v["params"]
  assert set(p["block0"]) == {"norm1", "attn", "norm2", "mlp", "ls1", "ls2"}
  np.testing.assert_allclose(p["block0"]["ls1"], 0.1)
  assert p["rel_pos_bias"].shape == ((2 * 4 - 1) ** 2 + 3, 2)
  # zero bias, layer scale 1: the plain ViT's function on the same parameters
  plain = create_model("vit_tiny", dim=32, num_heads=2, **TINY_VIT)
  base = {k: w for k, w in p.items() if k != "rel_pos_bias"}
  base = {
    k: ({n: w for n, w in b.items() if n not in ("ls1", "ls2")} if k.startswith("block") else b)
    for k, b in base.items()
  }
  ones = dict(p)
  for i in range(2):
    ones[f"block{i}"] = dict(p[f"block{i}"], ls1=jnp.ones(32), ls2=jnp.ones(32))
  np.testing.assert_allclose(
    model.apply({"params": ones}, x, train=False)["tokens"],
    plain.apply({"params": base}, x, train=False)["tokens"],
    atol=1e-5,
  )
  # the bias enters the attention logits: entry (i, j) is table[index[i, j]]
  from sslx.models.vit import relative_position_index

  idx = relative_position_index((4, 4))
  assert idx.shape == (17, 17) and idx[0, 0] == 51 and idx[0, 1] == 49 and idx[1, 0] == 50
  # patches (0,0)->(1,1) and (1,1)->(2,2) share an offset; (0,0)->(0,1) does not
  assert idx[1, 6] == idx[6, 11] != idx[1, 2]
  table = jax.random.normal(KEY, p["rel_pos_bias"].shape)
  bumped = dict(p, rel_pos_bias=table)
  att = model.apply({"params": bumped}, x, train=False, return_attention=True)["attention"]
  assert (
    float(jnp.abs(att - model.apply(v, x, train=False, return_attention=True)["attention"]).max())
    > 1e-3
  )
  # with dropped tokens (MAE's mask) the kept rows/columns of the bias are gathered
  ids = jnp.asarray([[0, 5, 9], [2, 3, 15]])
  out = model.apply({"params": bumped}, x, train=False, mask=ids)
  assert out["tokens"].shape == (2, 4, 32)
  with pytest.raises(ValueError, match="another patch grid"):
    model.apply(v, jnp.ones((1, 8, 8, 3)), train=False)


def test_simclr_projector_ends_in_batchnorm_with_scale_and_no_shift():
  from sslx import methods
  from tests.helpers import tiny_simclr

  c = tiny_simclr()
  assert c.method.projector_out_bn is False  # the demo preset as measured
  c.method.projector_out_bn = True
  method = methods.get("simclr").create(c, total_steps=10)
  x = jax.random.normal(KEY, (32, 16))
  head = method.net.head
  v = head.init(KEY, x, train=False)
  p = v["params"]
  assert set(p["bn_out"]) == {"scale"} and "bias" not in p["fc1"]  # Linear(no bias) -> BN
  scale = jax.random.uniform(KEY, (16,), minval=0.5, maxval=2.0)
  p = dict(p, bn_out={"scale": scale})
  z, _ = head.apply(
    {"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
  )
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)  # batch-normalised, no shift
  np.testing.assert_allclose(z.std(0), scale, rtol=1e-2)  # ... times the learned scale
  for preset in ("cifar10", "imagenet"):
    from tests.helpers import experiment

    assert experiment("simclr", preset).method.projector_out_bn is True
