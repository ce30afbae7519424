"""CPC on image patch grids and on 1-D signals: shapes, causality, loss, bad settings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslx import config_lib, data, methods, models, train
from sslx.methods import cpc
from sslx.models import cpc_nets
from tests.helpers import assert_learns, experiment, tiny


def tiny_cpc(steps: int = 4, batch: int = 16, **overrides):
  """The tiny preset with a 2-layer 8/16-wide patch CNN, a 2-layer 16-wide context network and
  no evaluation, on Oord et al.'s grid scaled to 32 px (8 px patches at stride 4: 7x7), each
  patch resized to 16 px, predicted top to bottom, rows 1-3 ahead."""
  small = {
    "model.widths": (8, 16),
    "method.patch_size": 8,
    "method.patch_stride": 4,
    "method.encoder_input_size": 16,
    "method.directions": 1,
    "method.context_dim": 16,
    "method.context_layers": 2,
    "method.first_step": 1,
    "method.steps_ahead": 3,
    "evals": {},
  }
  return tiny("cpc", **{"total_steps": steps, "batch_size": batch, **small, **overrides})


def make(config):
  return cpc.create(config, total_steps=config.total_steps)


def some_images(n=4):
  source = data.build_source(tiny_cpc().dataset, "train")
  return jnp.asarray(np.stack([source[i]["image"] for i in range(n)]))


# -- presets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "preset, grid, steps, directions",
  [("cpu", 5, (3, 4), 4), ("cifar10", 7, (2, 3), 1), ("imagenet", 7, (2, 3, 4, 5), 1)],
)
def test_presets_validate_and_build_their_grid(preset, grid, steps, directions):
  # the cpu demo: 16 px patches at stride 4 in four directions; the longer runs: Oord et al.'s
  # 7x7 grid of patches a quarter of the image's side, top to bottom
  c = experiment("cpc", preset)
  config_lib.validate(c)
  method = methods.get("cpc").create(c, total_steps=10)
  size = c.augment.crop_size
  assert cpc.grid_size(size, method.patch_size, method.patch_stride) == grid
  assert method.steps == steps and method.net.directions == directions
  assert method.steps == tuple(range(c.method.first_step, c.method.steps_ahead + 1))
  assert method.patch_view is not None and method.patch_view.crop_size == method.patch_size
  assert "cpc_convnet" in models.available_models()
  assert experiment("cpc", f"{preset},steps=7").total_steps == 7


# -- shapes ----------------------------------------------------------------------------


def test_patch_grid_cuts_overlapping_patches():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
  p = cpc.patch_grid(x, 8, 4)
  assert p.shape == (2, 7, 7, 8, 8, 3)
  for i, j in [(0, 0), (3, 5), (6, 6)]:
    np.testing.assert_array_equal(
      np.asarray(p[:, i, j]), np.asarray(x[:, 4 * i : 4 * i + 8, 4 * j : 4 * j + 8])
    )
  assert cpc.patch_grid(x, 16, 8).shape == (2, 3, 3, 16, 16, 3)


def test_image_shapes_encode_and_loss():
  # Augmentations off here (compiled in the tests below and end to end): shapes only.
  method = make(tiny_cpc(**{"augment.enabled": False, "method.patch_augment": {}}))
  images = some_images(4)
  v = jax.jit(method.init)(jax.random.PRNGKey(0), images)
  assert v.batch_stats == {} and v.method_state == {}
  assert sorted(v.params["predict"]) == ["W_1", "W_2", "W_3"]
  patches = cpc.patch_grid(method.preprocess(images), 8, 4)
  z, per_direction = jax.jit(method.net.apply)({"params": v.params}, patches)
  assert len(per_direction) == 1  # Oord et al.'s single direction, top to bottom
  zd, c, preds = per_direction[0]
  np.testing.assert_array_equal(np.asarray(zd), np.asarray(z))
  assert z.shape == (4, 7, 7, 16) and c.shape == (4, 7, 7, 16)
  assert len(preds) == 3 and all(p.shape == (4, 7, 7, 16) for p in preds)
  feats = jax.jit(method.encode)(v.params, {}, images)
  assert feats.shape == (4, 16)
  np.testing.assert_allclose(
    np.asarray(feats), np.asarray(z.mean(axis=(1, 2))), rtol=1e-5, atol=1e-6
  )
  loss, aux = jax.jit(method.loss)(v.params, {}, {}, images, jax.random.PRNGKey(1), 0)
  assert np.isfinite(float(loss)) and aux.features.shape == (4, 16)
  assert set(aux.metrics) >= {"loss", "contrastive_acc", "contrastive_acc_k1", "contrastive_acc_k3"}


def test_grid_feature_keeps_every_patch_embedding_in_its_place():
  """method.feature="grid": encode returns z of the unaugmented image flattened row by row,
  [B, 7·7·D] (patch (i, j) at offset (7i + j)·D), the online probe's feature likewise; "mean"
  is its average over the 49 positions; another value is refused by name."""
  settings = {"augment.enabled": False, "method.patch_augment": {}}
  mean = make(tiny_cpc(**settings))
  grid = make(tiny_cpc(**settings, **{"method.feature": "grid"}))
  images = some_images(3)
  params = jax.jit(grid.init)(jax.random.PRNGKey(0), images).params
  z, _ = grid.net.apply({"params": params}, cpc.patch_grid(grid.preprocess(images), 8, 4))
  feats = np.asarray(jax.jit(grid.encode)(params, {}, images))
  assert feats.shape == (3, 7 * 7 * 16)
  d = 16
  for i, j in [(0, 0), (2, 5), (6, 6)]:
    at = (7 * i + j) * d
    np.testing.assert_allclose(feats[:, at : at + d], np.asarray(z[:, i, j]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    feats.reshape(3, 49, d).mean(axis=1),
    np.asarray(mean.encode(params, {}, images)),
    rtol=1e-5,
    atol=1e-6,
  )
  _, aux = jax.jit(grid.loss)(params, {}, {}, images, jax.random.PRNGKey(1), 0)
  np.testing.assert_allclose(np.asarray(aux.features), feats, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"method\.feature='pooled'.*'mean', 'grid'"):
    make(tiny_cpc(**{"method.feature": "pooled"}))


def test_encoder_input_size_resizes_every_patch_before_the_encoder():
  """method.encoder_input_size=16: each 8 px patch is resized (bilinear) to 16 px and only
  then encoded, in training and in `encode`; the z grid keeps its 7x7 layout."""
  settings = {"augment.enabled": False, "method.patch_augment": {}}
  plain = make(tiny_cpc(**settings, **{"method.encoder_input_size": 0}))
  resized = make(tiny_cpc(**settings, **{"method.encoder_input_size": 16}))
  images = some_images(2)
  params = jax.jit(resized.init)(jax.random.PRNGKey(0), images).params
  patches = cpc.patch_grid(resized.preprocess(images), 8, 4)  # [2, 7, 7, 8, 8, 3]
  big = jax.image.resize(patches.reshape(98, 8, 8, 3), (98, 16, 16, 3), "bilinear")
  want = resized.net.encoder.apply({"params": params["encoder"]}, big)["pre_logits"]
  z, _ = resized.net.apply({"params": params}, patches)
  np.testing.assert_allclose(
    np.asarray(z), np.asarray(want).reshape(2, 7, 7, -1), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    np.asarray(resized.encode(params, {}, images)),
    np.asarray(z.mean(axis=(1, 2))),
    rtol=1e-5,
    atol=1e-6,
  )
  # the same parameters on the unresized 8 px patches give another function
  z8, _ = plain.net.apply({"params": params}, patches)
  assert not np.allclose(np.asarray(z8), np.asarray(z), atol=1e-3)


def test_four_directions_each_predict_their_own_way():
  """directions=4 (CPC v2): one encoder, the z grid turned for bottom-up, right-left and
  left-right with a context network and predictors each; the loss is the mean of the four
  directions' InfoNCE; each direction's context never sees the patches "ahead" of it in the
  original image (below / above / left / right)."""
  method = make(tiny_cpc(**{"augment.enabled": False, "method.patch_augment": {}}))
  four = make(
    tiny_cpc(**{"augment.enabled": False, "method.patch_augment": {}, "method.directions": 4})
  )
  images = some_images(2)
  v = jax.jit(four.init)(jax.random.PRNGKey(0), images)
  assert sorted(v.params) == sorted(
    ["encoder", "context", "predict"]
    + [f"{n}_rot{k}" for n in ("context", "predict") for k in (1, 2, 3)]
  )
  one = jax.jit(method.init)(jax.random.PRNGKey(0), images)
  assert jax.tree.map(jnp.shape, one.params["context"]) == jax.tree.map(
    jnp.shape, v.params["context_rot2"]
  )
  patches = cpc.patch_grid(four.preprocess(images), 8, 4)
  z, per_direction = four.net.apply({"params": v.params}, patches)
  expected = 0.0
  for turn, (zd, _, preds) in zip(cpc.DIRECTION_TURNS, per_direction):
    np.testing.assert_array_equal(np.asarray(zd), np.asarray(jnp.rot90(z, turn, axes=(1, 2))))
    expected += cpc.predictive_info_nce(zd, preds, four.steps, four.temperature)[0] / 4
  loss, aux = four.loss(v.params, {}, {}, images, jax.random.PRNGKey(1), 0)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  assert {"loss_bottom_up", "loss_right_left", "loss_left_right"} <= set(aux.metrics)

  def contexts(p):
    return [c for _, c, _ in four.net.apply({"params": v.params}, p)[1]]

  c0 = contexts(patches)
  noise = jax.random.normal(jax.random.PRNGKey(3), patches.shape)
  r, g = 2, 7
  # what each direction's turned row r may not see, as [rows, cols] of the original grid
  ahead = {
    0: (slice(r + 1, None), slice(None)),  # top-down: rows below r
    1: (slice(None, g - 1 - r), slice(None)),  # bottom-up: rows above g-1-r
    2: (slice(None), slice(None, g - 1 - r)),  # right-left: columns left of g-1-r
    3: (slice(None), slice(r + 1, None)),  # left-right: columns right of r
  }
  for d, (rows, cols) in ahead.items():
    changed = patches.at[:, rows, cols].add(noise[:, rows, cols])
    c1 = contexts(changed)[d]
    np.testing.assert_allclose(np.asarray(c1[:, : r + 1]), np.asarray(c0[d][:, : r + 1]), atol=1e-5)
    assert not np.allclose(np.asarray(c1[:, r + 1 :]), np.asarray(c0[d][:, r + 1 :]))
  with pytest.raises(ValueError, match="directions=5"):
    make(tiny_cpc(**{"method.directions": 5}))


# -- causality -------------------------------------------------------------------------


def test_image_context_never_sees_rows_below():
  """c at row r has zero gradient w.r.t. every patch in rows > r (and a nonzero one w.r.t.
  row r); perturbing rows > r leaves c[:, :r + 1] unchanged."""
  method = make(tiny_cpc())
  images = some_images(2)
  v = jax.jit(method.init)(jax.random.PRNGKey(0), images)
  patches = cpc.patch_grid(method.preprocess(images), 8, 4)

  def contexts(p):
    return method.net.apply({"params": v.params}, p, method=cpc.CPCImageNet.contexts)

  weights = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 7, 16))

  @jax.jit
  def row_grads(p):  # [r of c, B, row, col, P, P, 3]: d(weighted c at row r) / d patches
    one_row = lambda r: jax.grad(lambda q: jnp.sum((contexts(q) * weights)[:, r]))(p)  # noqa
    return jax.vmap(one_row)(jnp.arange(7))

  per_row = np.abs(np.asarray(row_grads(patches))).sum(axis=(1, 3, 4, 5, 6))  # [r, patch row]
  # 2 layers of 3-row kernels: row r sees rows r − 4 .. r, never one below.
  for r in range(7):
    assert np.all(per_row[r, r + 1 :] == 0.0), (r, per_row[r])
    assert np.all(per_row[r, max(0, r - 4) : r + 1] > 0), (r, per_row[r])
    assert np.all(per_row[r, : max(0, r - 4)] == 0.0), (r, per_row[r])

  c0 = jax.jit(contexts)(patches)
  for r in (0, 3, 5):
    noise = jax.random.normal(jax.random.PRNGKey(r), patches.shape)
    changed = patches.at[:, r + 1 :].add(noise[:, r + 1 :])
    c1 = jax.jit(contexts)(changed)
    np.testing.assert_allclose(np.asarray(c1[:, : r + 1]), np.asarray(c0[:, : r + 1]), atol=1e-6)
    assert not np.allclose(np.asarray(c1[:, r + 1 :]), np.asarray(c0[:, r + 1 :]))


def tiny_1d_net(steps=(1, 2, 3)):
  # kernel == stride: z_t sees samples [8t, 8t + 8) only, disjoint from every other z.
  return cpc.CPC1DNet(
    cpc_nets.SignalEncoder(widths=(32, 32), kernels=(4, 2), strides=(4, 2)),
    cpc_nets.GRUContext(32),
    steps=steps,
  )


def test_1d_shapes_and_context_never_sees_the_future():
  net = tiny_1d_net()
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 64, 2))
  params = jax.jit(net.init)(jax.random.PRNGKey(1), x)["params"]
  z, c, preds = jax.jit(net.apply)({"params": params}, x)
  assert z.shape == (3, 8, 32) and c.shape == (3, 8, 32) and len(preds) == 3
  assert net.encoder.receptive_field() == (8, 8)
  contexts = jax.jit(lambda s: net.apply({"params": params}, s, method=cpc.CPC1DNet.contexts))
  c0 = contexts(x)
  for t in (0, 3, 6):  # c_t covers samples [0, 8t + 8): change everything after
    changed = x.at[:, 8 * t + 8 :].set(jax.random.normal(jax.random.PRNGKey(t), (3, 56 - 8 * t, 2)))
    c1 = contexts(changed)
    np.testing.assert_allclose(np.asarray(c1[:, : t + 1]), np.asarray(c0[:, : t + 1]), atol=1e-6)
    assert not np.allclose(np.asarray(c1[:, t + 1 :]), np.asarray(c0[:, t + 1 :]))
  g = jax.jit(jax.grad(lambda s: jnp.sum(contexts(s)[:, 2])))(x)
  assert np.all(np.asarray(g)[:, 24:] == 0) and np.abs(np.asarray(g)[:, :24]).sum() > 0


# -- the loss against numpy ------------------------------------------------------------


def numpy_cpc_loss(z, preds, steps, temperature=None):
  z = np.asarray(z, np.float64)
  t, d = z.shape[1], z.shape[-1]
  out = []
  for k, p in zip(steps, preds):
    p = np.asarray(p, np.float64)[:, : t - k].reshape(-1, d)
    target = z[:, k:].reshape(-1, d)
    if temperature:
      p = p / np.linalg.norm(p, axis=1, keepdims=True) / temperature
      target = target / np.linalg.norm(target, axis=1, keepdims=True)
    logits = p @ target.T
    m = logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(1)) + m[:, 0]
    out.append(np.mean(lse - np.diag(logits)))
  return np.mean(out)


def test_predictive_info_nce_matches_numpy_on_a_small_case():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)  # B=2, T=4 rows, 3 columns, D=5
  preds = [rng.normal(size=(2, 4, 3, 5)).astype(np.float32) for _ in range(2)]
  loss, acc, accs = cpc.predictive_info_nce(jnp.asarray(z), [jnp.asarray(p) for p in preds], (1, 2))
  assert float(loss) == pytest.approx(numpy_cpc_loss(z, preds, (1, 2)), rel=1e-5)
  cos_loss, _, _ = cpc.predictive_info_nce(
    jnp.asarray(z), [jnp.asarray(p) for p in preds], (1, 2), temperature=0.1
  )
  assert float(cos_loss) == pytest.approx(numpy_cpc_loss(z, preds, (1, 2), 0.1), rel=1e-5)
  # Hand check of one term: k = 2 has 2·2·3 = 12 targets; row 0 is (b=0, t=0, col 0).
  p, tg = preds[1][:, :2].reshape(-1, 5), z[:, 2:].reshape(-1, 5)
  assert tg.shape == (12, 5)
  np.testing.assert_array_equal(tg[0], z[0, 2, 0])
  np.testing.assert_array_equal(p[0], preds[1][0, 0, 0])
  assert 0.0 <= float(acc) <= 1.0 and len(accs) == 2
  with pytest.raises(ValueError, match="cannot predict 4 steps ahead"):
    cpc.predictive_info_nce(jnp.asarray(z), [jnp.asarray(preds[0])], (4,))


def test_image_loss_equals_numpy_on_the_networks_outputs():
  method = make(tiny_cpc(**{"augment.enabled": False, "method.patch_augment": {}}))
  assert method.view is None and method.patch_view is None
  images = some_images(3)
  v = jax.jit(method.init)(jax.random.PRNGKey(0), images)
  loss, _ = jax.jit(method.loss)(v.params, {}, {}, images, jax.random.PRNGKey(1), 0)
  z, ((_, _, preds),) = jax.jit(method.net.apply)(
    {"params": v.params}, cpc.patch_grid(method.preprocess(images), 8, 4)
  )
  assert method.temperature == 0.1  # the cpu preset's cosine score
  assert float(loss) == pytest.approx(numpy_cpc_loss(z, preds, (1, 2, 3), 0.1), rel=1e-5)
  method = make(
    tiny_cpc(**{"augment.enabled": False, "method.patch_augment": {}, "method.temperature": 0.0})
  )  # the paper's bilinear score
  loss, _ = jax.jit(method.loss)(v.params, {}, {}, images, jax.random.PRNGKey(1), 0)
  assert float(loss) == pytest.approx(numpy_cpc_loss(z, preds, (1, 2, 3)), rel=1e-5)


def test_patch_augmentation_is_the_only_randomness_when_image_augmentation_is_off():
  images = some_images(2)
  for patch_augment, random in [({}, False), (None, True)]:
    overrides = {"augment.enabled": False}
    if patch_augment is not None:
      overrides["method.patch_augment"] = patch_augment
    method = make(tiny_cpc(**overrides))
    assert (method.patch_view is not None) == random
    v = jax.jit(method.init)(jax.random.PRNGKey(0), images)
    loss_fn = jax.jit(method.loss)
    a = float(loss_fn(v.params, {}, {}, images, jax.random.PRNGKey(1), 0)[0])
    b = float(loss_fn(v.params, {}, {}, images, jax.random.PRNGKey(2), 0)[0])
    assert (a != b) == random, (a, b)


def test_patch_subcrop_keeps_a_random_window_of_every_patch():
  """Oord et al.'s sub-crop: each patch keeps one keep x keep window, at every offset alike
  over many patches, and the border around it reads as the mean colour (0 once normalised);
  the loss sees nothing of the border's pixels."""
  m = np.asarray(cpc.subcrop_mask(jax.random.PRNGKey(0), (40, 7, 7), 8, 6))[..., 0]
  flat = m.reshape(-1, 8, 8)
  assert set(np.unique(flat)) == {0.0, 1.0}
  np.testing.assert_array_equal(flat.sum((1, 2)), 36)
  rows, cols = flat.any(2), flat.any(1)  # the window is one contiguous block
  np.testing.assert_array_equal(rows.sum(1), 6)
  np.testing.assert_array_equal(cols.sum(1), 6)
  offsets = np.argmax(rows, 1) * 3 + np.argmax(cols, 1)
  counts = np.bincount(offsets, minlength=9)
  assert counts.min() > 0.8 * len(flat) / 9 and counts.max() < 1.2 * len(flat) / 9
  # with every other randomness off, the sub-crop makes the loss random, and a window of the
  # whole patch is no sub-crop
  images = some_images(2)
  off = {"augment.enabled": False, "method.patch_augment": {}}
  for keep, random in [(7, True), (8, False)]:
    method = make(tiny_cpc(**off, **{"method.patch_subcrop": keep}))
    v = jax.jit(method.init)(jax.random.PRNGKey(0), images)
    loss_fn = jax.jit(method.loss)
    a = float(loss_fn(v.params, {}, {}, images, jax.random.PRNGKey(1), 0)[0])
    b = float(loss_fn(v.params, {}, {}, images, jax.random.PRNGKey(2), 0)[0])
    assert (a != b) == random, (keep, a, b)
  with pytest.raises(ValueError, match="patch_subcrop=9"):
    make(tiny_cpc(**{"method.patch_subcrop": 9}))


