"""Evaluation data at scale: a class-balanced train subset, decoding only what it uses."""

import dataclasses
import io
import tracemalloc
import types

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sslx import config_lib, data, evaluation, sharding
from sslx.data import sources
from sslx.evaluation import knn


def test_balanced_subset_is_even_over_classes():
  labels = np.array([0] * 500 + [1] * 300 + [2] * 7 + [3] * 193)
  idx = data.balanced_subset(labels, 100, seed=0)
  assert len(idx) == 100 and (np.diff(idx) > 0).all()
  counts = np.bincount(labels[idx], minlength=4)
  assert counts[2] == 7  # a small class gives all it has; the rest share the remainder evenly
  assert sorted(counts[[0, 1, 3]].tolist()) == [31, 31, 31]
  np.testing.assert_array_equal(idx, data.balanced_subset(labels, 100, seed=0))
  assert not np.array_equal(idx, data.balanced_subset(labels, 100, seed=1))
  np.testing.assert_array_equal(data.balanced_subset(labels, 0), np.arange(len(labels)))


def write_split(root, split, n, size=64, classes=4):
  rng = np.random.default_rng(n)
  for k in range(n):
    d = root / split / f"c{k % classes}"
    d.mkdir(parents=True, exist_ok=True)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "JPEG")
    (d / f"{k:05d}.jpg").write_bytes(out.getvalue())


def eval_config(path, limit):
  c = config_lib.base_config()
  c.dataset.name = "image_folder"
  c.dataset.path = str(path)
  c.dataset.image_size = 64
  c.eval_train_limit = limit
  return c


@pytest.fixture
def decodes(monkeypatch):
  """{"n": how many images were decoded since the test began (or since reset to 0)}."""
  calls = {"n": 0}
  real = sources.decode_image

  def counting(blob, size):
    calls["n"] += 1
    return real(blob, size)

  monkeypatch.setattr(sources, "decode_image", counting)
  return calls


def test_eval_decodes_only_the_subset_and_memory_does_not_grow_with_the_split(tmp_path, decodes):
  calls = decodes
  peaks = {}
  for n in (200, 2000):
    root = tmp_path / f"n{n}"
    write_split(root, "train", n)
    write_split(root, "test", 20)
    calls["n"] = 0
    tracemalloc.start()
    xtr, ytr, xte, yte, num_classes = evaluation.load_eval_data(eval_config(root, 100))
    peaks[n] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert calls["n"] == 100 + 20  # the 100 chosen train images and the test split
    assert xtr.shape == (100, 64, 64, 3) and np.bincount(ytr).tolist() == [25] * 4
    assert xte.shape == (20, 64, 64, 3) and num_classes == 4
  # 100 decoded images are 1.2 MB; the whole 2,000-image split would be 24 MB. The larger split
  # costs only its file list.
  assert peaks[2000] < 1.5 * peaks[200] + 1e6, peaks


def _fingerprint(x):
  """A deterministic 'encoder' for the extraction tests: a few pixels and the mean colour."""
  x = x.astype(jnp.float32)
  return jnp.concatenate([x[:, ::16, ::16].reshape(x.shape[0], -1), x.mean((1, 2))], axis=1)


def test_streamed_features_equal_decoded_ones_on_8_devices_and_skip_unreadable_files(
  tmp_path, decodes
):
  calls = decodes
  write_split(tmp_path, "train", 75)
  write_split(tmp_path, "test", 20)
  (tmp_path / "train" / "c1" / "broken.jpg").write_bytes(b"not a jpeg")
  train_split, test_split, num_classes = evaluation.eval_splits(eval_config(tmp_path, 0))
  assert (len(train_split), len(test_split), num_classes) == (76, 20, 4)  # nothing decoded yet
  mesh = sharding.make_mesh([("data", 8)])
  for threads in (1, 3):  # decoded in this thread, and split over a pool
    calls["n"] = 0
    images = evaluation.SplitImages(train_split, num_threads=threads)
    feats, labels = evaluation.extract_split(_fingerprint, images, mesh, batch_size=16)
    assert calls["n"] == 76  # every record once, the unreadable one included
    x, y = train_split.decode()
    assert x.shape[0] == 75  # the unreadable file is left out by both
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(feats, evaluation.extract(_fingerprint, x, mesh, 16))


