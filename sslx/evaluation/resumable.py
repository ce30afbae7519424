"""Preemption for the protocols that train (fine-tuning, the augmented linear probe).

At ImageNet size each runs for hours after pretraining, on the same spot VMs. With a workdir,
`Resumable` saves a protocol's state every `every_steps` and on SIGTERM/SIGINT (then exits 75,
as the trainer does: `sslx.preemption`) in workdir/<folder>/<name>-<hash>, and restores it on
the rerun. The hash covers what makes two runs the same run (`identity`: the settings, the
starting weights, the data), so a rerun resumes only its own run and another gets a folder of
its own. The protocols draw their batch order and random keys as functions of the step, so a
resumed run skips the finished batches unread and ends as the uninterrupted one would have.
The final step stays in the folder (fine-tuning's: the fine-tuned weights).

    with Resumable(workdir, "finetune", ident, every_steps=1000, total_steps=n) as run:
      state, start, saved = run.restore(state)
      for step in range(start, n):
        state = train_step(state, ...)
        run.after_step(step + 1, state, lambda: {"loss": ...})
      run.finish(state, {...})
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from sslx import checkpointing, preemption, progress


def identity(settings: dict, params, images, labels, test_images, num_classes: int) -> dict:
  """What a protocol's checkpoint must match to be resumed, as JSON: its settings (without the
  checkpoint cadence), the starting weights (per-leaf sums), the data (sizes, classes, image
  shape, a checksum of the labels)."""
  leaves = jax.tree.leaves(jax.device_get(params))
  sums = [
    [float(np.sum(a, dtype=np.float64)), float(np.sum(np.abs(a), dtype=np.float64))] for a in leaves
  ]
  labels = np.asarray(labels, np.int64)
  return json.loads(
    json.dumps(
      {
        "settings": {k: v for k, v in settings.items() if k != "checkpoint_every_steps"},
        "weights": hashlib.sha256(repr(sums).encode()).hexdigest(),
        "data": [len(images), len(test_images), int(num_classes), list(images.shape[1:])],
        "labels": int((labels * np.arange(1, len(labels) + 1)).sum()),
      }
    )
  )


class Resumable:
  """A protocol's checkpoints and stop request; without a workdir it saves nothing and leaves
  the signals alone."""

  def __init__(
    self,
    workdir: str | None,
    name: str,
    ident: dict,
    every_steps: int,
    total_steps: int,
    folder: str = "protocol_checkpoints",
  ):
    self.total_steps = total_steps
    self.mngr = None
    if workdir:
      digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
      self.mngr = checkpointing.manager(
        workdir, keep=1, async_save=False, subdir=f"{folder}/{name}-{digest}"
      )
    self.name, self.ident = name, ident
    self.schedule = preemption.SaveSchedule(every_steps)
    self.stop = preemption.StopRequest()
    self.start = 0

  def __enter__(self):
    if self.mngr is not None:
      self.stop.__enter__()
    return self

  def __exit__(self, *exc):
    if self.mngr is not None:
      self.stop.__exit__(*exc)
    return False

  def restore(self, state):
    """(state, step, saved) of the latest checkpoint, or (state, 0, {}) when there is none."""
    step = None if self.mngr is None else self.mngr.latest_step()
    if step is None:
      return state, 0, {}
    restored, saved = checkpointing.restore(self.mngr, step, state)
    progress.console(f"{self.name}: resuming at step {step} from {self.mngr.directory}")
    self.start = step
    return restored, step, saved

  def save(self, step: int, state, saved: dict) -> None:
    self.mngr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(saved),
        meta=ocp.args.JsonSave(self.ident),
      ),
      force=True,
    )
    self.mngr.wait_until_finished()

  def after_step(self, step: int, state, saved: Callable[[], dict]) -> None:
    """Saves `step` when the schedule says so; on a signal saves it and raises `Preempted`.
    `saved()` gives the JSON the protocol needs besides the state to finish as it would have."""
    if self.mngr is None or step >= self.total_steps:
      return
    if self.stop.due():
      progress.console(f"{self.stop.signal_name} received: saving {self.name} step {step}")
      self.save(step, state, saved())
      e = preemption.Preempted(step, str(self.mngr.directory), self.stop.seconds_since_signal())
      progress.console(str(e))
      raise e
    if self.schedule.due(step):
      self.save(step, state, saved())

  def finish(self, state, saved: dict) -> None:
    """Keeps the final step (unless this run restored it and so trained nothing)."""
    if self.mngr is not None and self.start < self.total_steps:
      self.save(self.total_steps, state, saved)
