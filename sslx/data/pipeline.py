"""The training input pipeline: a checkpointable grain iterator of per-process numpy batches.

    loader = make_train_loader(source, global_batch_size=256, seed=0)
    batch = next(loader)                       # {"image": uint8[b, S, S, 3], "label": int32[b]}
    batch = to_global_array(batch, sharding)   # global jax.Arrays, [B, S, S, 3] and [B]
    state = loader.get_state()                 # a small JSON-serialisable dict, saved with the
    loader.set_state(state)                    # checkpoint; restoring resumes the same batches

Record order. Epoch e is a permutation of the records drawn from (seed, e): the same for a given
seed, different in every epoch. Each epoch's permutation is cut to a whole number of global
batches (``drop_remainder=True``; the records left over change from epoch to epoch) and, of
global batch k (positions [k*B, (k+1)*B) of the permutation), process p of P takes the block
[k*B + p*b, k*B + (p+1)*b) with b = B / P. ``jax.make_array_from_process_local_data`` lays the
local blocks out in process order, so the global batch is the same array, row for row, however
many processes read it (a multi-process run takes the same steps as a single-process one), and
each epoch yields the same number of batches on every process.

Unreadable images (the source returns ``None``) are dropped by ``to_iter_dataset``; the batch is
then filled from the next records, so a corrupt file shifts the stream by one record instead of
crashing it.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np

from sslx import multicrop
from sslx.data import crops

_PREFETCH_RECORDS = 512


def default_read_threads(image_size: int) -> int:
  """Threads that read and decode records ahead, for images of side ``image_size``.

  PIL releases the GIL while decoding, so threads pay off for large images; a 32x32 JPEG decodes
  in ~80 us, most of it Python header parsing under the GIL, and there threads only add
  contention (measured on 2 cores: 7,600 img/s with 0 threads, 4,400 with 2, 2,800 with 16).
  """
  return 0 if image_size <= 64 else min(16, os.cpu_count() or 1)


class _ProcessBlocks(grain.MapDataset):
  """Process p's rows of every global batch: local index j ↦ parent index
  (j // b)·B + p·b + j mod b, with b = B / P. Indices past one epoch map to the parent's next
  epoch, as grain's own slices do, so the parent's per-epoch reshuffling carries through."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
    super().__init__(parent)
    self._global_batch = global_batch
    self._local = global_batch // count
    self._offset = index * self._local
    self._parent_len = len(parent)
    self._len = self._parent_len // global_batch * self._local

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, j = divmod(index, self._len)
    inner = (j // self._local) * self._global_batch + self._offset + j % self._local
    return self._parent[epoch * self._parent_len + inner]

  def __str__(self) -> str:
    return f"_ProcessBlocks(offset={self._offset}, local={self._local})"


class _EncodedRecords:
  """A source's records as encoded bytes: index -> {"data", "label", "index"} or None."""

  def __init__(self, source):
    if not hasattr(source, "read_encoded"):
      raise ValueError(f"dataset.host_crops needs a source of encoded images; {source!r} is not")
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    i = int(index)
    try:
      data, label = self._source.read_encoded(i)
    except Exception as e:  # pylint: disable=broad-except  # skip-and-name, as sources do
      self._source.note_skipped(i, e)
      return None
    return {"data": data, "label": np.int32(label), "index": i}


# How far past an unreadable record the host-crop batcher looks for a readable stand-in.
_MAX_STAND_IN = 64


class _HostViewBatches(grain.MapDataset):
  """Batch k of this process, views made on the host: rows j = k·b ... k·b + b - 1 of the
  parent (the process's record stream), each record's views seeded by its position in the
  *global* stream, ``step * B + row``.

  Batching happens here, inside whichever grain worker builds batch k, so the workers send
  whole batches and the sequence of batches is the same for every ``num_workers``. A record
  that cannot be read or decoded is named, counted, and stood in for by the next readable
  record of the stream (with its own label), so batches stay full and later rows do not shift.
  """

  def __init__(self, parent, maker, source, global_batch, local_batch, offset, local_epoch):
    super().__init__(parent)
    self._maker, self._source = maker, source
    self._global_batch, self._local = global_batch, local_batch
    self._offset, self._local_epoch = offset, local_epoch
    self._global_epoch = local_epoch // local_batch * global_batch

  def __len__(self) -> int:
    return len(self._parent) // self._local

  def _position(self, j: int) -> int:
    epoch, jj = divmod(j, self._local_epoch)
    return (
      epoch * self._global_epoch
      + (jj // self._local) * self._global_batch
      + self._offset
      + jj % self._local
    )

  def _views(self, j: int, out) -> int:
    """Writes row j's views into ``out``; returns its label."""
    for t in range(_MAX_STAND_IN):
      record = self._parent[j + t]
      if record is None:
        continue
      try:
        self._maker(record["data"], self._position(j), out)
        return record["label"]
      except Exception as e:  # pylint: disable=broad-except  # corrupt bytes: name, stand in
        self._source.note_skipped(record["index"], e)
    raise ValueError(
      f"{_MAX_STAND_IN} records in a row from stream position {j} are unreadable "
      f"({self._source!r}); see the warnings above for their names"
    )

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    first = int(index) * self._local
    views = self._maker.empty(self._local)  # the views are written in place: no stacking
    labels = np.empty(self._local, np.int32)
    for r in range(self._local):
      row = multicrop.HostViews(*(None if x is None else x[r] for x in views))
      labels[r] = self._views(first + r, row)
    return {"image": views, "label": labels}

  def __str__(self) -> str:
    return f"_HostViewBatches(local={self._local})"


def steps_per_epoch(num_records: int, global_batch_size: int) -> int:
  """Full global batches in one pass over ``num_records`` records (the remainder is dropped)."""
  if global_batch_size <= 0:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
  return num_records // global_batch_size


def _shuffle_seed(seed: int) -> int:
  # grain reshuffles epoch e with seed + e, so seeds 0 and 1 would give the same orders shifted
  # by one epoch; hashing the user seed first keeps different seeds' orders unrelated.
  return int(np.random.SeedSequence([int(seed) % 2**63, 0x55_4C_58]).generate_state(1)[0])


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read grain's absl flags (e.g. ``--grain_py_debug_mode``); outside
  ``absl.app.run`` (tests, notebooks, library use) reading an unparsed flag raises
  ``UnparsedFlagAccessError``. Marking the flags parsed makes their defaults readable; a program
  that already parsed its flags is left alone."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _check_loader_args(
  source, global_batch_size, process_index, process_count, num_epochs, num_workers
) -> None:
  """make_train_loader's arguments, checked before anything is read."""
  num_records = len(source)
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} / process_count={process_count}")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size={global_batch_size} must be a positive multiple of "
      f"the process count ({process_count})"
    )
  if global_batch_size > num_records:
    raise ValueError(
      f"global_batch_size={global_batch_size} is larger than the dataset "
      f"({num_records} records in {source!r})"
    )
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
  if num_workers < 0:
    raise ValueError(f"num_workers must be >= 0, got {num_workers}")