def test_features_only_evaluation_reads_batches_and_equals_the_decoded_one(tmp_path, monkeypatch):
  write_split(tmp_path, "train", 120)
  write_split(tmp_path, "test", 40)
  config = eval_config(tmp_path, 100)
  config.evals = {"knn": {"ks": (5,)}, "linear": {"epochs": 20}, "fewshot": {"shots": (2,)}}
  config.eval_baselines = False
  method = _Encoder()
  state = types.SimpleNamespace(params={"model": {}}, batch_stats={}, method_state={})
  mesh = sharding.make_mesh([("data", 8)])
  decoded = evaluation.run_all(
    config, method, state, mesh, eval_data=evaluation.load_eval_data(config)
  )

  def refuse(self):
    raise AssertionError(f"the {self.name} split was decoded whole")

  monkeypatch.setattr(evaluation.Split, "decode", refuse)
  streamed = evaluation.run_all(config, method, state, mesh)
  assert streamed == decoded
  assert 0 < streamed["knn@5"] < 100


@dataclasses.dataclass(frozen=True)
class _Encoder:
  """The smallest method evaluation can run: `encode` and the encoder it names."""

  eval_encoder = "online"

  def encode(self, params, batch_stats, images):
    return _fingerprint(images)

  def eval_variables(self, params, batch_stats, method_state):
    return params, batch_stats


def test_periodic_knn_decodes_only_its_subset(tmp_path, decodes):
  calls = decodes
  write_split(tmp_path, "train", 200)
  write_split(tmp_path, "test", 60)
  config = eval_config(tmp_path, 0)  # the final evaluation would decode all 200
  config.eval_every_steps = 10
  config.eval_every_subset = 30
  periodic = knn.PeriodicKnn(config, _Encoder(), sharding.make_mesh([("data", 1)]), None)
  assert calls["n"] == 30 + 15
  xtr, ytr, xte, yte, _ = periodic.data
  assert (len(xtr), len(xte)) == (30, 15)
  state = types.SimpleNamespace(params={"model": {}}, batch_stats={}, method_state={})
  assert periodic(9, state) is None and set(periodic(10, state)) == {"knn@20"}


def test_image_protocols_read_batch_by_batch_equal_the_decoded_ones(tmp_path, monkeypatch):
  """Fine-tuning and the augmented probe over splits larger than the decode budget read their
  batches from the files (each process its own rows) and give the decoded path's figures."""
  import jax

  from sslx import methods
  from tests.helpers import tiny_simclr

  write_split(tmp_path, "train", 96, size=32)
  write_split(tmp_path, "test", 40, size=32)
  (tmp_path / "test" / "c2" / "broken.jpg").write_bytes(b"not a jpeg")
  config = tiny_simclr()
  config.dataset = eval_config(tmp_path, 0).dataset
  config.dataset.image_size = 32
  config.eval_baselines = False
  config.evals = {
    "knn": {"ks": (5,)},
    "finetune": {"steps": 6, "batch_size": 16},
    "linear_aug": {"epochs": 1, "batch_size": 16, "lrs": (0.1,)},
  }
  method = methods.get("simclr").create(config, total_steps=10)
  v = method.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3), jnp.uint8))
  state = types.SimpleNamespace(
    params={"model": v.params}, batch_stats=v.batch_stats, method_state=v.method_state
  )
  mesh = sharding.make_mesh([("data", 8)])
  decoded = evaluation.run_all(config, method, state, mesh)

  def refuse(self):
    raise AssertionError(f"the {self.name} split was decoded whole")

  monkeypatch.setattr(evaluation.Split, "decode", refuse)
  config.eval_decode_gb = 0.0
  streamed = evaluation.run_all(config, method, state, mesh)
  assert streamed == decoded
  assert {"knn@5", "finetune", "linear_aug"} <= set(streamed)


class UnlabelledUpFront:
  """A source as tfds is: its labels only come with its records (`labels` raises), here
  `size` records of `image_size` px that must not be read."""

  num_classes = 1000

  def __init__(self, size, image_size=224):
    self.size, self.image_size = size, image_size

  def __len__(self):
    return self.size

  @property
  def labels(self):
    raise NotImplementedError("labels come with the records")

  def __getitem__(self, i):
    raise AssertionError("no record may be read")

  def __repr__(self):
    return f"UnlabelledUpFront({self.size})"


