"""Reading a labelled split for evaluation without holding it in memory.

A small split (the embedded CIFAR subset: 30 MB) is decoded once into one array; ImageNet's
train split would be 193 GB at 224 px. `SplitImages` is an array-like [N, S, S, 3] view of a
split that decodes records only when a batch asks for them, and `device_batches` turns batches
of indices into global arrays on the mesh, each process decoding only the rows its own devices
hold, the next batch in a background thread while the current one is used. Fine-tuning, the
augmented probe and feature extraction take either a decoded array or a `SplitImages`.

An unreadable record reads as a black image with label -1 (its source logs the file once);
feature extraction leaves such rows out, as `data.decode_all` does. The training protocols
read with `stand_in=True`: the next readable record of the process's part of the batch takes
the unreadable one's place, image and label, as the pretraining pipeline does, so that batch
statistics, mixup partners and the loss see only real images. A process none of whose rows
could be read leaves them black with label -1, which the protocols' losses leave out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from concurrent import futures
from typing import Any

import jax
import numpy as np

from sslx import data


@dataclasses.dataclass(frozen=True)
class Split:
  """A labelled split read only when needed: `source`'s records at `indices`. `limit` > 0 asks
  for a class-balanced subset of that many records that can only be chosen once the records
  (and so their labels) are read: a source that does not list its labels up front (tfds)."""

  source: Any
  indices: np.ndarray
  name: str  # "train" / "test", for progress lines
  limit: int = 0

  def __len__(self) -> int:
    return len(self.indices)

  def decode(self) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8[N, S, S, 3], labels int32[N]), all in memory (`data.decode_all`)."""
    x, y = data.decode_all(
      self.source, indices=self.indices, what=f"decoding the {self.name} split"
    )
    if self.limit and self.limit < len(x):
      idx = data.balanced_subset(y, self.limit)
      x, y = x[idx], y[idx]
    return x, y

  def labels(self) -> np.ndarray | None:
    """The records' labels without reading them, or None where the source cannot tell (tfds)."""
    try:
      labels = self.source.labels
    except NotImplementedError:
      return None
    return np.asarray(labels, np.int32)[self.indices]


def default_threads(image_size: int) -> int:
  """Decoding threads: they pay off for large images only (as in `data.decode_all`)."""
  return 1 if image_size <= 64 else min(8, os.cpu_count() or 1)


class SplitImages:
  """The images of a `Split` as a read-only array [N, S, S, 3] uint8 that decodes on indexing.

  `images[i]`, `images[a:b]` and `images[index_array]` decode those records (in `num_threads`
  threads); `subset(idx)` is another view, nothing decoded. `device_batches` reads only this
  process's rows of each batch."""

  dtype = np.dtype(np.uint8)

  def __init__(self, split: Split, num_threads: int | None = None):
    self.split = split
    size = int(split.source.image_size)
    self.shape = (len(split), size, size, 3)
    self.num_threads = default_threads(size) if num_threads is None else num_threads

  def __len__(self) -> int:
    return self.shape[0]

  def subset(self, idx) -> SplitImages:
    split = dataclasses.replace(self.split, indices=self.split.indices[np.asarray(idx)], limit=0)
    return SplitImages(split, self.num_threads)

  def __getitem__(self, key) -> np.ndarray:
    positions = np.arange(len(self))[key]
    if np.ndim(positions) == 0:
      return self[np.asarray([positions])][0]
    images = np.zeros((len(positions),) + self.shape[1:], np.uint8)
    self.read(positions, images, np.zeros(len(positions), np.int32))
    return images

  def read(self, positions, images: np.ndarray, labels: np.ndarray, rows=None) -> None:
    """Decodes the records at `positions` (a position < 0 is padding) into `images[rows]` and
    `labels[rows]` (rows: all of them when None); an unreadable record leaves its row black
    with label -1."""
    positions = np.asarray(positions)
    rows = np.arange(len(positions)) if rows is None else np.asarray(rows)
    source, order = self.split.source, self.split.indices

    def decode(chunk):
      for r in chunk:
        p = positions[r]
        record = source[int(order[p])] if p >= 0 else None
        if record is None:
          images[r], labels[r] = 0, -1
        else:
          images[r], labels[r] = record["image"], record["label"]

    chunks = [c for c in np.array_split(rows, self.num_threads) if len(c)]
    if len(chunks) > 1:
      with futures.ThreadPoolExecutor(len(chunks)) as pool:
        list(pool.map(decode, chunks))
    elif chunks:
      decode(chunks[0])


