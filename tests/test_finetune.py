"""Fine-tuning protocol: end-to-end training of a pretrained encoder; LLRD scales."""

import dataclasses
import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import models
from sslx.evaluation import finetune
from sslx.methods import base
from tests.helpers import tiny_simclr


def test_finetune_a_tiny_checkpoint_changes_encoder_and_beats_chance(tmp_path):
  from sslx import train

  config = tiny_simclr(steps=2, evals={})
  train.train_and_evaluate(config, str(tmp_path))
  from sslx import checkpointing, evaluation

  mngr = checkpointing.manager(str(tmp_path), async_save=False)
  xtr, ytr, xte, yte, nc = evaluation.load_eval_data(config)
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(config, sample, len(xtr), nc)
  state, _ = checkpointing.restore(mngr, mngr.latest_step(), train.create_state(setup, 0, sample))
  state = jax.device_get(state)
  tr = np.random.default_rng(0).permutation(len(xtr))[:1000]
  te = np.random.default_rng(1).permutation(len(xte))[:300]  # splits may be sorted by class
  ctx = finetune.Context(
    setup.method, state.params["model"], state.batch_stats, xtr[tr], ytr[tr], xte[te], yte[te], nc
  )
  results, tuned = finetune.finetune(ctx, dict(steps=150, batch_size=64, lr=3e-3, mixup_alpha=0.0))
  # 10 classes: chance is 10% (measured: 23.7% held out, 30% on the last training batches).
  # The held-out figure uses BatchNorm statistics re-estimated for the final weights.
  assert results["finetune_train_acc"] > 15.0, results
  assert results["finetune"] > 15.0, results
  before = state.params["model"]["encoder"]
  after = tuned["model"]["encoder"]
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
  assert all(changed)


def test_protocol_needs_the_context():
  with pytest.raises(ValueError, match="needs the raw images"):
    finetune.run({}, object())


def test_llrd_scales_per_vit_block():
  vit = models.create_model("vit_tiny", patch_size=8, depth=3)
  params = jax.eval_shape(
    lambda: vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
  )["params"]
  scales = finetune.llrd_scales(params, 0.5)
  # L = 3 blocks: embeddings 0.5^4, block i 0.5^(3 - i), final norm 1.
  assert all(s == 0.5**4 for s in jax.tree.leaves(scales["patch_embed"]))
  for i in range(3):
    assert set(jax.tree.leaves(scales[f"block{i}"])) == {0.5 ** (3 - i)}
  assert set(jax.tree.leaves(scales["norm"])) == {1.0}
  flat = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(scales)[0]}
  assert max(flat.values()) == 1.0 and min(flat.values()) == 0.5**4
  # A ConvNet has no blocks: every scale is 1.
  conv = models.create_model("convnet", widths=(4, 8))
  cp = jax.eval_shape(
    lambda: conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
  )["params"]
  assert set(jax.tree.leaves(finetune.llrd_scales(cp, 0.5))) == {1.0}


def test_weight_decay_spares_tokens_embeddings_and_biases_as_mae_and_beit():
  vit = models.create_model("vit_tiny", patch_size=8, depth=2, rel_pos_bias=True)
  params = jax.eval_shape(
    lambda: vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
  )["params"]
  flat = {
    jax.tree_util.keystr(p, simple=True, separator="/"): m
    for p, m in jax.tree_util.tree_flatten_with_path(finetune.decay_mask(params))[0]
  }
  spared = {k for k, m in flat.items() if not m}
  assert {"cls_token", "pos_embed"} <= spared
  assert any(k.endswith("rel_pos_bias") for k in spared)
  assert all(k.endswith(("bias", "scale", "cls_token", "pos_embed")) for k in spared)
  decayed = {k for k, m in flat.items() if m}
  assert decayed and all(k.endswith("kernel") for k in decayed)


class _BNNet(nn.Module):
  """A BatchNorm on the flattened pixels: its batch statistics are the pixels' own."""

  def setup(self):
    self.bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)

  def __call__(self, x, train: bool = True):
    return self.encode(x, train)

  def encode(self, x, train: bool = True):
    return self.bn(x.reshape(x.shape[0], -1), use_running_average=not train)


@dataclasses.dataclass(frozen=True)
class _BNMethod(base.Method):
  """Only what fine-tuning calls: the default encoder_apply over `net.encode`."""

  net: nn.Module
  preprocess: Callable

  def init(self, rng, images):
    raise NotImplementedError

  def loss(self, params, batch_stats, method_state, images, rng, step):
    raise NotImplementedError


