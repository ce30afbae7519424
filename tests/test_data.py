"""Tests for sslx.data: sources (embedded, ImageFolder, flat folder, tfds) and the grain loader."""

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from sslx import data
from sslx.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_DIR = os.path.join(REPO, "..", "shared", "datasets", "cifar10")
CIFAR_CLASSES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)
SIZE = 8  # The side of the tiny test images.

needs_cifar = pytest.mark.skipif(
  not os.path.exists(os.path.join(CIFAR_DIR, "cifar10-train.tar.gz")),
  reason=f"full CIFAR-10 archives not found in {CIFAR_DIR}",
)


# ------------------------------------------------------------------------------------------------
# Helpers


def _encode(img: Image.Image, fmt: str) -> bytes:
  out = io.BytesIO()
  img.save(out, format=fmt)
  return out.getvalue()


def _tiny_images() -> dict[str, bytes]:
  """ImageFolder files of two splits, with one image in each awkward mode, as {relpath: bytes}."""
  rng = np.random.default_rng(0)
  rgb = lambda: Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
  files = {}
  for split in ("train", "test"):
    files[f"{split}/dog/a.jpg"] = _encode(rgb(), "JPEG")
    files[f"{split}/dog/b.png"] = _encode(rgb(), "PNG")
    files[f"{split}/cat/gray.png"] = _encode(
      Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8), "L"), "PNG"
    )
    files[f"{split}/cat/rgba.png"] = _encode(
      Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8), "RGBA"), "PNG"
    )
    files[f"{split}/cat/palette.PNG"] = _encode(rgb().convert("P"), "PNG")  # Upper-case ext.
    files[f"{split}/cat/wide.bmp"] = _encode(  # 20x10: resized and center-cropped to SIZE.
      Image.fromarray(rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)), "BMP"
    )
    files[f"{split}/cat/notes.txt"] = b"not an image, ignored"
  files["train/ant/sub/deep.gif"] = _encode(rgb().convert("P"), "GIF")  # In a class sub-folder.
  files["train/.hidden/x.jpg"] = b"hidden folders are ignored"
  return files


def _write_tree(root, files: dict[str, bytes]) -> str:
  for rel, content in files.items():
    path = os.path.join(root, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(content)
  return str(root)


def _write_tar(path, files: dict[str, bytes], prefix: str = "") -> str:
  mode = "w:gz" if str(path).endswith(("gz", "tgz")) else "w"
  with tarfile.open(path, mode) as tar:
    for rel, content in files.items():
      info = tarfile.TarInfo(prefix + rel)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return str(path)


def _records(source):
  return [source[i] for i in range(len(source))]


def _assert_same_records(a, b):
  assert len(a) == len(b) and a.class_names == b.class_names
  for ra, rb in zip(_records(a), _records(b)):
    assert int(ra["label"]) == int(rb["label"])
    np.testing.assert_array_equal(ra["image"], rb["image"])


class _IndexSource:
  """A decode-free source whose record i is an image filled with i % 256 and label i."""

  image_size = 2

  def __init__(self, n: int):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((2, 2, 3), i % 256, np.uint8), "label": np.int32(i)}


def _take(loader, k):
  return [next(loader) for _ in range(k)]


# ------------------------------------------------------------------------------------------------
# Embedded dataset


def test_embedded_source_is_the_balanced_cifar_subset():
  train, test = data.EmbeddedSource("train"), data.EmbeddedSource("test")
  assert (len(train), len(test)) == (10_000, 2_000)
  assert train.class_names == test.class_names == CIFAR_CLASSES
  assert train.num_classes == 10 and train.image_size == 32
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [1000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [200] * 10)
  record = train[1234]
  assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
  assert record["label"].dtype == np.int32 and record["label"].shape == ()
  assert record["image"].std() > 10  # A real picture, not a blank.
  assert "train/" in train.name(1234) and "EmbeddedSource(split='test'" in repr(test)
  # Deterministic content: an independent instance decodes the same pixels.
  again = data.EmbeddedSource("train")
  for i in (0, 4321, 9999):
    np.testing.assert_array_equal(again[i]["image"], train[i]["image"])
  images, labels = data.decode_all(test)
  assert images.shape == (2000, 32, 32, 3) and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, test.labels)


