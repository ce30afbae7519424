"""Evaluation protocols beyond the frozen-feature defaults: the k/temperature sweep of k-NN,
few-shot ridge regression, the augmented linear probe (sharded over the mesh) and k-NN during
training written to TensorBoard."""

import dataclasses
import glob
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from sslx import sharding, train
from sslx.evaluation import fewshot, finetune, knn, linear_aug
from tests.helpers import tiny_simclr


def _brute_knn(train, ytr, test, k, t, c):
  a = train / np.linalg.norm(train, axis=1, keepdims=True)
  b = test / np.linalg.norm(test, axis=1, keepdims=True)
  sims = b @ a.T
  pred = []
  for row in sims:
    top = np.argsort(-row)[:k]
    votes = np.zeros(c)
    np.add.at(votes, ytr[top], np.exp(row[top] / t))
    pred.append(votes.argmax())
  return np.array(pred)


def test_knn_sweeps_k_and_temperature_in_one_pass():
  rng = np.random.default_rng(0)
  train, ytr = rng.normal(size=(300, 8)), rng.integers(0, 5, 300)
  test, yte = rng.normal(size=(70, 8)), rng.integers(0, 5, 70)
  out = knn.knn_accuracy(
    train, ytr, test, yte, 5, ks=(3, 20), temperature=0.07, chunk=32, temperatures=(0.5, 0.02)
  )
  assert sorted(out) == sorted(
    ["knn@3", "knn@20", "knn@3_T0.5", "knn@20_T0.5", "knn@3_T0.02", "knn@20_T0.02"]
  )
  for k in (3, 20):
    for t, key in ((0.07, f"knn@{k}"), (0.5, f"knn@{k}_T0.5"), (0.02, f"knn@{k}_T0.02")):
      want = 100.0 * (_brute_knn(train, ytr, test, k, t, 5) == yte).mean()
      assert out[key] == pytest.approx(want), key


