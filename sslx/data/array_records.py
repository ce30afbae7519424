"""Prepared datasets: encoded images in ArrayRecord shards, read with random access.

    python -m sslx prepare --src=/data/imagenet --out=/data/imagenet-ar      # once
    --config.dataset.name=array_record --config.dataset.path=/data/imagenet-ar  # then train

Layout of ``<out>/<split>/``:

    metadata.json                  {"format", "split", "class_names", "num_records",
                                    "shards": [{"file", "records", "bytes"}], "skipped": [...],
                                    "prepared_from": {source path and size, classes, shard size}}
    labels.npy                     int32[N], every record's label (balanced subsets, no reads)
    <split>-00000.array_record ...

Each record is ``b"SSLX" + uint32 (little-endian) n + n bytes of JSON {"name", "label"} +`` the
image file's bytes, unchanged (no re-encoding: the host crop decodes the original JPEG at the DCT
scale it needs). Shards are written with ``group_size:1`` so that every record is one random
read. A shard that is missing or whose size differs from metadata.json fails at start-up naming
the file; the metadata is written last, so an interrupted ``prepare`` leaves no dataset that
looks complete. Rerun with the same arguments, it keeps the shards it had closed (listed in
``prepare.journal.jsonl`` until it finishes) and reads on from the first image after them: the
result is that of one uninterrupted run. A split already finished in ``out`` from the same
source (path, image count, classes) and shard size is left as it is (``overwrite=True``
prepares it again), so a conversion killed in its second split keeps the first. For a
``gs://`` output each shard is uploaded as soon as it is closed, while the next ones are
written, and then deleted locally: the local disk holds the journal and a few shards
(`staging_dir`, named after the URL, so a rerun on the same machine resumes), not the dataset.
A rerun keeps the journal's shards that are in the bucket at their size or still staged.

Corrupt images in the source are skipped while preparing (each is decoded once at 1/8 scale,
which still reads the whole entropy-coded stream), named in the log and counted in
``metadata.json``'s "skipped".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Sequence
from concurrent import futures

import numpy as np
import simplejpeg
from array_record.python import array_record_data_source, array_record_module
from PIL import Image

from sslx import paths, progress
from sslx.data import sources

FORMAT = 1
MAGIC = b"SSLX"
METADATA = "metadata.json"
LABELS = "labels.npy"
_DEFAULT_SHARD_BYTES = 256 << 20


def encode_record(image: bytes, label: int, name: str) -> bytes:
  header = json.dumps({"name": name, "label": int(label)}).encode()
  return MAGIC + struct.pack("<I", len(header)) + header + image


def decode_record(record: bytes) -> tuple[bytes, dict]:
  """(image bytes, {"name", "label"}) of one record; ValueError if it is not one."""
  if record[:4] != MAGIC:
    raise ValueError("not an sslx record (bad magic)")
  (n,) = struct.unpack("<I", record[4:8])
  return record[8 + n :], json.loads(record[8 : 8 + n])


def check_image(data: bytes) -> None:
  """Raises if ``data`` is not a readable image (a JPEG is decoded at 1/8 scale: fast, and it
  still reads every entropy-coded byte, so truncation shows)."""
  if data[:2] == b"\xff\xd8":
    try:
      h, w, _, _ = simplejpeg.decode_jpeg_header(data)
      simplejpeg.decode_jpeg(data, "RGB", min_factor=8, min_height=-(-h // 8), min_width=-(-w // 8))
      return
    except ValueError:
      pass  # e.g. CMYK or an unusual JPEG: PIL has the last word
  with Image.open(io.BytesIO(data)) as img:
    img.load()


def _shard_name(split: str, k: int) -> str:
  """Shards are named by their index alone (no "-of-N"): a shard keeps the name it was written
  under, so a closed one can be uploaded at once and never renamed (a rename in a bucket is a
  copy)."""
  return f"{split}-{k:05d}.array_record"


# Closed shards of an unfinished `prepare_split`, one JSON line each, so that a rerun after a
# crash or preemption continues after the last of them instead of starting over.
JOURNAL = "prepare.journal.jsonl"


def _resume_point(split_dir: str, split: str, header: dict, uploaded: dict) -> list[dict]:
  """The journal's shards that are whole, here or (`uploaded`: {name: bytes} already in the
  bucket) uploaded, when the journal was written for the same source and shard size
  (`header`); [] otherwise. Every other local shard of the split (a partial one, or a
  finished earlier run's) is removed."""
  path = os.path.join(split_dir, JOURNAL)
  kept = []
  if os.path.exists(path):
    with open(path) as f:
      lines = [json.loads(x) for x in f if x.strip().endswith("}")]
    if lines and lines[0] == header:
      for entry in lines[1:]:
        file = os.path.join(split_dir, entry["file"])
        here = os.path.exists(file) and os.path.getsize(file) == entry["bytes"]
        if not (here or uploaded.get(entry["file"]) == entry["bytes"]):
          break
        kept.append(entry)
  names = {e["file"] for e in kept}
  for name in os.listdir(split_dir):
    if name.endswith(".array_record") and _written_by_prepare(name, split) and name not in names:
      os.remove(os.path.join(split_dir, name))
  with open(path, "w") as f:  # the header and what is kept: the journal the rest appends to
    f.writelines(json.dumps(x) + "\n" for x in [header] + kept)
  return kept


class _Uploads:
  """Closed shards sent to a bucket folder in the background as the next ones are written, each
  deleted here once uploaded: the local disk holds a few shards, not the dataset. At most
  `pending` uploads wait; an upload's error (or a kill) surfaces at the next `send` or `wait`."""

  def __init__(self, url: str, pending: int = 2):
    import fsspec  # noqa: PLC0415  (URLs only)

    self.fs, root = fsspec.core.url_to_fs(url)
    self.root, self.pending = root.rstrip("/"), pending
    self.pool = futures.ThreadPoolExecutor(1)
    self.queue: list[futures.Future] = []

  def send(self, file: str) -> None:
    while len(self.queue) >= self.pending:
      self.queue.pop(0).result()
    self.queue.append(self.pool.submit(self._one, file))

  def _one(self, file: str) -> None:
    _upload(self.fs, file, f"{self.root}/{os.path.basename(file)}")
    os.remove(file)

  def wait(self) -> None:
    while self.queue:
      self.queue.pop(0).result()


def _written_by_prepare(name: str, split: str) -> bool:
  """Whether `name` (relative to a split's folder) is a file `prepare` writes there: a shard
  (this layout's or the earlier "-of-N" one), labels.npy or metadata.json. Nothing else in a
  folder is ever deleted."""
  return (
    name in (METADATA, LABELS)
    or re.fullmatch(rf"{re.escape(split)}-\d{{5}}(-of-\d{{5}})?\.array_record", name) is not None
  )


def _header(source, shard_bytes: int) -> dict:
  """What a split's shards are prepared from: a journal or a finished split with another
  header belongs to another conversion."""
  path = os.fspath(getattr(source, "path", ""))
  return {
    "format": FORMAT,
    "source": path if "://" in path else os.path.abspath(os.path.expanduser(path)),
    "images": len(source),
    "class_names": list(source.class_names),
    "shard_bytes": shard_bytes,
  }


def finished(split_url: str, header: dict) -> dict | None:
  """The metadata of a split that `prepare` finished at `split_url` (a folder or URL) from
  `header`'s source and shard size, every shard and the labels there at their sizes; None if
  there is no such split."""
  meta_url = paths.join(split_url, METADATA)
  try:
    meta = paths.read_json(meta_url)
  except (FileNotFoundError, ValueError):
    return None
  if meta.get("prepared_from") != header:
    return None
  sizes = paths.file_sizes(split_url)
  if LABELS not in sizes or any(sizes.get(s["file"]) != s["bytes"] for s in meta["shards"]):
    return None
  return meta


def prepare_split(
  source,
  split: str,
  out_dir: str,
  shard_bytes: int = _DEFAULT_SHARD_BYTES,
  threads: int = 0,
  overwrite: bool = False,
  upload_to: str | None = None,
) -> dict:
  """Writes one split of ``source`` (an image-folder source) into ``out_dir/<split>/``. Run
  again after an interruption, it keeps the shards it had closed (`JOURNAL`) and goes on from
  the first image after them; the result is byte for byte that of an uninterrupted run. A
  split already finished there (or at `upload_to`) from the same source (path, image count,
  classes) and shard size is returned as it is, unless `overwrite`, which prepares it again
  from the first image.

  `upload_to`: a bucket folder (URL) the split goes to instead; ``out_dir`` is then a staging
  folder that holds the journal and the few shards not uploaded yet (`_Uploads`). Objects of
  another conversion in that folder are deleted before the first upload, and the folder's
  metadata.json is uploaded last."""
  split_dir = os.path.join(out_dir, split)
  os.makedirs(split_dir, exist_ok=True)
  n = len(source)
  threads = threads or min(8, os.cpu_count() or 1)
  header = _header(source, shard_bytes)
  if not overwrite:
    meta = finished(upload_to or split_dir, header)
    if meta is not None:
      print(
        f"prepare {split}: {upload_to or split_dir} is already prepared from this source; not "
        "read again (--overwrite prepares it again)",
        file=sys.stderr,
        flush=True,
      )
      if upload_to:  # nothing of it left to upload
        shutil.rmtree(split_dir, ignore_errors=True)
      return meta
  for stale in (METADATA, LABELS):
    if os.path.exists(os.path.join(split_dir, stale)):
      os.remove(os.path.join(split_dir, stale))
  if overwrite and os.path.exists(os.path.join(split_dir, JOURNAL)):
    os.remove(os.path.join(split_dir, JOURNAL))
  there = paths.file_sizes(upload_to) if upload_to else {}
  kept = _resume_point(split_dir, split, header, there)
  uploads = None
  if upload_to:
    uploads = _Uploads(upload_to)
    names = {e["file"] for e in kept}
    stale = [k for k in there if _written_by_prepare(k, split) and k not in names]
    if stale:  # another conversion's shards and metadata: none left beside ours
      uploads.fs.rm([f"{uploads.root}/{k}" for k in stale])
    for e in kept:  # closed before the kill but not (or not known to be) uploaded
      file = os.path.join(split_dir, e["file"])
      if os.path.exists(file):
        if there.get(e["file"]) == e["bytes"]:
          os.remove(file)
        else:
          uploads.send(file)
  shards = [{k: e[k] for k in ("file", "records", "bytes")} for e in kept]
  labels = [label for e in kept for label in e["labels"]]
  skipped = [name for e in kept for name in e["skipped"]]
  begin = kept[-1]["next"] if kept else 0
  if kept:
    print(
      f"prepare {split}: resuming at image {begin:,} of {n:,} ({len(kept)} shards kept)",
      file=sys.stderr,
      flush=True,
    )

  def read(i):
    try:
      data, label = source.read_encoded(i)
      check_image(data)
      return data, label, None
    except Exception as e:  # pylint: disable=broad-except  # skip-and-name
      return None, None, e

  writer, size = None, 0
  shard_labels, shard_skipped = [], []

  def close(next_index: int):
    """Closes the open shard and journals it with its labels and the unreadable files met while
    it was open: `next_index` is the first image not in it. Then sends it to the bucket."""
    nonlocal writer, shard_labels, shard_skipped
    if writer is None:
      return
    writer.close()
    file = os.path.join(split_dir, shards[-1]["file"])
    shards[-1]["bytes"] = os.path.getsize(file)
    entry = dict(shards[-1], next=next_index, labels=shard_labels, skipped=shard_skipped)
    with open(os.path.join(split_dir, JOURNAL), "a") as f:
      f.write(json.dumps(entry) + "\n")
      f.flush()
      os.fsync(f.fileno())
    labels.extend(shard_labels)
    skipped.extend(shard_skipped)
    writer, shard_labels, shard_skipped = None, [], []
    if uploads is not None:
      uploads.send(file)

  # On stderr: stdout is the command's JSON result lines.
  ticker = progress.Ticker(f"prepare {split}", n - begin, "images", stream=sys.stderr)
  try:
    with futures.ThreadPoolExecutor(threads) as pool:
      for start in range(begin, n, 1024):
        chunk = pool.map(read, range(start, min(n, start + 1024)))
        for j, (data, label, error) in enumerate(chunk):
          i = start + j
          if error is not None:
            logging.warning(
              "skipping unreadable image %s (%s: %s)", source.name(i), type(error).__name__, error
            )
            shard_skipped.append(source.name(i))
            continue
          if writer is None or size >= shard_bytes:
            close(i)
            shards.append({"file": _shard_name(split, len(shards)), "records": 0, "bytes": 0})
            writer = array_record_module.ArrayRecordWriter(
              os.path.join(split_dir, shards[-1]["file"]), "group_size:1"
            )
            size = 0
          record = encode_record(data, label, source.name(i))
          writer.write(record)
          size += len(record)
          shards[-1]["records"] += 1
          shard_labels.append(label)
        ticker.update(min(n, start + 1024) - begin)
    close(n)
    if uploads is not None:
      uploads.wait()
  finally:  # after a failure or a kill: the queued uploads are dropped (the rerun sends them)
    if uploads is not None:
      uploads.pool.shutdown(wait=False, cancel_futures=True)
  skipped.extend(shard_skipped)  # files met while no shard was open (none readable after them)
  ticker.finish()
  np.save(os.path.join(split_dir, LABELS), np.asarray(labels, np.int32))
  meta = {
    "format": FORMAT,
    "split": split,
    "class_names": list(source.class_names),
    "num_records": len(labels),
    "shards": shards,
    "skipped": skipped,
    "prepared_from": header,
  }
  with open(os.path.join(split_dir, METADATA), "w") as f:
    json.dump(meta, f, indent=1)
  if uploads is not None:  # the labels, then the metadata that makes the split complete
    for name in (LABELS, METADATA):
      _upload(uploads.fs, os.path.join(split_dir, name), f"{uploads.root}/{name}")
  os.remove(os.path.join(split_dir, JOURNAL))
  if skipped:
    logging.warning(
      "%s: skipped %d unreadable files: %s", split, len(skipped), sources.list_names(skipped)
    )
  return meta


def prepare(
  src: str,
  out: str,
  splits: Sequence[str] | None = None,
  shard_bytes: int = _DEFAULT_SHARD_BYTES,
  threads: int = 0,
  overwrite: bool = False,
) -> dict[str, dict]:
  """Prepares ``src`` (an image folder, or a tar archive, in ``<split>/<class>/<image>``
  layout) as ArrayRecord shards under ``out`` (a directory, or a URL that ``etils.epath``
  writes: shards are then staged locally and copied). Returns each split's metadata.

  ``splits``: default every known split name found at the top of ``src``. Class names are the
  train split's (when there is one), so that labels agree across splits. A split that ``out``
  already holds, finished from the same source and shard size, is not prepared again unless
  ``overwrite``.
  """
  _check_apart(src, out)
  files = sources.Files(src)
  if splits is None:
    tops = {t.rstrip("/") for t in files.top_level() if t.endswith("/")}
    splits = [s for s in sources.KNOWN_SPLIT_NAMES if s in tops]
    if not splits:
      raise ValueError(
        f"{src}: no split folders ({', '.join(sources.KNOWN_SPLIT_NAMES)}) at the top; "
        "pass --splits"
      )
  remote = "://" in out
  target = staging_dir(out) if remote else out
  results, class_names = {}, None
  for split in sorted(splits, key=lambda s: s != "train"):
    source = sources.ImageFolderSource(src, split, 1, class_names=class_names, _files=files)
    class_names = class_names or source.class_names
    upload_to = paths.join(out, split) if remote else None
    results[split] = prepare_split(
      source, split, target, shard_bytes, threads, overwrite, upload_to
    )
  if remote:
    shutil.rmtree(target, ignore_errors=True)
  return results


def _check_apart(src: str, out: str) -> None:
  """Refuses an output inside the source: shards and metadata would be written among the
  images (a split's folder of the output would be the source's own)."""

  def norm(p: str) -> str:
    p = os.fspath(p)
    return p.rstrip("/") + "/" if "://" in p else os.path.realpath(os.path.expanduser(p)) + "/"

  a, b = norm(src), norm(out)
  if b.startswith(a):
    raise ValueError(
      f"--out={out} is inside --src={src}: give an output folder outside the source "
      "(e.g. a sibling, <src>-ar)"
    )


def staging_dir(url: str) -> str:
  """Where the journal and the shards not uploaded yet for `url` are kept: named after the
  URL, so that a rerun after an interruption finds (and resumes) what the last run wrote;
  removed once everything is uploaded."""
  name = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
  path = os.path.join(tempfile.gettempdir(), f"sslx-prepare-{name}")
  os.makedirs(path, exist_ok=True)
  return path


def _upload(fs, file: str, remote: str) -> None:
  """One file whole: an object store's upload is committed complete or not at all (a kill
  mid-file leaves no truncated object behind)."""
  fs.put_file(file, remote)


def read_metadata(path: str, split: str) -> tuple[str, dict]:
  """(split directory, its metadata), checking every shard is there whole."""
  if "://" in str(path):
    raise ValueError(
      f"dataset.path={path!r}: ArrayRecord shards are read from a local disk (the reader opens "
      "files, not URLs). Mount the bucket with gcsfuse (`gcsfuse -o ro --implicit-dirs BUCKET "
      "/mnt/BUCKET`; launch/tpu_vm.sh --mount-bucket does it on every TPU worker) and give "
      f"the mounted folder, copy the shards next to the run (`gcloud storage cp -r {path} "
      "/data/`), or read images straight from the bucket with dataset.name='image_folder' "
      "(folders or .tar archives)"
    )
  split_dir = os.path.join(os.path.expanduser(path), split)
  meta_path = os.path.join(split_dir, METADATA)
  if not os.path.exists(meta_path):
    root = os.path.expanduser(path)
    there = sorted(
      d
      for d in (os.listdir(root) if os.path.isdir(root) else [])
      if os.path.exists(os.path.join(root, d, METADATA))
    )
    found = f"; the splits prepared there: {', '.join(there)}" if there else ""
    raise FileNotFoundError(
      f"{meta_path}: missing; dataset.name='array_record' needs a directory written by "
      f"`python -m sslx prepare --src=... --out={path}` (split {split!r}){found}"
    )
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT}")
  for shard in meta["shards"]:
    file = os.path.join(split_dir, shard["file"])
    if not os.path.exists(file):
      raise FileNotFoundError(f"{file}: shard missing (listed in {meta_path})")
    size = os.path.getsize(file)
    if size != shard["bytes"]:
      raise ValueError(
        f"{file}: {size} bytes, but {meta_path} says {shard['bytes']}: the shard is truncated "
        "or was rewritten; prepare the dataset again"
      )
  return split_dir, meta