def test_evaluations_that_would_decode_a_split_past_memory_fail_before_any_work(monkeypatch):
  """Fine-tuning on ImageNet's 1.28M images from a source that lists no labels (tfds), or the
  raw-pixel baselines on them, would decode 187 GiB at the end of the run: the trainer refuses
  at start-up, naming the split's size and the ways out, and reads no record. Feature protocols
  read the same source batch by batch, and a host given the memory decodes it as before."""
  from sslx import train

  config = config_lib.base_config()
  config.evals = {"knn": {}, "finetune": {"steps": 10}}
  config.eval_baselines = False
  big, test = UnlabelledUpFront(1_281_167), UnlabelledUpFront(50_000)
  monkeypatch.setattr(data, "build_source", lambda cfg, split: test)
  with pytest.raises(
    ValueError, match=r"finetune: the 1,281,167 train .* UnlabelledUpFront\(1281167\)"
  ) as e:
    train.check_eval_split(config, big)
  assert "sslx prepare" in str(e.value) and "eval_decode_gb" in str(e.value)
  splits = [evaluation.Split(s, np.arange(len(s)), n) for s, n in ((big, "train"), (test, "test"))]
  with pytest.raises(ValueError, match="lists no labels up front"):
    evaluation.eval_images(config, *splits, 1000)
  config.eval_decode_gb = 200.0  # a host that has the memory: decoded whole, as before
  assert evaluation.decode_in_memory(config, *splits)
  config.eval_decode_gb = 4.0
  config.evals = {"knn": {}}  # features only: read batch by batch
  train.check_eval_split(config, big)
  xtr, ytr, xte, yte, _ = evaluation.eval_images(config, *splits, 1000)
  assert isinstance(xtr, evaluation.SplitImages) and ytr is None and len(xte) == 50_000
  config.eval_baselines = True  # raw pixels need the images whatever the protocols
  with pytest.raises(ValueError, match=r"eval_baselines: .* 186\.6 GiB .*eval_baselines=False"):
    train.check_eval_split(config, big)


class _Records:
  """Eight 4 px records, record i filled with 10·i and labelled i % 4; `bad` ones unreadable."""

  image_size = 4

  def __init__(self, bad):
    self.bad = set(bad)

  def __getitem__(self, i):
    if i in self.bad:
      return None
    return {"image": np.full((4, 4, 3), 10 * i, np.uint8), "label": i % 4}


def _read_batch(bad, stand_in):
  from jax.sharding import NamedSharding, PartitionSpec

  from sslx.evaluation import reading

  images = reading.SplitImages(reading.Split(_Records(bad), np.arange(8), "train"), num_threads=1)
  data_sharding = NamedSharding(sharding.make_mesh([("data", 8)]), PartitionSpec("data"))
  ((x, y),) = reading.device_batches(images, None, [np.arange(8)], data_sharding, stand_in=stand_in)
  return np.asarray(x)[:, 0, 0, 0], np.asarray(y)


def test_training_batches_stand_in_a_readable_record_for_an_unreadable_one():
  # the protocols' training batches: records 2 and 3 unreadable, both take record 4's place
  # (image and label), so BatchNorm statistics and mixup partners see real images
  x, y = _read_batch({2, 3}, stand_in=True)
  np.testing.assert_array_equal(x, [0, 10, 40, 40, 40, 50, 60, 70])
  np.testing.assert_array_equal(y, [0, 1, 0, 0, 0, 1, 2, 3])
  # the last record's stand-in is the first readable one (cyclically)
  x, y = _read_batch({0, 7}, stand_in=True)
  np.testing.assert_array_equal(x, [10, 10, 20, 30, 40, 50, 60, 10])
  np.testing.assert_array_equal(y, [1, 1, 2, 3, 0, 1, 2, 1])
  # evaluation batches keep the row black with label -1 (left out of features and accuracy)
  x, y = _read_batch({2, 3}, stand_in=False)
  np.testing.assert_array_equal(x, [0, 10, 0, 0, 40, 50, 60, 70])
  np.testing.assert_array_equal(y, [0, 1, -1, -1, 0, 1, 2, 3])
  # nothing readable: nothing to stand in, the rows stay black with label -1 (no loss)
  x, y = _read_batch(set(range(8)), stand_in=True)
  assert (x == 0).all() and (y == -1).all()