def test_precise_bn_is_the_mean_of_per_batch_statistics():
  net = _BNNet()
  method = _BNMethod(net, lambda x: x)
  images = np.random.default_rng(0).integers(0, 256, (40, 2, 2, 1)).astype(np.uint8)
  v = net.init(jax.random.PRNGKey(0), jnp.zeros((2, 2, 2, 1)), train=False)
  stale = jax.tree.map(lambda a: a + 3.0, v["batch_stats"])  # far from the data's
  got = finetune.recompute_batch_stats(
    method, v["params"], stale, images, batch=10, num_batches=3, seed=5
  )
  order = np.random.default_rng(5).permutation(40)
  x = [images[order[i * 10 : (i + 1) * 10]].reshape(10, -1) / 255.0 for i in range(3)]
  np.testing.assert_allclose(
    np.asarray(got["bn"]["mean"]), np.mean([b.mean(0) for b in x], 0), rtol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(got["bn"]["var"]), np.mean([b.var(0) for b in x], 0), rtol=1e-4
  )
  # encoders without BatchNorm (ViTs) pass through untouched
  assert finetune.recompute_batch_stats(method, v["params"], {}, images, 10) == {}


def test_masked_modeling_checkpoints_fine_tune_their_encoder_alone():
  """MAE (like data2vec and BEiT) keeps its ViT in `method.encoder`: fine-tuning trains that
  encoder and drops the decoder, as the paper does after pretraining."""
  from sslx.methods import mae
  from tests.test_mae import tiny_config

  method = mae.create(tiny_config(), total_steps=4)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
  y = (x[:, :, :, 0].mean((1, 2)) > 127).astype(np.int32)  # a learnable label: brightness
  v = jax.jit(method.init)(jax.random.PRNGKey(0), x[:2])
  assert set(v.params) > {"encoder"}  # the decoder and mask token are there before
  ctx = finetune.Context(method, v.params, v.batch_stats, x, y, x, y, 2)
  results, tuned = finetune.finetune(ctx, dict(steps=80, batch_size=32, lr=3e-3, flip=False))
  assert set(tuned["model"]) == {"encoder"}
  changed = [
    not np.allclose(a, b)
    for a, b in zip(
      jax.tree.leaves(v.params["encoder"]), jax.tree.leaves(tuned["model"]["encoder"])
    )
  ]
  assert all(changed)
  assert results["finetune"] > 70.0, results  # brightness is easy; chance is ~50%


def test_cutmix_mixes_targets_by_the_pasted_area():
  """Image i is the constant i and its target one-hot(i): after CutMix each image's share of
  its own pixels is exactly the weight its target keeps."""
  b = 6
  x = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, 16, 12, 3))
  t = jnp.eye(b)
  cutmix = jax.jit(finetune.cutmix, static_argnums=3)
  mix = jax.jit(finetune.mix, static_argnums=(3, 4))
  for seed in range(5):
    xm, tm = cutmix(jax.random.PRNGKey(seed), x, t, 1.0)
    own = np.asarray((xm == x).all(-1).mean((1, 2)))
    np.testing.assert_allclose(np.asarray(tm).diagonal(), np.where(own == 1.0, 1.0, own), atol=1e-6)
    np.testing.assert_allclose(np.asarray(tm).sum(1), 1.0, atol=1e-6)
    assert set(np.unique(np.asarray(xm))) <= set(range(b))  # pasted, never blended
  # both on: each batch is either a cutmix (values stay integers) or a mixup
  kinds = set()
  for seed in range(12):
    xm, _ = mix(jax.random.PRNGKey(seed), x + 0.5, t, 0.4, 1.0)
    kinds.add(bool(np.all(np.asarray(xm) % 1 == 0.5)))
  assert kinds == {True, False}