@needs_cifar
def test_embedded_tar_is_reproducible_from_the_tool(tmp_path):
  out = tmp_path / "subset.tar"
  subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "tools", "make_embedded_dataset.py"),
      "--src",
      CIFAR_DIR,
      "--out",
      str(out),
    ],
    check=True,
    capture_output=True,
  )
  digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
  assert digest(out) == digest(sources.embedded_archive_path())


# ------------------------------------------------------------------------------------------------
# ImageFolder


def test_image_folder_from_directory_converts_every_mode_to_rgb(tmp_path):
  root = _write_tree(tmp_path / "ds", _tiny_images())
  src = data.ImageFolderSource(root, "train", image_size=SIZE)
  assert src.class_names == ("ant", "cat", "dog")  # Alphabetical; label = position.
  assert len(src) == 7 and src.num_classes == 3  # notes.txt and the hidden folder left out.
  for i, r in enumerate(_records(src)):
    assert r["image"].shape == (SIZE, SIZE, 3) and r["image"].dtype == np.uint8, src.name(i)
  names = [os.path.basename(src.name(i)) for i in range(len(src))]
  labels = dict(zip(names, src.labels.tolist()))
  assert labels == {
    "deep.gif": 0,
    "gray.png": 1,
    "palette.PNG": 1,
    "rgba.png": 1,
    "wide.bmp": 1,
    "a.jpg": 2,
    "b.png": 2,
  }
  gray = src[names.index("gray.png")]["image"]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # L -> RGB replicates the channel.
  assert src.name(0).startswith(root)
  # image_size=None takes the first image's size.
  assert data.ImageFolderSource(root, "test").image_size == SIZE


def test_image_folder_tar_and_tar_gz_match_the_directory(tmp_path):
  files = _tiny_images()
  from_dir = data.ImageFolderSource(_write_tree(tmp_path / "ds", files), "test", SIZE)
  for name, prefix in [
    ("ds.tar", ""),
    ("ds.tar.gz", ""),
    ("ds.tgz", "./"),
    ("nested.tar.gz", "cifar10/"),
  ]:  # One extra top-level folder.
    archive = data.ImageFolderSource(_write_tar(tmp_path / name, files, prefix), "test", SIZE)
    _assert_same_records(from_dir, archive)
    assert archive.name(0).startswith(str(tmp_path / name))


def test_image_folder_pointed_at_a_split_folder(tmp_path):
  root = _write_tree(tmp_path / "ds", _tiny_images())
  direct = data.ImageFolderSource(os.path.join(root, "test"), "test", SIZE)
  _assert_same_records(data.ImageFolderSource(root, "test", SIZE), direct)
  with pytest.raises(ValueError, match="'test'.*not the requested split 'train'"):
    data.ImageFolderSource(os.path.join(root, "test"), "train", SIZE)


def test_image_folder_class_names_pin_the_labels(tmp_path):
  root = _write_tree(tmp_path / "ds", _tiny_images())
  src = data.ImageFolderSource(root, "test", SIZE, class_names=("ant", "cat", "dog"))
  assert sorted(set(src.labels.tolist())) == [1, 2]  # No "ant" folder in test: labels unshifted.
  with pytest.raises(ValueError, match="not in class_names"):
    data.ImageFolderSource(root, "test", SIZE, class_names=("cat",))