def _read_threads(source, view_maker, num_workers: int) -> int:
  """Reading threads per process: by image size (the views' when made on the host), shared
  out among the grain workers."""
  size = getattr(source, "image_size", 0) or 0
  if view_maker is not None:
    size = max(g.size for g in view_maker.groups)
  threads = default_read_threads(size)
  if num_workers > 0 and threads:  # the workers share the cores
    threads = max(1, threads // num_workers)
  return threads


def make_train_loader(
  source,
  global_batch_size: int,
  seed: int,
  *,
  shuffle: bool = True,
  num_epochs: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  num_workers: int = 0,
  drop_remainder: bool = True,
  read_threads: int | None = None,
  view_maker: crops.ViewMaker | None = None,
) -> grain.DatasetIterator:
  """A checkpointable iterator of this process's slice of each global batch.

  Built with grain's dataset API (``MapDataset.source(...).shuffle(...)[...].repeat(...)
  .to_iter_dataset().batch(...)``) rather than ``grain.DataLoader``: the record order is plain
  index arithmetic (shuffle, slice, repeat are lazy index maps, with a new permutation per epoch
  built in), the iterator state is one integer, ``{"next_index": i}`` (JSON as it is), and the
  per-epoch truncation that keeps processes in step is a slice.

  Args:
    source: a random-access source (``len``, ``source[i]`` -> record dict or None).
    global_batch_size: B, the batch over all processes; must divide by the process count.
    seed: the shuffle seed (any int).
    shuffle: False reads the records in source order every epoch.
    num_epochs: None repeats forever (training by steps); an int stops after that many epochs.
    process_index, process_count: this process's shard; default ``jax.process_index()`` /
      ``jax.process_count()``.
    num_workers: grain worker processes decoding records (0: threads of this process only).
      Workers prefetch single records, and batches are put together here, so the sequence of
      batches is the same for every ``num_workers``.
    drop_remainder: True: every batch is full and each epoch is cut to whole global batches.
      False: nothing of an epoch is dropped except up to P - 1 records (so that every process
      gets as many); batches run across epoch boundaries and only the very last batch of a
      finite ``num_epochs`` may be short.
    read_threads: threads per process reading and decoding records ahead; None:
      ``default_read_threads(source.image_size)``.
    view_maker: make the views on the host from the encoded images (``dataset.host_crops``):
      batches become ``{"image": HostViews, "label"}``, each image decoded once, its crops
      seeded by (seed, global stream position) (see :mod:`sslx.data.crops`); batches are put
      together inside the workers, and an unreadable image is stood in for by the next
      readable one (see ``_HostViewBatches``) instead of shifting the stream.

  Returns:
    A ``grain.DatasetIterator`` yielding ``{"image": uint8[b, S, S, 3], "label": int32[b]}`` with
    b = B / process_count; it has ``get_state()`` / ``set_state(state)``.
  """
  num_records = len(source)
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  _check_loader_args(
    source, global_batch_size, process_index, process_count, num_epochs, num_workers
  )

  ds = grain.MapDataset.source(source if view_maker is None else _EncodedRecords(source))
  if shuffle:
    ds = ds.shuffle(seed=_shuffle_seed(seed))
  if drop_remainder:
    per_epoch = steps_per_epoch(num_records, global_batch_size) * global_batch_size
  else:
    per_epoch = num_records // process_count * process_count
  if per_epoch < num_records:
    ds = ds[:per_epoch]  # Slices are epoch-aware in grain: each epoch loses different records.
  if process_count > 1:
    ds = _ProcessBlocks(ds, global_batch_size, process_index, process_count)
  local_epoch = len(ds)
  ds = ds.repeat(num_epochs)
  local = global_batch_size // process_count
  if view_maker is not None:
    if not drop_remainder:
      raise ValueError("host-made views (view_maker) need drop_remainder=True")
    ds = _HostViewBatches(
      ds, view_maker, source, global_batch_size, local, process_index * local, local_epoch
    )
  if read_threads is None:
    read_threads = _read_threads(source, view_maker, num_workers)
  # Elements are records, or whole batches of views: then a few of them bound the memory.
  prefetch = _PREFETCH_RECORDS if view_maker is None else max(2, read_threads)
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
  )
  if num_workers > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  if view_maker is None:  # host-view batches are made whole in the workers (above)
    it_ds = it_ds.batch(local, drop_remainder=drop_remainder)
  return iter(it_ds)


def to_global_array(local_batch: Any, sharding) -> Any:
  """Assembles each process's local batch into global ``jax.Array``s.

  Args:
    local_batch: a pytree of numpy arrays, this process's rows ``[b, ...]``.
    sharding: a ``jax.sharding.Sharding`` for every leaf (e.g. ``NamedSharding(mesh,
      P("data"))``), or a pytree of them matching ``local_batch``.

  Returns:
    The same pytree of global arrays ``[b * process_count, ...]``.
  """
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
  return jax.tree.map(
    lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), local_batch, sharding
  )


__all__ = ["default_read_threads", "make_train_loader", "steps_per_epoch", "to_global_array"]