def test_class_balanced_subsets_and_their_image_lists(tmp_path):
  y = np.repeat(np.arange(4), [100, 200, 300, 7])
  for frac, want in ((0.01, [1, 2, 3, 1]), (0.1, [10, 20, 30, 1])):
    idx = finetune.class_balanced_subset(y, frac, seed=0)
    assert np.bincount(y[idx]).tolist() == want
    path = finetune.write_subset(str(tmp_path), frac, idx, y)
    rows = [line.split() for line in open(path) if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == idx.tolist() and [int(r[1]) for r in rows] == y[
      idx
    ].tolist()
  assert sorted(os.listdir(tmp_path)) == ["label_subset_10pct.txt", "label_subset_1pct.txt"]
  np.testing.assert_array_equal(
    finetune.class_balanced_subset(y, 0.1, seed=3), finetune.class_balanced_subset(y, 0.1, seed=3)
  )


def test_drop_path_setting_replaces_the_encoders_rate_for_fine_tuning():
  from sslx import methods
  from sslx.methods import mae
  from tests.test_mae import tiny_config

  method = mae.create(tiny_config(), total_steps=4)
  assert method.encoder.drop_path_rate == 0.0
  tuned = finetune.with_drop_path(method, 0.5)
  assert tuned.encoder.drop_path_rate == 0.5 and method.encoder.drop_path_rate == 0.0
  x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
  v = jax.jit(method.init)(jax.random.PRNGKey(0), x[:2])
  params = finetune.finetuned_params(method, v.params)

  def feats(m, key):
    return m.encoder_apply(params, {}, x, True, jax.random.PRNGKey(key))[0]

  # without drop path the dropout key changes nothing; with it, blocks are dropped per image
  np.testing.assert_array_equal(feats(method, 0), feats(method, 1))
  assert not np.allclose(feats(tuned, 0), feats(tuned, 1))
  # a network without drop path refuses the setting, naming it
  cnn = methods.get("simclr").create(tiny_simclr(), total_steps=4)
  with pytest.raises(ValueError, match="drop_path=0.1: .* has no drop path"):
    finetune.with_drop_path(cnn, 0.1)


@pytest.mark.slow
def test_finetune_sharded_over_8_devices_equals_one_device(tmp_path):
  """Global BatchNorm and the gradient reductions over a batch sharded across the mesh: the
  8-device run gives the 1-device run's weights (summation order aside), on a 1% subset whose
  list lands in the workdir."""
  from sslx import methods, sharding

  config = tiny_simclr()
  method = methods.get("simclr").create(config, total_steps=4)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (400, 32, 32, 3)).astype(np.uint8)
  y = np.repeat(np.arange(4), 100)
  v = jax.jit(method.init)(jax.random.PRNGKey(0), x[:2])
  cfg = dict(steps=3, batch_size=8, label_fraction=0.1, cutmix_alpha=1.0, mixup_alpha=0.2)
  out = []
  for n in (1, 8):
    mesh = sharding.make_mesh([("data", n)])
    ctx = finetune.Context(
      method, v.params, v.batch_stats, x, y, x[:40], y[:40], 4, mesh, str(tmp_path)
    )
    out.append(finetune.finetune(ctx, cfg))
  (r1, p1), (r8, p8) = out
  assert set(r1) == {"finetune_10pct", "finetune_train_loss", "finetune_train_acc"}
  assert r1["finetune_train_loss"] == pytest.approx(r8["finetune_train_loss"], rel=1e-4)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)
  assert len(open(tmp_path / "label_subset_10pct.txt").readlines()) == 41  # header + 40


def _tiny_context(workdir):
  """A tiny untrained SimCLR encoder and 256/78 embedded images, fine-tuned into `workdir`."""
  from sslx import data, methods

  config = tiny_simclr()
  method = methods.get("simclr").create(config, total_steps=10)
  # every class on both sides: the split is sorted by class
  x, y = data.decode_all(data.EmbeddedSource("test"), indices=np.arange(0, 2000, 6))
  order = np.random.default_rng(0).permutation(len(x))
  x, y = x[order], y[order]
  v = method.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]))
  return finetune.Context(
    method, v.params, v.batch_stats, x[:256], y[:256], x[256:], y[256:], 10, None, str(workdir)
  )


def _fine_tune(ctx, cfg):
  return finetune.finetune(ctx, cfg)


def _augmented_probe(ctx, cfg):
  from sslx.evaluation import linear_aug

  return linear_aug.augmented_probe(ctx, cfg), None


