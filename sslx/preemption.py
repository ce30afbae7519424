"""Stopping at a step boundary on SIGTERM / SIGINT, and when to save a periodic checkpoint.

SIGTERM is how spot/preemptible VMs, SLURM time limits and Kubernetes stop a job. The
trainer asks `StopRequest.due()` after every step; when it says yes, the trainer saves a
checkpoint of that step, waits until it is committed and raises `Preempted`, whose exit status
is `EXIT_RESTART` (75, EX_TEMPFAIL: "temporary failure, run me again"). Launchers read 75 as
"restart me": the next run resumes from that checkpoint and loses no step.

One process: a Python signal handler sets a flag (SIGTERM and SIGINT alike). A second SIGINT
is the default again (KeyboardInterrupt): Ctrl-C twice quits without waiting.

Several processes (`jax.distributed` initialised): every process must save the same step.
JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM on any
process, tells the others through the coordination service and agrees on a step;
`multihost_utils.reached_preemption_sync_point(id)` is true on every process at the same call.
No Python SIGTERM handler is installed then (it would replace the service's); stop a
multi-host run with SIGTERM.

The service stops at max(the ids the processes last passed) + 1, so an id must name the same
point of the program on every process, whichever loop each is in when the notice arrives
(the last training step and the first batch of evaluation, say). Every sync point of a process
(training steps, a protocol's steps, evaluation's batches) therefore takes its id from one
counter (`reached_sync_point`) instead of its own loop's index: the processes make the same
calls in the same order, so the n-th call is the same point everywhere, and no id repeats.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_RESTART = 75  # os.EX_TEMPFAIL


class Preempted(SystemExit):
  """The run stopped on a signal after committing a checkpoint of `step`: run it again."""

  def __init__(self, step: int, directory: str, seconds: float | None):
    super().__init__(EXIT_RESTART)
    self.step, self.directory, self.seconds = step, directory, seconds

  def __str__(self) -> str:
    took = f" {self.seconds:.2f} s after the signal" if self.seconds is not None else ""
    return (
      f"stopped at step {self.step}: checkpoint committed in {self.directory}{took}; "
      f"exit status {EXIT_RESTART} (run again to resume)"
    )


class StoppedEvaluating(Preempted):
  """A signal during evaluation on frozen features, which keeps nothing worth saving: the
  training checkpoint of `step` is complete and the next run evaluates it again."""

  def __init__(self, step: int, directory: str, signal_name: str):
    super().__init__(step, directory, None)
    self.signal_name = signal_name

  def __str__(self) -> str:
    return (
      f"stopped by {self.signal_name} while evaluating step {self.step} of {self.directory} "
      f"(its checkpoint is complete); exit status {EXIT_RESTART} (run again to evaluate it)"
    )


_sync_ids = itertools.count(1)  # one id per sync point this process passes


def reached_sync_point() -> bool:
  """Several processes: whether this call is the one the preemption service chose for every
  process to stop at. Every process must make the same calls in the same order."""
  return multihost_utils.reached_preemption_sync_point(next(_sync_ids))


_evaluating: list[tuple[int, str]] = []  # (step, directory) while `stop_evaluating` runs


@contextlib.contextmanager
def stop_evaluating(step: int, directory: str):
  """While evaluating the checkpoint of `step` in `directory`, a signal ends the process with
  `StoppedEvaluating` (exit 75, "run me again") instead of status 143, which launchers read
  as a failure (SLURM would not requeue it). One process: SIGTERM/SIGINT raise it at once.
  Several: SIGTERM is JAX's preemption service's, and every process raises it at the same
  `evaluation_sync_point` (feature extraction calls one after every batch, k-NN after every
  chunk of queries, the frozen probe after every epoch). Work inside that
  checkpoints itself (fine-tuning, the augmented probe) has its own `StopRequest` meanwhile."""
  if _multi_process():
    _evaluating.append((step, directory))
    try:
      yield
    finally:
      _evaluating.pop()
    return
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    del frame
    for s, handler in previous.items():  # a second signal acts as it would have
      signal.signal(s, handler)
    raise StoppedEvaluating(step, directory, signal.Signals(signum).name)

  previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def evaluation_sync_point() -> None:
  """Inside `stop_evaluating` on several processes: raises `StoppedEvaluating` on every
  process at the same call once any of them got SIGTERM (`reached_sync_point`). Every process
  must make the same calls. Elsewhere: nothing."""
  if _evaluating and reached_sync_point():
    step, directory = _evaluating[-1]
    raise StoppedEvaluating(step, directory, "SIGTERM (preemption service)")


def _multi_process() -> bool:
  return jax.process_count() > 1


class StopRequest:
  """A context manager: installs the handlers on entry, restores the previous ones on exit."""

  def __init__(self):
    self.signal_name: str | None = None
    self.signal_time: float | None = None
    self._previous = {}
    self._multi = _multi_process()

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
      self.signal_time = time.monotonic()
    if signum == signal.SIGINT:  # a second Ctrl-C quits at once
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      signals = [signal.SIGINT] if self._multi else [signal.SIGTERM, signal.SIGINT]
      for s in signals:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def due(self) -> bool:
    """Whether to save and stop after the step just taken. Call after every step, on every
    process."""
    if self._multi:
      if reached_sync_point():
        if self.signal_time is None:
          self.signal_name, self.signal_time = "SIGTERM (preemption service)", time.monotonic()
        return True
      return False
    return self.signal_name is not None

  def seconds_since_signal(self) -> float | None:
    return None if self.signal_time is None else time.monotonic() - self.signal_time


class SaveSchedule:
  """Periodic checkpoints: every `every_steps` steps and/or every `every_minutes` minutes.

  With several processes the wall-clock decision is process 0's, broadcast every
  `sync_every` steps (so each process saves the same step without a sync at every step)."""

  def __init__(
    self, every_steps: int = 0, every_minutes: float = 0.0, sync_every: int = 1, clock=None
  ):
    self.every_steps = int(every_steps or 0)
    self.every_s = float(every_minutes or 0.0) * 60.0
    self.sync_every = max(int(sync_every), 1)
    self._clock = clock or time.monotonic
    self._last = self._clock()
    self._multi = _multi_process()

  def saved(self):
    self._last = self._clock()

  def due(self, step: int) -> bool:
    if self.every_steps and step % self.every_steps == 0:
      return True
    if not self.every_s:
      return False
    if not self._multi:
      return self._clock() - self._last >= self.every_s
    if step % self.sync_every:
      return False
    mine = np.int32(self._clock() - self._last >= self.every_s)
    return bool(multihost_utils.broadcast_one_to_all(mine))
