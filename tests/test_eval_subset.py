"""Evaluation data at scale: a class-balanced train subset, decoding only what it uses."""

import io
import tracemalloc

import numpy as np
from PIL import Image

from sslx import config_lib, data, evaluation
from sslx.data import sources


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


def test_eval_decodes_only_the_subset_and_memory_does_not_grow_with_the_split(
  tmp_path, monkeypatch
):
  calls = {"n": 0}
  real = sources.decode_image

  def counting(blob, size):
    calls["n"] += 1
    return real(blob, size)

  monkeypatch.setattr(sources, "decode_image", counting)
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
