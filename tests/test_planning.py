"""sslx.planning: targets, FLOP counting, per-device bytes, bf16 steps, and (slow) the TPU
compiler on a v4 slice."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import planning, train
from sslx.models.dino_head import DINOHead
from tests.helpers import experiment

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def test_targets():
  t = planning.target("v4-32")  # Cloud names count TensorCores: 16 megacore chips
  assert (t.num_devices, t.topology, t.chip.memory_bytes) == (16, "v4:2x2x4", 32 * 2**30)
  assert not t.estimate
  t = planning.target("v5e-16")
  assert (t.num_devices, t.topology, t.chip.memory_bytes) == (16, "v5e:4x4", 16 * 2**30)
  assert planning.target("v4:2x2x2").num_devices == 8
  t = planning.target("8xH100")
  assert (t.num_devices, t.estimate, t.chip.peak_flops) == (8, True, 989e12)
  with pytest.raises(ValueError, match="v4:2x2x2, v4-32"):
    planning.target("v9:2x2")
  with pytest.raises(ValueError, match="no known chip grid"):
    planning.target("v4-12")


def test_knobs_offer_only_what_the_config_does_not_use_yet():
  c = experiment("simclr", "imagenet")
  c.model.dtype = "float32"
  flags = [f for f, _ in planning.knobs(c, 16)]
  assert flags[:2] == ["--config.model.dtype=bfloat16", "--config.model.remat=block"]
  assert any("fsdp" in f for f in flags) and "--config.batch_size=2048" in flags
  assert any(f.startswith("--config.method.grad_cache_chunk=") for f in flags)
  c.model.dtype, c.model.remat = "bfloat16", "dots"
  c.mesh = (("data", -1), ("fsdp", 4))
  flags = [f for f, _ in planning.knobs(c, 16)]
  assert not any("dtype" in f or "remat" in f or "fsdp" in f for f in flags)
  # each knob's changes apply to a copy
  changed = planning.override(c, **{"model.remat": "block", "batch_size": 8})
  assert (changed.model.remat, changed.batch_size, c.model.remat) == ("block", 8, "dots")


def test_plans_build_the_accelerator_convolutions():
  """The planner runs on the CPU, where conv_impl="auto" picks CPU-only convolutions: a plan
  is of the model with XLA's own, as on the accelerator; an explicit choice stays."""
  for name in ("simclr", "cpc"):  # the demo CNN, CPC's patch encoder
    c = experiment(name)
    assert planning.for_accelerator(c).model.conv_impl == "xla"
    c.model.conv_impl = "fast"
    assert planning.for_accelerator(c).model.conv_impl == "fast"
  vit = experiment("mae")
  assert "conv_impl" not in planning.for_accelerator(vit).model


def test_plan_cli_environment():
  """A GPU estimate gets as many fake CPU devices as GPUs before jax starts; a TPU slice
  needs none (its devices come from libtpu's compile-only client)."""
  from sslx.cli import plan as plan_cli

  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  plan_cli.prepare_environment("8xH100", env)
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"
  env = {"JAX_PLATFORMS": "cpu"}
  plan_cli.prepare_environment("v4-32", env)
  assert "XLA_FLAGS" not in env


def test_matmul_flops_counts_dots_and_convolutions_outside_augmentation():
  def f(x, w, k):
    with jax.named_scope("sslx_augment"):
      x = x @ jnp.eye(4)  # 2*64*4*4, left out
    y = x @ w  # 2*64*16*4
    z = jax.lax.conv_general_dilated(
      x.reshape(1, 8, 8, 4), k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )  # 2 * (8*8*8 outputs) * (3*3*4 taps)
    return y.sum() + z.sum()

  lowered = jax.jit(f).lower(jnp.ones((64, 4)), jnp.ones((4, 16)), jnp.ones((3, 3, 4, 8)))
  text = planning.hlo_text(lowered)
  assert planning.matmul_flops(text) == 2 * 64 * 16 * 4 + 2 * 512 * 36
  assert planning.matmul_flops(text, None) == 2 * 64 * 16 * 4 + 2 * 512 * 36 + 2 * 64 * 16
  # forward and the weights' gradients (x is constant): twice the forward's FLOPs
  g = jax.jit(jax.value_and_grad(f, argnums=(1, 2))).lower(
    jnp.ones((64, 4)), jnp.ones((4, 16)), jnp.ones((3, 3, 4, 8))
  )
  assert planning.matmul_flops(planning.hlo_text(g)) == 2 * (2 * 64 * 16 * 4 + 2 * 512 * 36)


def _tiny_simclr():
  c = experiment("simclr")
  c.batch_size = 16
  c.model.widths = (8, 16, 16, 32)
  c.method.projector_hidden = (64,)
  c.method.projector_dim = 32
  c.total_steps = 10
  return c