@needs_cifar
def test_full_cifar_archives_load_as_they_are():
  start = time.perf_counter()
  train = data.ImageFolderSource(os.path.join(CIFAR_DIR, "cifar10-train.tar.gz"), "train")
  seconds = time.perf_counter() - start
  test = data.build_source(
    ml_collections.ConfigDict(
      dict(
        name="image_folder", path=os.path.join(CIFAR_DIR, "cifar10-{split}.tar.gz"), image_size=32
      )
    ),
    "test",
  )
  assert (len(train), len(test)) == (50_000, 10_000)
  assert train.class_names == test.class_names == CIFAR_CLASSES  # Alphabetical == CIFAR order.
  np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
  assert train[49_999]["image"].shape == (32, 32, 3) and int(train[49_999]["label"]) == 9
  assert seconds < 30, f"loading the 50k archive took {seconds:.1f} s"


# ------------------------------------------------------------------------------------------------
# Flat folder


def test_flat_folder_is_unlabeled(tmp_path):
  files = {
    k.replace("/", "_"): v
    for k, v in _tiny_images().items()
    if k.startswith("train/") and ".hidden" not in k
  }
  files["deeper/x.png"] = files["train_dog_b.png"]
  src = data.FlatFolderSource(_write_tree(tmp_path / "flat", files), image_size=SIZE)
  assert len(src) == 8 and src.num_classes == 0 and src.class_names == ()
  assert {int(r["label"]) for r in _records(src)} == {-1}
  from_tar = data.FlatFolderSource(_write_tar(tmp_path / "flat.tar", files), image_size=SIZE)
  _assert_same_records(src, from_tar)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_corrupt_files_are_skipped_counted_and_named(tmp_path, caplog):
  files = _tiny_images()
  good_jpeg = files["train/dog/a.jpg"]
  files["train/dog/x.jpg"] = np.random.default_rng(1).bytes(700)  # Random bytes.
  files["train/cat/truncated.jpg"] = good_jpeg[: len(good_jpeg) // 2]
  root = _write_tree(tmp_path / "ds", files)
  src = data.ImageFolderSource(root, "train", SIZE)
  assert len(src) == 9
  with caplog.at_level(logging.WARNING):
    records = _records(src)
    images, labels = data.decode_all(src)
  bad = sorted(src.name(i) for i, r in enumerate(records) if r is None)
  assert [os.path.basename(b) for b in bad] == ["truncated.jpg", "x.jpg"]
  assert src.num_skipped == 2 and src.skipped_names == bad
  assert all(b in caplog.text for b in bad)
  assert "skipped 2 unreadable files" in caplog.text
  assert images.shape == (7, SIZE, SIZE, 3) and len(labels) == 7
  # The loader yields the 7 good images only (one epoch, nothing dropped).
  loader = data.make_train_loader(
    src, 2, 0, num_epochs=1, drop_remainder=False, process_index=0, process_count=1
  )
  batches = list(loader)
  assert sum(len(b["label"]) for b in batches) == 7
  got = sorted(map(bytes, np.concatenate([b["image"] for b in batches])))
  assert got == sorted(map(bytes, images))


def test_missing_path_raises_file_not_found(tmp_path):
  missing = str(tmp_path / "no_such_dataset")
  for make in (
    lambda: data.ImageFolderSource(missing, "train"),
    lambda: data.FlatFolderSource(missing),
  ):
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
      make()


def test_empty_or_misshapen_dataset_raises_value_error(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  for make in (
    lambda: data.ImageFolderSource(empty, "train"),
    lambda: data.FlatFolderSource(empty),
  ):
    with pytest.raises(ValueError, match=re.escape(str(empty)) + ".*nothing"):
      make()
  # Images, but not in <split>/<class>/<image>: the message lists what is there.
  flat = _write_tree(tmp_path / "flat", {"a.jpg": b"x", "readme.md": b"y"})
  with pytest.raises(ValueError, match=r"<split>/<class>/<image>.*a\.jpg, readme\.md"):
    data.ImageFolderSource(flat, "train")
  empty_tar = _write_tar(tmp_path / "empty.tar.gz", {"train/readme.md": b"no images"})
  with pytest.raises(ValueError, match="empty.tar.gz.*train/"):
    data.ImageFolderSource(empty_tar, "train")
  with pytest.raises(ValueError, match="not a readable tar"):
    data.ImageFolderSource(
      _write_tree(tmp_path / "b", {"bad.tar": b"junk" * 200}) + "/bad.tar", "train"
    )


def test_build_source_by_name_and_errors(tmp_path):
  cfg = ml_collections.ConfigDict(dict(name="embedded", path="", image_size=32))
  assert len(data.build_source(cfg, "test")) == 2000
  root = _write_tree(tmp_path / "ds", _tiny_images())
  cfg = ml_collections.ConfigDict(dict(name="image_folder", path=root, image_size=SIZE))
  assert data.build_source(cfg, "train").class_names == ("ant", "cat", "dog")
  cfg.name = "flat_folder"
  assert data.build_source(cfg, "train").num_classes == 0
  cfg.name = "imagenet_folder"
  with pytest.raises(
    ValueError, match="dataset.name.*'imagenet_folder'.*embedded, image_folder, flat_folder, tfds"
  ):
    data.build_source(cfg, "train")
  assert set(data.DATASETS) == {"embedded", "image_folder", "flat_folder", "tfds", "array_record"}


def test_tfds_source_without_tensorflow_datasets_says_how_to_install():
  try:
    import tensorflow_datasets  # noqa: F401
  except ImportError:
    with pytest.raises(ImportError, match=r"pip install 'sslx\[tfds\]'"):
      data.TfdsSource("cifar10", "train", data_dir=None)
    return
  pytest.skip("tensorflow_datasets is installed; a real test needs a prepared dataset")


# ------------------------------------------------------------------------------------------------
# Loader


def test_loader_batches_cover_each_epoch_once_and_reshuffle():
  src = _IndexSource(24)
  loader = data.make_train_loader(src, 8, seed=0, process_index=0, process_count=1)
  batches = _take(loader, 6)  # Two epochs of 3 batches.
  for b in batches:
    assert b["image"].shape == (8, 2, 2, 3) and b["image"].dtype == np.uint8
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])
  epoch1 = np.concatenate([b["label"] for b in batches[:3]])
  epoch2 = np.concatenate([b["label"] for b in batches[3:]])
  assert sorted(epoch1) == sorted(epoch2) == list(range(24))
  assert list(epoch1) != list(epoch2) and list(epoch1) != list(range(24))
  assert data.steps_per_epoch(24, 8) == 3 and data.steps_per_epoch(25, 8) == 3