def take(images, idx):
  """`images[idx]`: a decoded array's rows, or a `SplitImages` view of them (nothing decoded)."""
  return images.subset(idx) if isinstance(images, SplitImages) else images[idx]


def local_rows(sharding, shape) -> np.ndarray:
  """The rows of a global [B, ...] batch that this process's devices hold under `sharding`."""
  rows = np.arange(shape[0])
  spans = sharding.addressable_devices_indices_map(tuple(shape)).values()
  return np.unique(np.concatenate([rows[idx[0]] for idx in spans]))


def stand_in_unreadable(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> None:
  """In place: each of `rows` with label -1 takes the image and label of the next row of
  `rows` (cyclically) whose label is not -1; nothing changes when none is."""
  rows = np.asarray(rows)
  readable = rows[y[rows] >= 0]
  if len(readable) == 0 or len(readable) == len(rows):
    return
  bad = rows[y[rows] < 0]
  donors = readable[np.searchsorted(readable, bad) % len(readable)]
  x[bad], y[bad] = x[donors], y[donors]


def _host_batch(images, labels, idx: np.ndarray, rows: np.ndarray, stand_in: bool = False):
  """(images, labels) of the global batch `idx` (-1: padding) with this process's `rows` filled;
  with `stand_in`, unreadable records replaced (`stand_in_unreadable`)."""
  shape = (len(idx),) + tuple(images.shape[1:])
  if isinstance(images, SplitImages):
    x, y = np.zeros(shape, np.uint8), np.full(len(idx), -1, np.int32)
    images.read(idx, x, y, rows)
    if stand_in:
      stand_in_unreadable(x, y, rows)
    return x, y
  valid = idx >= 0
  x = np.zeros(shape, images.dtype)
  x[valid] = images[idx[valid]]
  y = np.where(valid, np.asarray(labels)[np.where(valid, idx, 0)], -1).astype(np.int32)
  return x, y


def device_batches(
  images, labels, index_batches: Iterable[np.ndarray], sharding, stand_in: bool = False
) -> Iterator[tuple[jax.Array, jax.Array]]:
  """(images [B, S, S, 3], labels [B]) as global arrays sharded by `sharding`, one per batch of
  positions in `index_batches` (-1: a padding row, black with label -1). `images` is a decoded
  array with its `labels`, or a `SplitImages` (labels from its records; `labels` unused),
  of which only this process's rows are decoded, the next batch while this one is used.
  `stand_in` (training batches, no padding): an unreadable record's row takes a readable
  one's image and label (`stand_in_unreadable`) instead of staying black with label -1."""
  batches = iter(index_batches)
  rows_for = {}

  def load(idx):
    idx = np.asarray(idx)
    if len(idx) not in rows_for:
      rows_for[len(idx)] = local_rows(sharding, (len(idx),) + tuple(images.shape[1:]))
    return _host_batch(images, labels, idx, rows_for[len(idx)], stand_in)

  with futures.ThreadPoolExecutor(1) as prefetch:
    first = next(batches, None)
    pending = prefetch.submit(load, first) if first is not None else None
    while pending is not None:
      x, y = pending.result()
      following = next(batches, None)
      pending = prefetch.submit(load, following) if following is not None else None
      yield (
        jax.make_array_from_callback(x.shape, sharding, lambda i, a=x: a[i]),
        jax.make_array_from_callback(y.shape, sharding, lambda i, a=y: a[i]),
      )