def test_per_device_parameter_bytes_are_count_times_4_over_fsdp():
  c = _tiny_simclr()
  c.mesh = (("data", 2), ("fsdp", 4))
  c.sharding_rules = ((".*", "fsdp"),)
  t = planning.Target("8 fake devices", planning.CHIPS["h100"], 8)
  p = planning.plan(c, t, num_examples=160, devices=jax.devices()[:8])
  setup = train.build(c, np.zeros((2, 32, 32, 3), np.uint8), 160, 10, jax.devices()[:8])
  shapes = jax.eval_shape(
    functools.partial(train.init_state, setup.method, setup.tx, num_classes=10),
    jax.ShapeDtypeStruct((2,), jnp.uint32),
    jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.uint8),
  )
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes.params["model"]))
  assert p.params_bytes == count * 4 // 4
  # AdamW for the model, Adam for the online probe: two moments per parameter, scalar counts
  probe = planning._per_device_bytes(shapes.params["probe"], setup.state_sharding.params["probe"])
  assert 0 <= p.opt_state_bytes - 2 * (p.params_bytes + probe) < 64
  assert p.batch_bytes == 16 // 8 * (32 * 32 * 3 + 4)
  assert p.mesh == {"data": 2, "fsdp": 4}
  assert p.model_flops > 0 and p.flops_per_device > 0
  text = planning.report(p)
  assert "ESTIMATE" in text and "fits" in text


ALLOWED_FLOAT32 = ("sslx_augment", "online_probe", "loss_similarities")


def _lowered_step_hlo(c):
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(c, sample, 160, 10, jax.devices()[:1])
  shapes = jax.eval_shape(
    functools.partial(train.init_state, setup.method, setup.tx, num_classes=10),
    jax.ShapeDtypeStruct((2,), jnp.uint32),
    jax.ShapeDtypeStruct(sample.shape, sample.dtype),
  )
  batch = {
    "image": jax.ShapeDtypeStruct((c.batch_size, 32, 32, 3), jnp.uint8),
    "label": jax.ShapeDtypeStruct((c.batch_size,), jnp.int32),
  }
  return planning.hlo_text(train.compile_step(setup, True).lower(shapes, batch))


def _tiny_mae():
  c = experiment("mae")
  c.batch_size = 8
  c.model.depth = 1
  c.method.decoder_depth = 1
  c.total_steps = 10
  return c


@pytest.mark.parametrize("make", [_tiny_simclr, _tiny_mae], ids=["simclr_resnet", "mae_vit"])
def test_bf16_step_has_no_float32_matmul_outside_the_allow_list(make):
  """With model.dtype=bfloat16 every dot/convolution of the step (encoder, projection head,
  MAE decoder, their gradients) takes bf16 operands, except the named float32 parts: the
  augmentation (default precision), the online probe and the contrastive similarities."""
  c = make()
  if c.model.name == "convnet":
    c.model = type(c.model)(dict(name="resnet18", widths=(8, 8, 16, 16), stem="cifar"))
  fp32 = planning.float32_matmuls(_lowered_step_hlo(c), ALLOWED_FLOAT32)
  assert len(fp32) > 4  # the check sees them when they are there
  c.model.dtype = "bfloat16"
  assert planning.float32_matmuls(_lowered_step_hlo(c), ALLOWED_FLOAT32) == []


def test_dino_head_bf16_keeps_float32_logits():
  head32 = DINOHead(out_dim=64, hidden_dim=32, bottleneck_dim=16)
  head16 = head32.clone(dtype="bfloat16")
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 24))
  params = head32.init(jax.random.PRNGKey(1), x)
  out16 = head16.apply(params, x)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, head32.apply(params, x), atol=2e-2)
  lowered = jax.jit(lambda p: head16.apply(p, x).sum()).lower(params)
  assert planning.float32_matmuls(planning.hlo_text(lowered)) == []


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (the tpu-compile extra) not installed")
def test_dino_imagenet_preset_fits_a_v4_slice_with_the_tpu_compiler():
  """The memory plan, checked by the TPU compiler: DINO ViT-S/16 at the paper's batch 1024
  (2 x 224 + 10 x 96 crops, bf16) compiles for a v4-32 slice (16 megacore chips, 32 GiB
  each) and fits (measured: 14.56 GiB peak per device, as docs/results.md)."""
  c = experiment("dino", "imagenet")
  c.mesh = (("data", -1),)
  t = planning.target("v4-32")
  p = planning.plan(c, t)
  assert p.mesh == {"data": 16}
  # ViT-S/16 (21.7 M) + the 65,536-prototype head, replicated: ~44 M parameters
  assert 42e6 * 4 < p.params_bytes < 46e6 * 4
  assert p.fits, planning.report(p)
  assert p.temp_bytes > 2**30  # a real step's activations, not an empty program


