"""`sslx prepare`: ArrayRecord shards of encoded images, the lazy tar reader, bad shards."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from sslx import data, progress
from sslx.data import array_records, sources
from tests.helpers import REPO


def image_bytes(seed: int, fmt: str = "JPEG", size=(40, 30)) -> bytes:
  arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(arr).save(out, format=fmt)
  return out.getvalue()


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "src"
  for split, n in (("train", 12), ("test", 6)):
    for k in range(n):
      d = root / split / f"class{k % 3}"
      d.mkdir(parents=True, exist_ok=True)
      fmt = "PNG" if k == 4 else "JPEG"
      (d / f"{k:02d}.{fmt.lower()}").write_bytes(image_bytes(100 * (split == "test") + k, fmt))
  (root / "train" / "class1" / "broken.jpg").write_bytes(image_bytes(99)[:200])  # truncated
  return root


def test_prepare_round_trip_and_corrupt_file_skipped(folder, tmp_path, caplog, capsys, monkeypatch):
  monkeypatch.setattr(progress, "TICK_SECONDS", 0.0)  # a progress line for every chunk
  out = tmp_path / "ar"
  meta = array_records.prepare(str(folder), str(out), shard_bytes=4000)
  printed = capsys.readouterr()
  assert printed.out == ""  # stdout stays the command's JSON result
  lines = [re.sub(r" in \d+m\d+s$", " in <time>", x) for x in printed.err.splitlines()]
  assert lines[:2] == [
    "prepare train: 13/13 images (100%) | ETA 0m00s",
    "prepare train: 13 images in <time>",
  ]
  assert lines[2:] == [
    "prepare test: 6/6 images (100%) | ETA 0m00s",
    "prepare test: 6 images in <time>",
  ]
  assert sorted(meta) == ["test", "train"]
  assert meta["train"]["num_records"] == 12 and len(meta["train"]["shards"]) > 1
  assert meta["train"]["skipped"] == [f"{folder}/train/class1/broken.jpg"]
  assert "broken.jpg" in caplog.text
  for split in ("train", "test"):
    ref = sources.ImageFolderSource(str(folder), split, 24)
    got = data.build_source({"name": "array_record", "path": str(out), "image_size": 24}, split)
    assert got.class_names == ref.class_names == ("class0", "class1", "class2")
    keep = [i for i in range(len(ref)) if not ref.name(i).endswith("broken.jpg")]
    assert len(got) == len(keep)
    np.testing.assert_array_equal(got.labels, ref.labels[keep])
    for j, i in enumerate(keep):
      assert got.read_encoded(j) == ref.read_encoded(i)  # the original file's bytes
      np.testing.assert_array_equal(got[j]["image"], ref[i]["image"])
      assert int(got[j]["label"]) == int(ref[i]["label"])


def test_tar_is_indexed_lazily_and_prepares_the_same(folder, tmp_path):
  tar_path = tmp_path / "src.tar"
  with tarfile.open(tar_path, "w") as tar:
    tar.add(folder / "train", arcname="train")
  src = sources.ImageFolderSource(str(tar_path), "train", 24)
  assert isinstance(src._read.archive, sources._TarIndex)  # offsets, not the bytes
  ref = sources.ImageFolderSource(str(folder), "train", 24)
  assert [src.read_encoded(i) for i in range(len(src))] == [
    ref.read_encoded(i) for i in range(len(ref))
  ]
  meta = array_records.prepare(str(tar_path), str(tmp_path / "ar"))
  assert list(meta) == ["train"] and meta["train"]["num_records"] == 12


def test_missing_or_truncated_shard_fails_at_start_naming_the_file(folder, tmp_path):
  out = tmp_path / "ar"
  meta = array_records.prepare(str(folder), str(out), splits=["train"], shard_bytes=4000)
  shard = out / "train" / meta["train"]["shards"][1]["file"]
  full = shard.read_bytes()
  shard.write_bytes(full[: len(full) // 2])
  with pytest.raises(ValueError, match=f"{shard}.*truncated"):
    array_records.ArrayRecordSource(str(out), "train", 24)
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=f"{shard}: shard missing"):
    array_records.ArrayRecordSource(str(out), "train", 24)
  with pytest.raises(FileNotFoundError, match="metadata.json: missing.*prepared there: train$"):
    array_records.ArrayRecordSource(str(out), "test", 24)


def test_an_output_inside_the_source_is_refused_before_any_work(folder):
  for out in (folder, folder / "ar", folder / "train"):
    with pytest.raises(ValueError, match=f"--out={out} is inside --src={folder}"):
      array_records.prepare(str(folder), str(out))
  assert sorted(os.listdir(folder)) == ["test", "train"]  # nothing written there


def test_prepare_command_line(folder, tmp_path):
  out = tmp_path / "ar"
  proc = subprocess.run(
    [sys.executable, "-m", "sslx", "prepare", f"--src={folder}", f"--out={out}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=REPO),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [json.loads(x) for x in proc.stdout.strip().splitlines()]
  assert {(x["split"], x["records"], x["skipped"]) for x in lines} == {
    ("train", 12, 1),
    ("test", 6, 0),
  }


class _Interrupted(sources.ImageFolderSource):
  """An image-folder source that counts its reads and, with `stop_at`, dies there as a killed
  process would (KeyboardInterrupt is no unreadable image: nothing catches it)."""

  stop_at = None
  reads: list = []

  def read_encoded(self, i):
    if self.stop_at is not None and i >= self.stop_at:
      raise KeyboardInterrupt
    type(self).reads.append(i)
    return super().read_encoded(i)


def test_prepare_interrupted_then_rerun_keeps_closed_shards_and_equals_one_run(
  folder, tmp_path, capsys
):
  whole = array_records.prepare_split(
    sources.ImageFolderSource(str(folder), "train", 1), "train", str(tmp_path / "once"), 4000
  )
  out = tmp_path / "twice"
  source = _Interrupted(str(folder), "train", 1)
  source.stop_at = 11
  with pytest.raises(KeyboardInterrupt):
    array_records.prepare_split(source, "train", str(out), 4000, threads=1)
  split = out / "train"
  journal = [json.loads(x) for x in (split / array_records.JOURNAL).read_text().splitlines()]
  kept = journal[1:]
  assert kept and kept[-1]["next"] <= 11 and not (split / array_records.METADATA).exists()
  # the truncated file (image 8) was met inside a closed shard: its name is kept with it
  assert [e["skipped"] for e in kept][-1] == [f"{folder}/train/class1/broken.jpg"]

  source.stop_at, _Interrupted.reads = None, []
  meta = array_records.prepare_split(source, "train", str(out), 4000, threads=1)
  assert _Interrupted.reads == list(range(kept[-1]["next"], len(source)))  # nothing read twice
  assert f"resuming at image {kept[-1]['next']}" in capsys.readouterr().err
  assert meta == whole  # shards, their sizes, labels and the skipped file, as one run wrote them
  # (and no shard of the killed run beside them: the listings below are equal)
  assert sorted(os.listdir(split)) == sorted(os.listdir(tmp_path / "once" / "train"))
  for name in os.listdir(split):
    assert (split / name).read_bytes() == (tmp_path / "once" / "train" / name).read_bytes(), name

  # A journal written for another source (here: another image count) is not resumed from.
  source.stop_at = 9
  with pytest.raises(KeyboardInterrupt):  # (overwrite: the finished split would be kept)
    array_records.prepare_split(source, "train", str(out), 4000, threads=1, overwrite=True)

  class Shorter(_Interrupted):
    def __len__(self):
      return super().__len__() - 4  # 3 shards where there were 4

  _Interrupted.reads = []
  shorter = Shorter(str(folder), "train", 1)
  meta = array_records.prepare_split(shorter, "train", str(out), 4000, threads=1)
  assert _Interrupted.reads == list(range(len(shorter)))  # started over
  shards = sorted(n for n in os.listdir(split) if n.endswith(".array_record"))
  assert shards == sorted(s["file"] for s in meta["shards"])  # nothing left of the runs before


def test_finished_splits_are_kept_on_a_rerun_unless_overwrite(
  folder, tmp_path, monkeypatch, capsys
):
  """A conversion killed in its second split keeps the first one on the rerun; a finished
  output is not read again; a damaged or differently sourced split is, and so is everything
  with `overwrite`."""
  reads, read = [], sources.ImageFolderSource.read_encoded
  die_in = {"test"}

  def counted(self, i):
    if self.split in die_in and i == 3:
      raise KeyboardInterrupt
    reads.append((self.split, i))
    return read(self, i)

  monkeypatch.setattr(sources.ImageFolderSource, "read_encoded", counted)
  out = tmp_path / "ar"
  with pytest.raises(KeyboardInterrupt):
    array_records.prepare(str(folder), str(out), shard_bytes=4000, threads=1)
  assert {s for s, _ in reads} == {"train", "test"}
  die_in.clear()
  reads.clear()
  once = array_records.prepare(str(folder), str(out), shard_bytes=4000, threads=1)
  assert reads and {s for s, _ in reads} == {"test"}  # train was finished: not read again
  assert "train is already prepared from this source; not read again" in capsys.readouterr().err
  reads.clear()
  assert array_records.prepare(str(folder), str(out), shard_bytes=4000, threads=1) == once
  assert reads == []

  shard = out / "train" / once["train"]["shards"][0]["file"]
  shard.write_bytes(shard.read_bytes()[:-10])  # damaged: that split is prepared again
  assert array_records.prepare(str(folder), str(out), shard_bytes=4000, threads=1) == once
  assert {s for s, _ in reads} == {"train"} and len(reads) == 13
  reads.clear()
  array_records.prepare(str(folder), str(out), shard_bytes=4000, threads=1, overwrite=True)
  assert sorted(reads) == sorted(
    [("train", i) for i in range(13)] + [("test", i) for i in range(6)]
  )

  moved = tmp_path / "moved"  # the same images elsewhere: another source
  os.rename(folder, moved)
  reads.clear()
  meta = array_records.prepare(str(moved), str(out), splits=["test"], shard_bytes=4000)
  assert len(reads) == 6 and meta["test"]["prepared_from"]["source"] == str(moved)
