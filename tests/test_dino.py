"""DINO: multi-crop, the head, centering/sharpening maths, the collapse argument, the EMA
teacher, sharding, and a short learning run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslx import data, multicrop, train
from sslx.methods import dino
from sslx.models.dino_head import DINOHead
from tests.helpers import assert_learns, assert_method_state_gets_no_gradient, tiny


def tiny_dino(steps: int = 3, batch: int = 16, name: str = "dino", **overrides):
  """A depth-2, 16-wide ViT/8 on 32 px with 2 local 16 px crops and K = 64: seconds."""
  small = {
    "model": {"name": "vit_tiny", "patch_size": 8, "dim": 16, "depth": 2, "num_heads": 2},
    "method.out_dim": 64,
    "method.hidden_dim": 32,
    "method.bottleneck_dim": 16,
    "augment.num_local_crops": 2,
    "optimizer.warmup_epochs": 0.0,  # a non-zero learning rate at step 0
    "log_every_steps": 1,
    "method.head_bn": False,  # the vit presets' head (the CNN defaults put BatchNorm in it)
  }
  if name == "dinov2":
    small["method.patch_out_dim"] = 64
  return tiny(name, **{"total_steps": steps, "batch_size": batch, **small, **overrides})


def batches(config, n=1):
  source = data.build_source(config.dataset, "train")
  loader = data.make_train_loader(source, config.batch_size, seed=0)
  return [next(loader) for _ in range(n)]


def one_step(config, batch, mesh=None):
  """(setup, state before, state after, metrics) of one train step."""
  if mesh is not None:
    config.mesh = mesh
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(config, sample, num_examples=1000, num_classes=10)
  state = train.create_state(setup, 0, sample)
  before = jax.device_get(state)
  step = train.compile_step(setup, probe_enabled=True)
  after, metrics = step(state, data.to_global_array(batch, setup.batch_sharding))
  return setup, before, jax.device_get(after), jax.device_get(metrics)


# --------------------------------------------------------------------------------- multi-crop


def test_multicrop_shapes_per_view_params_and_image_major_order():
  cfg = dict(
    global_crop_size=16,
    global_crop_scale=(0.4, 1.0),
    global_blur_prob=(1.0, 0.1),
    global_solarize_prob=(0.0, 0.2),
    num_local_crops=3,
    local_crop_size=8,
    local_crop_scale=(0.05, 0.4),
    local_blur_prob=0.5,
    grayscale_prob=0.3,
  )
  mc = multicrop.MultiCrop.from_config(cfg)
  assert (mc.num_global, mc.num_local, mc.num_views) == (2, 3, 5)
  g1, g2 = mc.global_views
  assert (g1.blur_prob, g1.solarize_prob, g2.blur_prob, g2.solarize_prob) == (1.0, 0, 0.1, 0.2)
  assert mc.local_view.crop_size == 8 and mc.local_view.crop_scale == (0.05, 0.4)
  assert g1.grayscale_prob == g2.grayscale_prob == mc.local_view.grayscale_prob == 0.3
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  crops = jax.jit(mc)(jax.random.PRNGKey(0), images)
  assert crops.global_crops.shape == (8, 16, 16, 3)
  assert crops.local_crops.shape == (12, 8, 8, 3)
  assert 0.0 <= float(crops.global_crops.min()) and float(crops.global_crops.max()) <= 1.0
  # Independent keys per view: the two global views of image 0 (rows 0 and 1) differ.
  assert not np.allclose(crops.global_crops[0], crops.global_crops[1])
  # Augmentation off: every view is the resized image, row i·V + v ↔ image i (image-major).
  off = multicrop.MultiCrop.from_config(dict(cfg, enabled=False))
  plain = off(jax.random.PRNGKey(0), images)
  for v in range(2):
    np.testing.assert_allclose(
      plain.global_crops[v::2],
      jax.image.resize(images / 255.0, (4, 16, 16, 3), "bilinear"),
      atol=1e-6,
    )
  local = np.asarray(plain.local_crops).reshape(4, 3, 8, 8, 3)
  np.testing.assert_allclose(
    local,
    np.repeat(jax.image.resize(images / 255.0, (4, 8, 8, 3), "bilinear")[:, None], 3, 1),
    atol=1e-6,
  )


def test_multicrop_config_errors_name_the_keys():
  with pytest.raises(ValueError, match="per-view"):
    multicrop.MultiCrop.from_config({"crop_size": 32})
  with pytest.raises(ValueError, match="unknown augment key"):
    multicrop.MultiCrop.from_config({"global_crop_sise": 32})
  with pytest.raises(ValueError, match="one value per global view"):
    multicrop.MultiCrop.from_config({"global_blur_prob": (1.0, 0.1, 0.1)})
  assert multicrop.MultiCrop.from_config({"global_blur_prob": 0.0}).global_views[1].blur_prob == 0


@pytest.mark.parametrize("num_local", [0, 1, 6, 10])
def test_pair_count_and_loss_uses_exactly_those_pairs(num_local):
  v = 2 + num_local
  pairs = multicrop.teacher_student_pairs(2, v)
  assert len(pairs) == 2 * (num_local + 1) == len(set(pairs))
  assert all(i != j and i < 2 for i, j in pairs)
  b, k = 3, 7
  rng = np.random.default_rng(num_local)
  s = rng.normal(size=(b * v, k)).astype(np.float32)  # image-major: row n·V + j
  t = rng.dirichlet(np.ones(k), size=b * 2).astype(np.float32)  # row n·2 + i
  loss = float(dino.cross_view_loss(jnp.asarray(s), jnp.asarray(t), 2, 0.1))
  logp = s / 0.1 - np.log(np.exp(s / 0.1).sum(-1, keepdims=True))
  expected = np.mean([np.mean(-(t[i::2] * logp[j::v]).sum(-1)) for i, j in pairs])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


# ---------------------------------------------------------------------- centering, sharpening


def test_centering_and_sharpening_against_numpy():
  rng = np.random.default_rng(0)
  t = rng.normal(size=(6, 5)).astype(np.float32)
  c = rng.normal(size=(1, 5)).astype(np.float32)
  probs = np.asarray(dino.teacher_softmax(jnp.asarray(t), jnp.asarray(c), 0.04))
  z = (t - c) / 0.04
  ref = np.exp(z - z.max(-1, keepdims=True))
  np.testing.assert_allclose(probs, ref / ref.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
  # Sharpening: a lower temperature gives a lower-entropy distribution.
  soft = np.asarray(dino.teacher_softmax(jnp.asarray(t), jnp.asarray(c), 1.0))
  ent = lambda p: float(-(p * np.log(np.maximum(p, 1e-30))).sum(-1).mean())  # noqa: E731
  assert ent(probs) < ent(soft)
  new_c = np.asarray(dino.update_center(jnp.asarray(c), jnp.asarray(t), 0.9))
  np.testing.assert_allclose(new_c, 0.9 * c + 0.1 * t.mean(0, keepdims=True), rtol=1e-6)
  # τ_t warm-up 0.04 → 0.07 over 30% of 100 steps, then constant.
  # The official linspace(0.04, 0.07, 30): τ_t reaches 0.07 at step 29.
  temps = [float(dino.teacher_temperature(s, 100, 0.04, 0.07, 0.3)) for s in (0, 15, 29, 30, 99)]
  np.testing.assert_allclose(temps, [0.04, 0.04 + 0.03 * 15 / 29, 0.07, 0.07, 0.07], rtol=1e-6)
  assert float(dino.teacher_temperature(0, 100, 0.04, 0.04, 0.0)) == pytest.approx(0.04)


def test_constant_output_gives_uniform_teacher_and_loss_exactly_log_k():
  """The collapse argument: once the center has caught up with a constant teacher output,
  the centred teacher is uniform, and a constant student pays exactly log K."""
  k, b, n_local = 16, 4, 2
  const = np.random.default_rng(1).normal(size=(k,)).astype(np.float32)
  teacher = jnp.tile(jnp.asarray(const), (2 * b, 1))
  center = jnp.zeros((1, k))
  for _ in range(400):  # c ← 0.9·c + 0.1·const → const
    center = dino.update_center(center, teacher, 0.9)
  np.testing.assert_allclose(center[0], const, atol=1e-5)
  probs = dino.teacher_softmax(teacher, center, 0.04)
  np.testing.assert_allclose(probs, np.full((2 * b, k), 1.0 / k), atol=1e-5)
  assert float(dino.entropy_fraction(probs)) == pytest.approx(1.0, abs=1e-4)
  # H(uniform, P_s) = log K + KL(uniform || P_s): a student collapsed to the same uniform
  # distribution (logits equal over the K dims, here 0.37) pays exactly log K ...
  student = jnp.full(((2 + n_local) * b, k), 0.37)
  loss = float(dino.cross_view_loss(student, probs, 2, 0.1))
  np.testing.assert_allclose(loss, math.log(k), rtol=1e-6)
  # ... and every other student more: against a centred collapsed teacher there is no
  # solution below log K, so collapse is not a minimum the student can settle into.
  for other in (
    jnp.tile(jnp.asarray(const), ((2 + n_local) * b, 1)),
    student + jax.random.normal(jax.random.PRNGKey(0), student.shape),
  ):
    assert float(dino.cross_view_loss(other, probs, 2, 0.1)) > math.log(k) + 1e-3
  # The warning fires for the uniform teacher.
  assert "uniform" in dino.entropy_warning({"teacher_entropy": 0.999})
  assert "one dimension" in dino.entropy_warning({"teacher_entropy": 0.001})
  assert dino.entropy_warning({"teacher_entropy": 0.5}) is None


# ------------------------------------------------------------------------------------- head


def test_dino_head_weight_norm_and_frozen_prototypes():
  head = DINOHead(out_dim=32, hidden_dim=24, bottleneck_dim=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 12))
  params = head.init(jax.random.PRNGKey(1), x)["params"]
  assert set(params) == {"fc0", "fc1", "fc2", "last_v"}
  assert params["last_v"].shape == (8, 32)
  out = head.apply({"params": params}, x)
  assert out.shape == (5, 32)
  assert float(jnp.max(jnp.abs(out))) <= 1.0 + 1e-5  # cosines: unit features, unit prototypes
  # Scaling a prototype's raw weights changes nothing (weight normalisation).
  scaled = dict(params, last_v=params["last_v"] * jnp.linspace(0.5, 3.0, 32))
  np.testing.assert_allclose(head.apply({"params": scaled}, x), out, rtol=1e-5, atol=1e-6)

  def grad_v(freeze):
    return jax.grad(lambda p: jnp.sum(head.apply({"params": p}, x, freeze_last_layer=freeze) ** 2))(
      params
    )

  assert float(jnp.abs(grad_v(True)["last_v"]).max()) == 0.0
  assert float(jnp.abs(grad_v(True)["fc0"]["kernel"]).max()) > 0.0
  assert float(jnp.abs(grad_v(False)["last_v"]).max()) > 0.0
  free = DINOHead(out_dim=32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=False)
  assert "last_g" in free.init(jax.random.PRNGKey(1), x)["params"]


# ------------------------------------------------------------- the frozen last layer's optimizer


def test_frozen_last_layer_leaves_adam_untouched_and_restarts_fresh():
  """While frozen the prototypes get no update and their AdamW state does not move; the first
  update after unfreezing is a fresh AdamW step at the current learning rate:
  −lr_t·(g/(|g| + ε) + wd·p). The other parameters train as with plain AdamW."""
  freeze, wd = 3, 0.05
  schedule = optax.linear_schedule(1e-2, 1e-3, 10)
  adamw = optax.adamw(
    schedule, weight_decay=wd, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  )
  tx = dino.freeze_last_layer(adamw, freeze)
  rng = np.random.default_rng(0)
  params = {
    "head": {"fc0": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}},
    "last_v": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
  }
  grads = [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    for _ in range(freeze + 1)
  ]
  state, ref_state = tx.init(params), adamw.init(params)
  p, ref = params, params
  for t in range(freeze):
    up, state = tx.update(grads[t], state, p)
    ref_up, ref_state = adamw.update(grads[t], ref_state, ref)
    assert float(jnp.abs(up["last_v"]).max()) == 0.0
    np.testing.assert_allclose(
      up["head"]["fc0"]["kernel"], ref_up["head"]["fc0"]["kernel"], rtol=1e-6
    )
    p, ref = optax.apply_updates(p, up), optax.apply_updates(ref, ref_up)
  np.testing.assert_array_equal(p["last_v"], params["last_v"])
  frozen_adam = state.inner_states["last_layer"].inner_state.inner[0]
  assert int(frozen_adam.count) == 0
  assert float(jnp.abs(frozen_adam.mu["last_v"]).max()) == 0.0
  assert float(jnp.abs(frozen_adam.nu["last_v"]).max()) == 0.0
  up, state = tx.update(grads[freeze], state, p)
  g, v = grads[freeze]["last_v"], p["last_v"]
  fresh = -float(schedule(freeze)) * (g / (jnp.abs(g) + 1e-8) + wd * v)
  np.testing.assert_allclose(up["last_v"], fresh, rtol=1e-5, atol=1e-8)


def test_trainer_pauses_the_last_layer_in_the_optimizer():
  """In a real DINO step with freeze_last_layer_steps=1 the prototypes stay put and their
  optimizer state is the initial one, while the rest of the student moves."""
  config = tiny_dino(batch=16, **{"method.freeze_last_layer_steps": 1})
  setup, before, after, _ = one_step(config, batches(config)[0], mesh=[("data", 1)])
  head0, head1 = before.params["model"]["head"], after.params["model"]["head"]
  np.testing.assert_array_equal(head1["last_v"], head0["last_v"])
  assert float(np.abs(head1["fc0"]["kernel"] - head0["fc0"]["kernel"]).max()) > 0
  frozen = after.opt_state.inner_states["model"].inner_state.inner_states["last_layer"]
  assert int(frozen.inner_state.count) == 1
  # Adam's moments and count have not moved; the learning-rate schedule's counter has.
  adam = frozen.inner_state.inner[0]
  assert int(adam.count) == 0
  for leaf in jax.tree.leaves((adam.mu, adam.nu)):
    assert float(np.abs(leaf).max()) == 0.0
  rest = after.opt_state.inner_states["model"].inner_state.inner_states["rest"].inner_state
  assert int(rest[0].count) == 1


# ---------------------------------------------------------------------- the teacher and EMA


def _dino_step_config():
  return sgd(
    tiny_dino(batch=16, **{"method.warmup_teacher_temp_fraction": 0.5, "method.teacher_temp": 0.07})
  )


@pytest.fixture(scope="module")
def dino_step():
  """One one-device step, shared by the teacher tests and the sharding comparison."""
  config = _dino_step_config()
  return (config,) + one_step(config, batches(config)[0], mesh=[("data", 1)])


def test_teacher_moves_only_by_ema_and_center_updates(dino_step):
  config, setup, before, after, metrics = dino_step
  method = setup.method
  m = float(method.momentum(0))
  assert m == pytest.approx(config.method.base_momentum)
  student = after.params["model"]
  t0, t1 = before.method_state["teacher"]["params"], after.method_state["teacher"]["params"]
  # Teacher starts as a copy of the student and is exactly the EMA after one step.
  for a, b in zip(jax.tree.leaves(t0), jax.tree.leaves(before.params["model"])):
    np.testing.assert_array_equal(a, b)
  for a, s, b in zip(jax.tree.leaves(t0), jax.tree.leaves(student), jax.tree.leaves(t1)):
    np.testing.assert_allclose(b, m * a + (1 - m) * s, rtol=1e-6, atol=1e-7)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(t0), jax.tree.leaves(t1)))
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(before.params["model"]), jax.tree.leaves(student))
  )
  c0, c1 = before.method_state["center"], after.method_state["center"]
  assert c0.shape == c1.shape == (1, 64) and not np.any(c0) and np.any(c1)
  assert metrics["teacher_temp"] == pytest.approx(0.04)  # warm-up starts at 0.04
  assert 0.0 < metrics["teacher_entropy"] < 1.0
  assert np.isfinite(metrics["loss"])


def test_teacher_receives_no_gradient(dino_step):
  config, setup, before, _, _ = dino_step
  images = jnp.asarray(batches(config)[0]["image"])
  state = before.method_state
  assert_method_state_gets_no_gradient(setup.method, before, images)  # teacher, center
  student_grads = jax.jit(
    jax.grad(
      lambda p: setup.method.loss(p, before.batch_stats, state, images, jax.random.PRNGKey(0), 0)[0]
    )
  )(before.params["model"])
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(student_grads)) > 0


def sgd(config, lr: float = 0.5):
  """Plain SGD for the sharding comparisons: Adam's first step lr·g/(|g| + ε) turns the
  rounding noise of parameters whose true gradient is 0 (e.g. attention key biases) into
  lr-sized differences; SGD keeps the update proportional to the gradient being compared."""
  config.optimizer = {
    "name": "sgd",
    "base_lr": lr,
    "lr_scaling": "none",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "warmup_steps": 0,
  }
  return config


def assert_steps_close(eight, one, before, trees=("params", "method_state")):
  """The 8-device state after one step equals the one-device state. Tolerance: rtol 1e-4,
  and an absolute 1e-5 or 2e-6 of the leaf's largest update, whichever is larger: at lr 0.5
  one SGD step moves some head weights by tens to hundreds, and float32 summation order alone
  (which differs across shardings and Eigen's thread split) then shifts a small element of
  the same leaf by ~1e-6 of that update."""
  for tree in trees:
    for a, b, b0 in zip(
      jax.tree.leaves(getattr(eight, tree)),
      jax.tree.leaves(getattr(one, tree)),
      jax.tree.leaves(getattr(before, tree)),
    ):
      scale = float(np.abs(np.asarray(b) - np.asarray(b0)).max()) if np.size(b) else 0.0
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=max(1e-5, 2e-6 * scale))


def test_sharded_step_equals_single_device(dino_step):
  config, _, before, one, m1 = dino_step
  _, _, eight, m8 = one_step(_dino_step_config(), batches(config)[0], mesh=[("data", 8)])
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  assert_steps_close(eight, one, before)


@pytest.mark.slow
def test_short_cpu_run_learns_and_checkpoints_the_center(tmp_path):
  # No warm-up and a larger rate: the preset's warm-up spans ~60 steps, so 12 of its steps
  # barely move the weights.
  config = tiny(
    "dino",
    total_steps=12,
    batch_size=32,
    **{
      # the vit preset's network, at the tiny preset's widths
      "model": {"name": "vit_tiny", "patch_size": 8, "dim": 32, "depth": 2, "num_heads": 2},
      "method.head_bn": False,
      "augment.num_local_crops": 2,
      "optimizer.warmup_epochs": 0.0,
      "optimizer.base_lr": 2e-3,
    },
  )
  # 12 steps cut the held-out loss against the trained teacher and centre by 0.642 (seed 0);
  # half of it is asked.
  assert_learns(config, tmp_path, margin=0.32, measured=0.642)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["steps"] == 12 and "knn@5" in saved