def test_collective_bytes_reads_sync_and_async_collectives_once():
  text = "\n".join(
    [
      "  %ag = f32[64,128]{1,0} all-gather(f32[8,128]{1,0} %x), dimensions={0}",
      "  %s = (bf16[4,8]{1,0}, bf16[32,8]{1,0}) all-gather-start(bf16[4,8]{1,0} %y)",
      "  %d = bf16[32,8]{1,0} all-gather-done((bf16[4,8], bf16[32,8]) %s)",
      "  %a2a = (f32[2,3]{1,0}, f32[2,3]{1,0}) all-to-all(f32[2,3] %p, f32[2,3] %q)",
      "  %ar = f32[10]{0} all-reduce(f32[10]{0} %g), to_apply=%sum",
      "  %cp = s32[5]{0} collective-permute(s32[5]{0} %z), source_target_pairs={{0,1}}",
      "  %dot = f32[64,64]{1,0} dot(f32[64,128] %ag, f32[64,128] %ag)",
    ]
  )
  got = planning.collective_bytes(text)
  assert got == {
    "all-gather": 64 * 128 * 4 + 32 * 8 * 2,
    "all-to-all": 2 * 6 * 4,
    "collective-permute": 20,
    "all-reduce": 40,
    "reduce-scatter": 0,
  }
  assert planning.resharding(got) == 64 * 128 * 4 + 32 * 8 * 2 + 48 + 20


def _fake_device_plan(c, n=8):
  t = planning.Target(f"{n} fake devices", planning.CHIPS["h100"], n)
  c.mesh = (("data", n),)
  return planning.plan(c, t, num_examples=10 * c.batch_size, devices=jax.devices()[:n])


def test_compacted_blur_stays_on_each_device():
  # DINO's multi-crop with its blur probabilities on 8 devices, 64 images: 16 global and 32
  # local rows per device, so both blurs are compacted (a conditional in the program), and
  # the compaction's sort, gather and scatter move nothing between devices.
  import ml_collections
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from sslx import multicrop

  mc = multicrop.MultiCrop.from_config(
    ml_collections.ConfigDict(
      dict(
        global_crop_size=24,
        local_crop_size=12,
        num_local_crops=4,
        global_blur_prob=(1.0, 0.1),
        local_blur_prob=0.5,
      )
    )
  )
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  images = jax.ShapeDtypeStruct(
    (64, 32, 32, 3), jnp.uint8, sharding=NamedSharding(mesh, PartitionSpec("data"))
  )
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  text = jax.jit(mc).lower(key, images).compile().as_text()
  assert text.count(" conditional(") >= 2, "both blurs compacted"
  assert planning.resharding(planning.collective_bytes(text)) == 0


@pytest.mark.parametrize("name", ["dino", "moco_v2", "byol", "dino_blur"])
def test_sharded_steps_move_no_views_between_devices(name):
  """Image-major views keep every image's crops, and the cross-view losses, on the device
  holding the image: the compiled 8-device step reshards nothing but what the method
  must share (MoCo's new queue keys, which every device's replicated queue needs). With
  view-major stacking the same steps gathered the crops and logits across devices.
  dino_blur: DINO's blur probabilities at a batch where the blur is compacted (32 local
  and 16 global rows per device): its sort, gather and scatter stay on each device."""
  c = experiment(name.removesuffix("_blur"))
  c.batch_size = 16
  if name == "dino_blur":
    c.batch_size = 64
    c.augment.update(global_blur_prob=(1.0, 0.1), local_blur_prob=0.5)
  p = _fake_device_plan(c)
  gathered = p.collectives["all-gather"]
  assert p.collectives["all-to-all"] == 0 and p.collectives["collective-permute"] == 0, (
    p.collectives
  )
  if name == "moco_v2":
    assert gathered == c.batch_size * c.method.projector_dim * 4  # the enqueued keys, f32
  else:
    assert gathered == 0, p.collectives
  assert p.collectives["all-reduce"] > 0  # gradients and BatchNorm statistics


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (the tpu-compile extra) not installed")
def test_knn_over_imagenet_features_is_spread_over_a_v5e_slice_by_the_tpu_compiler():
  """k-NN on ResNet-50 features of ImageNet's train split (1,281,167 x 2048, float32: 9.8 GiB)
  with 1,024-query chunks: on one v5e chip (16 GiB) the features and one chunk's similarities
  would take 14.7 GiB (measured by compiling the same for one chip); sharded by rows over a
  v5e-8 slice a chip holds an eighth of both."""
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from sslx.evaluation import knn

  t = planning.target("v5e-8")
  devices = planning.devices_for(t)

  def bytes_per_device(num_devices):
    mesh = Mesh(np.asarray(devices[:num_devices]), ("data",))
    n = 1_281_167 + (-1_281_167) % num_devices

    def arg(shape, dtype, spec):
      return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

    rows = P("data")
    lowered = knn._chunk_predictions.lower(
      arg((1024, 2048), jnp.float32, P()),
      arg((n, 2048), jnp.float32, rows),
      arg((n,), jnp.int32, rows),
      arg((n,), jnp.int32, rows),
      arg((1,), jnp.float32, P()),
      mesh=mesh,
      ks=(20, 200),
      num_classes=1000,
    )
    m = lowered.compile().memory_analysis()
    return m.argument_size_in_bytes, m.temp_size_in_bytes

  features = 1_281_167 * 2048 * 4
  args, temp = bytes_per_device(8)
  assert features / 8 < args < 1.01 * features / 8
  # An eighth of one chunk's similarities (1024 x 1.28M x 4 B = 4.9 GiB) and their top-k.
  assert temp < 1.3 * 1024 * 1_281_167 * 4 / 8, temp