def test_loader_is_deterministic_in_the_seed():
  labels = lambda seed: [
    b["label"].tolist()
    for b in _take(
      data.make_train_loader(_IndexSource(50), 10, seed, process_index=0, process_count=1), 8
    )
  ]
  assert labels(7) == labels(7)
  assert labels(7) != labels(8)


def test_loader_drop_remainder_cuts_each_epoch_to_whole_batches():
  src = _IndexSource(25)
  batches = list(data.make_train_loader(src, 8, 0, num_epochs=2, process_index=0, process_count=1))
  assert len(batches) == 2 * data.steps_per_epoch(25, 8)
  for epoch in (batches[:3], batches[3:]):
    seen = np.concatenate([b["label"] for b in epoch])
    assert len(set(seen.tolist())) == 24  # Each record at most once per epoch.
  unshuffled = list(
    data.make_train_loader(
      src, 8, 0, shuffle=False, num_epochs=1, drop_remainder=False, process_index=0, process_count=1
    )
  )
  assert [len(b["label"]) for b in unshuffled] == [8, 8, 8, 1]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in unshuffled]), np.arange(25))


def test_loader_state_round_trips_through_json():
  src = _IndexSource(40)
  make = lambda: data.make_train_loader(src, 8, 3, process_index=0, process_count=1)
  uninterrupted = make()
  expected = _take(uninterrupted, 12)
  interrupted = make()
  _take(interrupted, 7)  # Past an epoch boundary (5 batches per epoch).
  state = interrupted.get_state()
  saved = json.dumps(state)
  assert json.loads(saved) == state
  resumed = make()
  resumed.set_state(json.loads(saved))
  for want, got in zip(expected[7:], _take(resumed, 5)):
    np.testing.assert_array_equal(want["label"], got["label"])
    np.testing.assert_array_equal(want["image"], got["image"])