# -- bad settings ----------------------------------------------------------------------


def test_steps_ahead_beyond_the_grid_fails_before_training(tmp_path):
  config = tiny_cpc(**{"method.steps_ahead": 7})  # a 7x7 grid allows at most 6 rows ahead
  with pytest.raises(
    ValueError,
    match="steps_ahead=7 is larger than the grid allows: the 7x7 grid .* at most 6 rows ahead",
  ):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "config.json").exists()
  with pytest.raises(ValueError, match="steps_ahead=3 is larger than the grid allows: the 3x3"):
    make(tiny_cpc(**{"method.patch_size": 16, "method.patch_stride": 8}))
  with pytest.raises(ValueError, match="first_step=4 must be in"):
    make(tiny_cpc(**{"method.first_step": 4}))
  assert make(tiny_cpc(**{"method.first_step": 2})).steps == (2, 3)
  with pytest.raises(ValueError, match="encoder_input_size=-16 must be 0 .* own 8 px"):
    make(tiny_cpc(**{"method.encoder_input_size": -16}))
  net = tiny_1d_net(steps=(1, 8))
  x = jnp.zeros((2, 64, 1))
  with pytest.raises(
    ValueError,
    match="steps_ahead=8 is larger than the grid allows: the "
    "encoded sequence \\(64 samples → 8 steps\\)",
  ):
    cpc.cpc_1d_loss(net, net.init(jax.random.PRNGKey(0), x)["params"], x)


