"""Encoder weights out to timm / torchvision and back in (sslx.weights).

The PyTorch side runs in a separate environment (torch 1.13, torchvision 0.14, timm 0.9:
`../shared/bench/peer_env.sh`), found through SSLX_PEER_PYTHON or `.peer-venv/bin/python`; all
its work for this module is one subprocess. Models are created locally at random (no download).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sslx import methods, models, weights
from tests import helpers

PEER = weights.find_peer_python()
IMAGE = 16
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
# one torch subprocess (~30 s of imports and model building) shared by the module's tests
needs_peer = [
  pytest.mark.skipif(
    PEER is None, reason="no PyTorch peer: set SSLX_PEER_PYTHON or build .peer-venv"
  ),
  pytest.mark.slow,
]

VIT = dict(patch_size=4, dim=32, depth=2, num_heads=2)


class _Pre:
  mean, std = MEAN, STD


def _randomize(tree, seed, scale=0.05):
  """Every leaf random (BatchNorm statistics and affines included), variances positive."""
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, tree))
  rng = np.random.default_rng(seed)
  out = {}
  for k, v in flat.items():
    if k[-1] == "var":
      out[k] = (v * rng.uniform(0.9, 1.1, v.shape)).astype(np.float32)
    elif k[-1] == "scale":
      out[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    else:
      out[k] = (v + rng.normal(0, scale, v.shape)).astype(np.float32)
  return traverse_util.unflatten_dict(out)


def _encoder(name, **kw):
  """A random encoder whose BatchNorm statistics are those of a batch of random images
  (perturbed), so its features are O(1) and an absolute tolerance means something."""
  enc = models.create_model(name, **kw)
  x = jax.random.normal(jax.random.PRNGKey(3), (8, IMAGE, IMAGE, 3))
  v = enc.init(jax.random.PRNGKey(0), x[:1], train=False)
  params = _randomize(v["params"], 1)
  stats = v.get("batch_stats", {})
  if stats and hasattr(enc, "bn_momentum"):
    calib = enc.clone(bn_momentum=0.0)  # running statistics := this batch's statistics
    _, upd = calib.apply(
      {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
    )
    stats = _randomize(upd["batch_stats"], 2, scale=0.01)
  return enc, params, stats


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory):
  """Exports three random encoders, creates a random timm ViT and torchvision ResNet, and runs
  every PyTorch job in one subprocess. Returns what each test compares."""
  if PEER is None:
    pytest.skip("no PyTorch peer: set SSLX_PEER_PYTHON or build .peer-venv")
  tmp = tmp_path_factory.mktemp("weights")
  images = np.random.default_rng(0).integers(0, 256, (4, IMAGE, IMAGE, 3), dtype=np.uint8)
  np.save(tmp / "images.npy", images)
  out, jobs = {}, []
  for key, name, kw, fmt in (
    ("vit_timm", "vit_tiny", VIT, "timm"),
    ("vit_mean_timm", "vit_tiny", dict(VIT, pool="mean"), "timm"),
    ("resnet_torchvision", "resnet18", {}, "torchvision"),
    ("resnet_cifar_timm", "resnet18", dict(stem="cifar"), "timm"),
  ):
    enc, p, s = _encoder(name, **kw)
    path = str(tmp / f"{key}.safetensors")
    meta = weights.export(enc, name, fmt, p, s, _Pre, IMAGE, path)
    ours = weights.encoder_features(enc, p, s, images, MEAN, STD)
    feats = str(tmp / f"{key}.npy")
    jobs.append(
      dict(op="features", weights=path, meta=meta, images=str(tmp / "images.npy"), out=feats)
    )
    out[key] = (ours, feats, meta)
  imports = {
    "timm_vit": (
      "timm",
      "vit_tiny_patch16_224",
      dict(img_size=IMAGE, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0),
    ),
    "tv_resnet": ("torchvision", "resnet18", {}),
  }
  for key, (lib, name, kw) in imports.items():
    jobs.append(
      dict(
        op="create",
        library=lib,
        model=name,
        pretrained=False,
        kwargs=kw,
        randomize_bn=True,
        out=str(tmp / f"{key}.safetensors"),
        images=str(tmp / "images.npy"),
        features=str(tmp / f"{key}.npy"),
        mean=MEAN,
        std=STD,
      )
    )
  weights.run_peer(PEER, jobs)
  return tmp, images, out


@pytest.mark.parametrize(
  "key", ["vit_timm", "vit_mean_timm", "resnet_torchvision", "resnet_cifar_timm"]
)
@needs_peer[0]
@needs_peer[1]
def test_export_reloads_strict_with_equal_features(peer_run, key):
  _, _, out = peer_run
  ours, feats, meta = out[key]
  theirs = np.load(feats)
  assert theirs.shape == ours.shape
  diff = np.abs(theirs - ours).max()
  scale = np.abs(ours).max()
  print(key, "max_abs_diff", diff, "max_abs", scale)
  # 1e-4 absolute on O(1) features; a random ResNet's reach ~50, where float32 summation
  # order alone moves the last digits: 1e-4 of the features' scale
  assert diff < 1e-4 * max(1.0, scale), diff
  assert scale > 0.1  # not a trivial comparison  # not a trivial comparison


@pytest.mark.parametrize(
  "key,name,kw", [("timm_vit", "vit_tiny", VIT), ("tv_resnet", "resnet18", {})]
)
@needs_peer[0]
@needs_peer[1]
def test_import_gives_pytorch_features(peer_run, key, name, kw):
  tmp, images, _ = peer_run
  enc, like_p, like_s = _encoder(name, **kw)
  sd = weights.read_state_dict(str(tmp / f"{key}.safetensors"))
  p, s = weights.load_into(enc, sd, like_p, like_s)
  ours = weights.encoder_features(enc, p, s, images, MEAN, STD)
  theirs = np.load(tmp / f"{key}.npy")
  diff = np.abs(theirs - ours).max()
  print(key, "max_abs_diff", diff, "max_abs", np.abs(ours).max())
  assert diff < 1e-4 * max(1.0, np.abs(ours).max()), diff


def test_no_counterpart_names_model_and_formats(tmp_path):
  enc, p, s = _encoder("convnet", widths=(8, 16))
  with pytest.raises(
    weights.NoCounterpart, match=r"'convnet'.*timm.*Formats that can take 'convnet': safetensors"
  ):
    weights.export(enc, "convnet", "timm", p, s, _Pre, IMAGE, str(tmp_path / "x"))
  enc, p, s = _encoder("vit_tiny", **VIT)
  with pytest.raises(weights.NoCounterpart, match=r"'vit_tiny'.*torchvision.*timm, safetensors"):
    weights.export(enc, "vit_tiny", "torchvision", p, s, _Pre, IMAGE, str(tmp_path / "x"))
  enc, p, s = _encoder("resnet18", widths=(8, 16, 32, 64))
  with pytest.raises(weights.NoCounterpart, match=r"widths \(8, 16, 32, 64\).*safetensors"):
    weights.export(enc, "resnet18", "torchvision", p, s, _Pre, IMAGE, str(tmp_path / "x"))
  assert not os.path.exists(tmp_path / "x")


@pytest.mark.slow
def test_safetensors_roundtrip_through_a_method(tmp_path):
  """The evaluated encoder is found inside SimCLR's variables, exported in sslx's layout and
  read back by init_from=file: into a fresh state (features equal exactly)."""
  c = helpers.tiny_simclr()
  c.model = dict(name="vit_tiny", **VIT)
  c.dataset.image_size = IMAGE
  method = methods.get("simclr").create(c, total_steps=10)
  images = np.random.default_rng(0).integers(0, 256, (4, IMAGE, IMAGE, 3), dtype=np.uint8)
  v = method.init(jax.random.PRNGKey(1), jnp.asarray(images[:2]))
  enc = weights.encoder_module(c)
  ep, es = weights.find_encoder(method, enc, v.params, v.batch_stats, images)
  path = str(tmp_path / "enc.safetensors")
  meta = weights.export(enc, "vit_tiny", "safetensors", ep, es, method.preprocess, IMAGE, path)
  assert meta["mean"] == list(method.preprocess.mean)
  fresh = method.init(jax.random.PRNGKey(7), jnp.asarray(images[:2]))
  p, s, _ = weights.init_variables(
    c, enc, f"file:{path}", fresh.params, fresh.batch_stats, fresh.method_state
  )
  want = np.asarray(method.encode(v.params, v.batch_stats, jnp.asarray(images)))
  got = np.asarray(method.encode(p, s, jnp.asarray(images)))
  before = np.asarray(method.encode(fresh.params, fresh.batch_stats, jnp.asarray(images)))
  np.testing.assert_array_equal(got, want)
  assert np.abs(before - want).max() > 1e-2
  # the projection head is untouched by init_from
  np.testing.assert_array_equal(
    jax.tree.leaves(p["head"])[0], jax.tree.leaves(fresh.params["head"])[0]
  )


@pytest.mark.slow
def test_export_of_a_vit_trained_on_smaller_views_builds_the_evaluated_grid(tmp_path):
  """A ViT trained on 24 px views of 32 px images stores a 3x3 position embedding and
  resamples it for the 4x4 grid evaluation sees. The export is the model evaluation uses: a
  timm state dict with 4x4 (+ CLS) positions whose features, read back, equal method.encode's
  on the whole 32 px images (and timm's own, with the peer)."""
  from sslx import data, export, train

  c = helpers.tiny_simclr(steps=2, evals={})
  c.augment.crop_size = 24
  c.model = dict(name="vit_tiny", patch_size=8, dim=32, depth=2, num_heads=2)
  work = str(tmp_path / "run")
  train.train_and_evaluate(c, work)
  setup, state, _ = train.restore_latest(c, work)
  assert [
    leaf.shape[1]
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params["model"])
    if path[-1].key == "pos_embed"
  ] == [9]  # the 3x3 grid of the training views
  out = str(tmp_path / "vit.safetensors")
  line = export.export_checkpoint(c, work, "timm", out, peer_python=PEER, verify=PEER is not None)
  sd = weights.read_state_dict(out)
  assert sd["pos_embed"].shape == (1, 1 + 16, 32)
  source = data.build_source(c.dataset, "train")
  images = np.stack([source[i]["image"] for i in range(8)])
  want = np.asarray(setup.method.encode(state.params["model"], state.batch_stats, images))
  encoder = weights.encoder_module(c)
  like = encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  params, stats = weights.load_into(encoder, sd, like["params"], {})
  assert params["pos_embed"].shape == (1, 16, 32)
  pre = setup.method.preprocess
  got = weights.encoder_features(encoder, params, stats, images, pre.mean, pre.std)
  np.testing.assert_allclose(got, want, atol=1e-5)
  if PEER:
    assert line["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_cli_export_of_a_trained_run_verifies_and_init_from_reads_it(tmp_path):
  """Two steps of SimCLR with a tiny ViT, `python -m sslx export --format=timm --verify`
  (with the peer: max_abs_diff printed), then the trainer's init_from reading the file back:
  the fresh state's encoder gives the trained run's features."""
  import json
  import subprocess
  import sys

  from sslx import checkpointing, data, train

  cfg_file = tmp_path / "tiny_vit.py"
  cfg_file.write_text(
    "from tests import helpers\n\n\ndef get_config():\n"
    "  c = helpers.tiny_simclr(steps=2, evals={})\n"
    "  c.model = dict(name='vit_tiny', patch_size=8, dim=32, depth=2, num_heads=2)\n"
    "  return c\n"
  )
  c = helpers.tiny_simclr(steps=2, evals={})
  c.model = dict(name="vit_tiny", patch_size=8, dim=32, depth=2, num_heads=2)
  work = str(tmp_path / "run")
  train.train_and_evaluate(c, work)
  out = str(tmp_path / "vit.safetensors")
  fmt_args = ["--format=timm"] + (["--verify", f"--peer_python={PEER}"] if PEER else [])
  cmd = [sys.executable, "-m", "sslx", "export", f"--config={cfg_file}"]
  overrides = []
  env = dict(os.environ, PYTHONPATH=helpers.REPO)
  proc = subprocess.run(
    cmd + overrides + [f"--workdir={work}", f"--out={out}"] + fmt_args,
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert line["model"] == "vit_tiny_patch16_224" and line["kwargs"]["patch_size"] == 8
  if PEER:
    print("trained ViT export max_abs_diff", line["max_abs_diff"])
    assert line["max_abs_diff"] < 1e-4
  meta = json.load(open(out + ".json"))
  assert meta["input_size"] == [3, 32, 32] and meta["library"] == "timm"
  # the trainer's init_from on a fresh state: the run's encoder comes back
  c.init_from = f"file:{out}"
  source = data.build_source(c.dataset, "train")
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(c, sample, len(source), source.num_classes)
  fresh = train.create_state(setup, 5, sample)
  loaded = train.init_encoder_from(c, setup, fresh)
  mngr = checkpointing.manager(work, async_save=False)
  trained, _ = checkpointing.restore(mngr, mngr.latest_step(), fresh)
  images = jnp.asarray(np.stack([source[i]["image"] for i in range(8)]))
  enc = setup.method.encode
  want = enc(trained.params["model"], trained.batch_stats, images)
  got = enc(loaded.params["model"], loaded.batch_stats, images)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # the commands on a trained run (evaluate, visualize, finetune, export) take init_from where
  # the workdir holds no checkpoint: the same encoder at step 0
  _, state, step = train.restore_latest(c, str(tmp_path / "empty"))
  got = enc(state.params["model"], state.batch_stats, images)
  assert step == 0
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  c.init_from = ""
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*--config.init_from="):
    train.restore_latest(c, str(tmp_path / "empty"))