def test_loader_shards_disjoint_halves_per_process():
  src = _IndexSource(32)
  one = _take(data.make_train_loader(src, 8, 5, process_index=0, process_count=1), 4)
  halves = [
    _take(data.make_train_loader(src, 8, 5, process_index=p, process_count=2), 4) for p in (0, 1)
  ]
  for p in (0, 1):
    assert all(b["label"].shape == (4,) for b in halves[p])
  seen = [set(np.concatenate([b["label"] for b in halves[p]]).tolist()) for p in (0, 1)]
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(32))
  # Step by step, the two local batches laid out in process order ARE the single-process
  # global batch, row for row (so a 2-process run takes the same steps as a 1-process one).
  for step in range(4):
    both = np.concatenate([halves[0][step]["label"], halves[1][step]["label"]])
    np.testing.assert_array_equal(both, one[step]["label"])
  # ... and in the next epoch too (reshuffled, still aligned).
  one = _take(data.make_train_loader(src, 8, 5, process_index=0, process_count=1), 12)
  halves = [
    _take(data.make_train_loader(src, 8, 5, process_index=p, process_count=2), 12) for p in (0, 1)
  ]
  for step in range(4, 12):
    both = np.concatenate([halves[0][step]["label"], halves[1][step]["label"]])
    np.testing.assert_array_equal(both, one[step]["label"])


def test_loader_rejects_bad_batch_sizes():
  src = _IndexSource(10)
  with pytest.raises(ValueError, match="multiple of the process count"):
    data.make_train_loader(src, 9, 0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="larger than the dataset"):
    data.make_train_loader(src, 16, 0, process_index=0, process_count=1)


def test_loader_on_embedded_data_with_worker_processes():
  src = data.EmbeddedSource("test")
  make = lambda workers: data.make_train_loader(src, 16, 0, num_workers=workers)
  expected = _take(make(0), 6)
  loader = make(2)  # The batch sequence does not depend on num_workers.
  try:
    got = _take(loader, 4)
    state = json.loads(json.dumps(loader.get_state()))
  finally:
    loader.close()
  resumed = make(2)
  try:
    resumed.set_state(state)
    got += _take(resumed, 2)
  finally:
    resumed.close()
  for want, have in zip(expected, got):
    assert have["image"].shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(want["image"], have["image"])
    np.testing.assert_array_equal(want["label"], have["label"])


# ------------------------------------------------------------------------------------------------
# Global arrays


_GLOBAL_ARRAY_CHECK = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sslx import data
    assert jax.device_count() >= 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    local = {"image": np.arange(16 * 4 * 4 * 3, dtype=np.uint8).reshape(16, 4, 4, 3),
             "label": np.arange(16, dtype=np.int32)}
    out = data.to_global_array(local, sharding)
    for key in local:
      assert isinstance(out[key], jax.Array) and out[key].sharding == sharding
      assert out[key].shape == local[key].shape and out[key].dtype == local[key].dtype
      np.testing.assert_array_equal(np.asarray(out[key]), local[key])
      assert len(out[key].addressable_shards) == 8
      for shard in out[key].addressable_shards:
        assert shard.data.shape[0] == 2
        np.testing.assert_array_equal(np.asarray(shard.data), local[key][shard.index])
    print("ok")
""")


def test_to_global_array_on_8_devices():
  import jax  # pylint: disable=import-outside-toplevel

  if jax.device_count() >= 8:  # A conftest already gives this process 8 (fake) devices.
    exec(_GLOBAL_ARRAY_CHECK, {})  # pylint: disable=exec-used
    return
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip(),
  )
  result = subprocess.run(
    [sys.executable, "-c", _GLOBAL_ARRAY_CHECK],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