def test_batchnorm_patch_encoder_is_refused():
  method = make(tiny_cpc(model={"name": "convnet", "widths": (8, 16)}))
  with pytest.raises(ValueError, match="without BatchNorm"):
    jax.jit(method.init)(jax.random.PRNGKey(0), some_images(2))


# -- 1-D: learning what is predictable, and nothing else ----------------------------------

B, T = 16, 128


def sines(key):
  """Each sequence a sinusoid of its own frequency and phase: the future follows the past."""
  kf, kp = jax.random.split(key)
  f = jax.random.uniform(kf, (B, 1, 1), minval=0.01, maxval=0.12)
  phase = jax.random.uniform(kp, (B, 1, 1), maxval=2 * jnp.pi)
  return jnp.sin(2 * jnp.pi * f * jnp.arange(T)[None, :, None] + phase)


def white_noise(key):
  """I.i.d. samples: z_{t+k} (disjoint windows) is independent of everything before."""
  return jax.random.normal(key, (B, T, 1))


def train_and_score(make_signals, steps=120):
  net = tiny_1d_net()
  sample = make_signals(jax.random.PRNGKey(0))
  params = jax.jit(net.init)(jax.random.PRNGKey(0), sample)["params"]
  tx = optax.adam(3e-3)

  def update(carry, key):
    params, opt = carry
    grads = jax.grad(lambda p: cpc.cpc_1d_loss(net, p, make_signals(key))[0])(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), None

  @jax.jit
  def fit_and_evaluate(params):
    (params, _), _ = jax.lax.scan(
      update, (params, tx.init(params)), jax.random.split(jax.random.PRNGKey(1), steps)
    )
    # Fresh held-out batches: nothing seen in training.
    return jax.vmap(lambda k: cpc.cpc_1d_loss(net, params, make_signals(k))[1])(
      jax.random.split(jax.random.PRNGKey(99), 4)
    )

  metrics = fit_and_evaluate(params)
  return {k: float(np.mean(v)) for k, v in metrics.items()}