@pytest.mark.parametrize(
  "protocol,cfg",
  [
    (_fine_tune, dict(steps=12, batch_size=16, checkpoint_every_steps=5)),
    (_augmented_probe, dict(epochs=2, batch_size=40, lrs=(0.1, 1.0), checkpoint_every_steps=5)),
  ],
)
def test_a_protocol_stopped_by_sigterm_resumes_and_equals_the_uninterrupted_one(
  tmp_path, monkeypatch, protocol, cfg
):
  """12 steps either way (fine-tuning: 12 of 16; the probe: 2 epochs of 256 // 40 = 6)."""
  import signal

  from sslx import preemption

  whole, whole_params = protocol(_tiny_context(tmp_path / "whole"), cfg)
  real = finetune.reading.device_batches

  def sigterm_before_batch(k):
    def batches(*args, **kwargs):
      for i, b in enumerate(real(*args, **kwargs)):
        if i == k:
          os.kill(os.getpid(), signal.SIGTERM)
        yield b

    return batches

  work = tmp_path / "stopped"
  monkeypatch.setattr(finetune.reading, "device_batches", sigterm_before_batch(6))
  with pytest.raises(preemption.Preempted) as stopped:
    protocol(_tiny_context(work), cfg)
  assert stopped.value.code == preemption.EXIT_RESTART and stopped.value.step == 7
  (folder,) = (work / "protocol_checkpoints").iterdir()
  assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["7"]  # 5 dropped

  consumed = []

  def counting(images, labels, positions, sharding, **kwargs):
    positions = list(positions)
    if len(images) == 256:  # the training batches (not the test set's extraction)
      consumed.append(len(positions))
    return real(images, labels, positions, sharding, **kwargs)

  monkeypatch.setattr(finetune.reading, "device_batches", counting)
  resumed, resumed_params = protocol(_tiny_context(work), cfg)
  assert consumed == [12 - 7]  # only the batches after the checkpoint
  assert resumed == whole
  for a, b in zip(jax.tree.leaves(resumed_params), jax.tree.leaves(whole_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the final step is kept: a rerun trains nothing and reports the same figures
  assert protocol(_tiny_context(work), cfg)[0] == whole and consumed[-1] == 0
  # other settings are another run: a folder of their own, trained from step 0
  protocol(_tiny_context(work), dict(cfg, seed=1))
  assert consumed[-1] == 12 and len(list((work / "protocol_checkpoints").iterdir())) == 2


def test_fine_tuning_alone_extracts_no_frozen_features(tmp_path, monkeypatch):
  """With only fine-tuning in config.evals the end of a run does not extract features of both
  splits for no protocol (at ImageNet size, a pass over 1.28M images); fine-tuning still runs."""
  from sslx import evaluation, train
  from tests.helpers import tiny_simclr

  def no_extraction(*args, **kwargs):
    raise AssertionError("frozen features extracted")

  monkeypatch.setattr(evaluation, "extract_split", no_extraction)
  config = tiny_simclr(steps=2, evals={"finetune": {"steps": 4, "batch_size": 16}})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= results["finetune"] <= 100.0 and "knn@20" not in results


class _FlatNet(nn.Module):
  """The flattened pixels as features, no parameters: rows never mix."""

  def __call__(self, x, train: bool = True):
    return self.encode(x, train)

  def encode(self, x, train: bool = True):
    return x.reshape(x.shape[0], -1)


def test_a_row_labelled_minus_one_counts_in_neither_loss_nor_accuracy():
  """A row that nothing readable could stand in for is black with label -1: the fine-tuning
  step's loss, accuracy and update are those of the batch without it."""
  import optax

  method = _BNMethod(_FlatNet(), lambda x: x)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 2, 2, 3), dtype=np.uint8)
  images[2] = 0
  params = {
    "model": {},
    "head": {"kernel": jnp.asarray(rng.normal(size=(12, 4)), jnp.float32), "bias": jnp.zeros(4)},
  }
  cfg = dict(flip=False, label_smoothing=0.1, mixup_alpha=0.0, cutmix_alpha=0.0)
  tx = optax.sgd(0.1)

  def step(x, y):
    state = finetune._State(params, {}, tx.init(params))
    kw = dict(method=method, tx=tx, cfg=cfg, num_classes=4)
    return finetune._train_step(state, jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(0), **kw)

  with_bad, (loss, acc) = step(images, [1, 3, -1])
  without, (loss_ok, acc_ok) = step(images[:2], [1, 3])
  np.testing.assert_allclose(loss, loss_ok, rtol=1e-6)
  assert float(acc) == float(acc_ok)
  for a, b in zip(jax.tree.leaves(with_bad.params), jax.tree.leaves(without.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