def _clusters(n_per, classes, dim, spread, seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * 5
  y = np.repeat(np.arange(classes), n_per)
  return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_fewshot_ridge_on_separable_clusters_is_exact():
  xtr, ytr = _clusters(30, 6, 16, 0.3, 0)
  xte, yte = _clusters(20, 6, 16, 0.3, 0)  # same centres, new noise draw below
  xte = xte + np.random.default_rng(9).normal(0, 0.3, xte.shape)
  out = fewshot.fewshot_accuracy(xtr, ytr, xte, yte, 6, shots=(1, 5, 25))
  assert out == {"fewshot@1": 100.0, "fewshot@5": 100.0, "fewshot@25": 100.0}


def test_ridge_primal_and_dual_agree_with_the_normal_equations():
  rng = np.random.default_rng(1)
  for n, d in ((10, 30), (40, 6)):
    x, t = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
    want = np.linalg.lstsq(
      np.vstack([x, np.sqrt(0.5) * np.eye(d)]), np.vstack([t, np.zeros((d, 3))]), rcond=None
    )[0]
    np.testing.assert_allclose(fewshot.ridge(x, t, 0.5), want, atol=1e-10)


def test_fewshot_draws_are_class_balanced_and_nested():
  y = np.repeat(np.arange(4), [3, 10, 10, 10])
  orders = fewshot.class_orders(y, 4, np.random.default_rng(0))
  idx = fewshot.sample_shots(orders, 5)
  assert np.bincount(y[idx]).tolist() == [3, 5, 5, 5]
  # big_vision's draws: a draw's 1-shot images are among its 5-shot ones
  assert set(fewshot.sample_shots(orders, 1)) <= set(idx)


def _big_vision_fewshot(xtr, ytr, xte, yte, num_classes, l2_reg):
  """big_vision's evaluators/fewshot_lsr.py, its eigendecomposition route, in numpy."""
  mean, std = xtr.mean(0, keepdims=True), xtr.std(0, keepdims=True) + 1e-5
  x = np.pad((xtr - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
  y = 2.0 * np.eye(num_classes)[ytr] - 1.0
  if x.shape[0] >= x.shape[1]:
    eigs, q = np.linalg.eigh(x.T @ x)
    rhs, lhs = q.T @ (x.T @ y), q
  else:
    eigs, q = np.linalg.eigh(x @ x.T)
    rhs, lhs = q.T @ y, x.T @ q
  w = (lhs / (eigs + l2_reg)[None]) @ rhs
  xt = np.pad((xte - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
  return 100.0 * np.mean(np.argmax(xt @ w, 1) == yte)


def test_fewshot_equals_big_vision_and_ignores_each_dimensions_scale():
  rng = np.random.default_rng(3)
  xtr, ytr = _clusters(40, 5, 24, 4.0, 1)
  xte, yte = _clusters(30, 5, 24, 4.0, 1)
  xte = xte + rng.normal(0, 4.0, xte.shape)
  scale = np.exp(rng.normal(0, 2, 24))  # dimensions on very different scales
  xtr, xte = xtr * scale, xte * scale
  out = fewshot.fewshot_accuracy(xtr, ytr, xte, yte, 5, shots=(2, 10), l2_reg=1024.0, draws=2)
  for s in (2, 10):  # primal (60 > 25) and dual (10 < 25) forms
    want = []
    for d in range(2):
      orders = fewshot.class_orders(ytr, 5, np.random.default_rng([0, d]))
      idx = fewshot.sample_shots(orders, s)
      want.append(_big_vision_fewshot(xtr[idx], ytr[idx], xte, yte, 5, 1024.0))
    assert out[f"fewshot@{s}"] == pytest.approx(np.mean(want), abs=1e-9)
  # per-dimension standardisation: rescaling the features changes nothing
  again = fewshot.fewshot_accuracy(
    xtr / scale, ytr, xte / scale, yte, 5, shots=(2, 10), l2_reg=1024.0, draws=2
  )
  assert again == out
  assert 40.0 < out["fewshot@10"] < 100.0  # neither trivial nor chance (20)


@dataclasses.dataclass(frozen=True)
class _MeanColour:
  """A frozen 'encoder' whose feature is an image's mean colour (x4): solid-colour images keep
  their feature under any crop and flip, so the augmented probe must separate them exactly."""

  def encode(self, params, batch_stats, images):
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
    return jnp.tile(x.mean((1, 2)), 4) * params["scale"]


def _solid_images(n_per, seed):
  colours = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [200, 200, 40]], np.uint8)
  y = np.repeat(np.arange(4), n_per)
  x = np.broadcast_to(colours[y][:, None, None], (len(y), 8, 8, 3)).copy()
  x = np.clip(
    x.astype(int) + np.random.default_rng(seed).integers(-15, 16, (len(y), 1, 1, 3)), 0, 255
  )
  return x.astype(np.uint8), y


def _ctx(mesh):
  xtr, ytr = _solid_images(16, 0)
  xte, yte = _solid_images(8, 1)
  return finetune.Context(_MeanColour(), {"scale": jnp.ones(())}, {}, xtr, ytr, xte, yte, 4, mesh)


def test_augmented_probe_separates_a_toy_set_and_shards():
  cfg = dict(epochs=6, batch_size=16, lrs=(0.0, 0.1, 1.0))
  one = linear_aug.augmented_probe(_ctx(sharding.make_mesh([("data", 1)])), cfg)
  eight = linear_aug.augmented_probe(_ctx(sharding.make_mesh([("data", 8)])), cfg)
  assert one["linear_aug"] == 100.0 and one["linear_aug_lr"] == 0.1  # the first best head
  assert one["linear_aug@lr1"] == 100.0
  assert one["linear_aug@lr0"] == 25.0  # an untrained head: every logit 0, all class 0
  # sharding over 8 devices changes nothing but summation order
  for k in one:
    assert eight[k] == pytest.approx(one[k], abs=1e-6), k


def _scalars(workdir, tag):
  """(step, value) of `tag` in the run's TensorBoard event files (TFRecord framing)."""
  out = []
  for path in sorted(glob.glob(f"{workdir}/tensorboard/events.out.tfevents*")):
    buf = open(path, "rb").read()
    pos = 0
    while pos < len(buf):
      (n,) = struct.unpack("<Q", buf[pos : pos + 8])
      ev = event_pb2.Event.FromString(buf[pos + 12 : pos + 12 + n])
      pos += 12 + n + 4
      for v in ev.summary.value:
        if v.tag == tag:
          out.append((ev.step, v.simple_value))
  return out


@pytest.mark.slow
def test_tiny_run_eval_every_steps_and_protocols(tmp_path):
  """6 steps of the demo shrunk: k-NN every 2 steps to TensorBoard; at the end few-shot and the
  augmented probe above chance (10 classes) on the embedded set."""
  c = tiny_simclr(steps=6, batch=32)
  c.eval_every_steps = 2
  c.eval_every_subset = 200
  c.evals = {
    "knn": {"ks": (5,), "temperature": 0.07},
    "fewshot": {"shots": (5, 25), "draws": 1},
    "linear_aug": {"epochs": 2, "batch_size": 64, "lrs": (0.1, 1.0)},
  }
  res = train.train_and_evaluate(c, str(tmp_path))
  curve = _scalars(tmp_path, "eval/knn_5")  # tensorboardX writes "@" as "_"
  assert [s for s, _ in curve] == [2, 4, 6, 6]  # every 2 steps on the subset, then the final
  assert all(0.0 < v <= 100.0 for _, v in curve)
  assert curve[-1][1] == pytest.approx(res["knn@5"])
  assert res["fewshot@25"] > 15.0 and res["fewshot@5"] > 12.0
  assert res["linear_aug"] > 15.0 and res["linear_aug_lr"] in (0.1, 1.0)
  jax.clear_caches()


def test_augmented_probe_loss_skips_an_unreadable_row():
  """A batch with a row that nothing readable could stand in for (black, label -1): each head's
  loss is the cross-entropy averaged over the readable rows alone (the batch statistics still see
  every row, as the BatchNorm in front of the heads does)."""
  import optax

  from sslx import augment

  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
  labels = jnp.asarray([2, 0, -1, 1])
  cfg = dict(linear_aug.DEFAULTS, crop_scale=(1.0, 1.0), flip=False)
  view = linear_aug._view(cfg, 8)
  lrs = jnp.asarray([0.1, 1.0])
  state = linear_aug.ProbeState(
    jnp.asarray(rng.normal(size=(2, 192, 3)), jnp.float32),
    jnp.zeros((2, 3)),
    (jnp.zeros((2, 192, 3)), jnp.zeros((2, 3))),
    jnp.zeros(192),
    jnp.ones(192),
    jnp.zeros((), jnp.int32),
  )

  def encode(params, batch_stats, x):
    return x.reshape(x.shape[0], -1)

  key = jax.random.PRNGKey(0)
  kw = dict(encode=encode, view=view, lrs=lrs, cfg=cfg, schedule=lambda step: 1.0)
  _, per_head = linear_aug.train_step(
    state, {"params": {}, "batch_stats": {}}, images, labels, key, **kw
  )
  feats = encode(None, None, augment.augment_batch(key, images, view))
  logits = linear_aug.head_logits(state, feats, feats.mean(0), feats.var(0))  # [H, B, C]
  readable = np.array([0, 1, 3])
  ce = optax.softmax_cross_entropy(logits[:, readable], jax.nn.one_hot(labels[readable], 3))
  np.testing.assert_allclose(per_head, ce.mean(-1), rtol=1e-5)