def test_1d_cpc_predicts_a_predictable_future_and_not_noise():
  predictable = train_and_score(sines)
  noise = train_and_score(white_noise)
  chance = predictable["chance"]  # 1 / (16 sequences x (16 − k) steps), about 0.45%
  assert chance == pytest.approx(noise["chance"]) and chance < 0.005
  assert predictable["accuracy"] > 20 * chance, predictable
  assert noise["accuracy"] < 3 * chance, noise
  # On noise the loss stays at log N_k: the model can do no better than a uniform guess.
  log_n = np.mean([np.log(B * (16 - k)) for k in (1, 2, 3)])
  assert noise["loss"] == pytest.approx(log_n, rel=0.03)
  assert predictable["loss"] < 0.7 * log_n


# -- end to end ------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_preset_short_run_learns_and_writes_results(tmp_path):
  # 6 warm-up steps of 312: the short run must learn at once
  config = tiny("cpc", total_steps=30, batch_size=32, **{"optimizer.warmup_epochs": 0.02})
  # 30 steps cut the held-out InfoNCE by 0.302 (seed 0); half of it is asked.
  assert_learns(config, tmp_path, margin=0.15, measured=0.302)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["method"] == "cpc" and saved["steps"] == 30 and saved["knn@5"] > 10.0
  # Trained with the mean readout, read back with the grid's: the online probe, sized by the
  # readout, is not read; the grid's mean is the mean feature.
  config.method.feature = "grid"
  setup, state, step = train.restore_latest(config, str(tmp_path))
  images = some_images(2)
  grid = np.asarray(setup.method.encode(state.params["model"], {}, images))
  mean = np.asarray(make(tiny("cpc")).encode(state.params["model"], {}, images))
  assert step == 30 and grid.shape == (2, 25 * mean.shape[1])
  np.testing.assert_allclose(grid.reshape(2, 25, -1).mean(1), mean, rtol=1e-5, atol=1e-6)