class ArrayRecordSource(sources.ImageSource):
  """A split prepared by :func:`prepare`: records decoded like the folder sources' (or read as
  encoded bytes for host crops), labels from ``labels.npy`` without a read."""

  def __init__(self, path: str, split: str = "train", image_size: int | None = None):
    split_dir, meta = read_metadata(path, split)
    labels = np.load(os.path.join(split_dir, LABELS))
    if len(labels) != meta["num_records"]:
      raise ValueError(f"{split_dir}/{LABELS}: {len(labels)} labels for {meta['num_records']}")
    counts = [s["records"] for s in meta["shards"]]
    self.path, self.split = path, split
    self._files = [os.path.join(split_dir, s["file"]) for s in meta["shards"]]
    self._ends = np.cumsum(counts)
    super().__init__(
      origin=split_dir,
      names=(),
      labels=labels,
      read=_ShardReader(tuple(self._files)),
      image_size=image_size,
      class_names=meta["class_names"],
    )

  def __len__(self) -> int:
    return len(self._labels)

  def name(self, index: int) -> str:
    k = int(np.searchsorted(self._ends, index, side="right"))
    first = 0 if k == 0 else int(self._ends[k - 1])
    return f"{self._files[k]}#{index - first}"

  def __repr__(self) -> str:
    return f"ArrayRecordSource(path={self.path!r}, split={self.split!r}, {self._repr_fields()})"


class _ShardReader:
  """Picklable i -> image bytes over the shards (the reader opens in each process)."""

  def __init__(self, files: tuple[str, ...]):
    self.files = files
    self._ds = None

  def __call__(self, i: int) -> bytes:
    if self._ds is None:
      self._ds = array_record_data_source.ArrayRecordDataSource(list(self.files))
    image, _ = decode_record(self._ds[int(i)])
    return image

  def __getstate__(self):
    return {"files": self.files, "_ds": None}


sources.register_path_source("array_record", ArrayRecordSource)

__all__ = ["ArrayRecordSource", "decode_record", "encode_record", "prepare", "read_metadata"]
