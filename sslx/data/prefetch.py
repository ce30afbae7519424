"""Batches put on the devices ahead of the train step, by a background thread.

    batches = DevicePrefetcher(loader, batch_sharding, size=2)
    for step in ...:
      state, metrics = step_fn(state, next(batches))   # already on the devices
    checkpoint(batches.get_state())                     # the state after the last batch *taken*

The thread takes the next local batch from the loader (decoding is in grain's threads and
workers) and assembles it into global device arrays (``to_global_array``: the host-to-device
copy) while the step runs, keeping ``size`` batches ready. ``get_state`` / ``set_state`` speak for
the batches the caller has taken, not for those waiting in the queue, so a checkpoint resumes at
the right batch. An error in the loader or the copy is raised by the ``next`` call that would
have returned that batch, after the batches before it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from sslx.data.pipeline import to_global_array

_END = object()


class DevicePrefetcher:
  """An iterator of global device batches, ``size`` of them prepared ahead in a thread.

  Args:
    loader: the per-process batch iterator (``make_train_loader``'s), with ``get_state`` /
      ``set_state``.
    sharding: the batch sharding (see ``to_global_array``).
    size: batches kept ready on the devices (2: the next step's and the one after).
    to_device: ``(local_batch, sharding) -> global batch`` (default ``to_global_array``).
  """

  def __init__(
    self, loader, sharding, size: int = 2, to_device: Callable[[Any, Any], Any] | None = None
  ):
    if size < 1:
      raise ValueError(f"prefetch size must be >= 1, got {size}")
    self._loader = loader
    self._sharding = sharding
    self._size = size
    self._to_device = to_device or to_global_array
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()
    self._state = None  # loader state after the batch last returned by __next__
    self._done = False

  def _put_device(self, local):
    return self._to_device(local, self._sharding)

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        local = next(self._loader)
        state = self._loader.get_state()
        item = (self._put_device(local), state, None)
      except StopIteration:
        item = (_END, None, None)
      except BaseException as e:  # pylint: disable=broad-except  # raised by __next__
        item = (None, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[0] is _END or item[2] is not None:
        return

  def _start(self) -> None:
    if self._thread is None:
      if self._state is None:
        self._state = self._loader.get_state()
      self._thread = threading.Thread(target=self._run, name="sslx-prefetch", daemon=True)
      self._thread.start()

  def __iter__(self):
    return self

  def __next__(self):
    if self._done:
      raise StopIteration
    self._start()
    batch, state, error = self._queue.get()
    if error is not None:
      self._done = True
      raise error
    if batch is _END:
      self._done = True
      raise StopIteration
    self._state = state
    return batch

  def get_state(self):
    """The loader's state after the last batch returned (before any started, the loader's)."""
    return self._loader.get_state() if self._state is None else self._state

  def set_state(self, state) -> None:
    if self._thread is not None:
      raise RuntimeError("set_state must come before the first batch is taken")
    self._loader.set_state(state)
    self._state = self._loader.get_state()

  def close(self) -> None:
    """Stops the thread (batches waiting in the queue are dropped)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


__all__ = ["DevicePrefetcher"]
