"""Console progress with ETA, TensorBoard event files (tensorboardX: no TensorFlow needed)
and results.json.

Event files for a remote workdir (`gs://...`) are written to a local staging folder and
uploaded to `workdir/tensorboard/` by `Writer.sync()`, which the trainer calls at every
checkpoint and at the end (tensorboardX appends to a local file; object stores have no append).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time

import jax

from sslx import paths

log = logging.getLogger("sslx")


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class Progress:
  """Rates and ETA over the steps since the last report (compile time excluded once)."""

  def __init__(self, total_steps: int, start_step: int, images_per_step: int):
    self.total = total_steps
    self.images_per_step = images_per_step
    self.last_step = start_step
    self.last_time = time.perf_counter()
    self.rate = None

  def update(self, step: int) -> dict:
    now = time.perf_counter()
    steps = step - self.last_step
    dt = now - self.last_time
    if steps > 0 and dt > 0:
      self.rate = steps / dt
    self.last_step, self.last_time = step, now
    out = {}
    if self.rate:
      out = {
        "steps_per_sec": self.rate,
        "images_per_sec": self.rate * self.images_per_step,
        "eta_s": (self.total - step) / self.rate,
      }
    return out

  def line(self, step: int, metrics: dict, rates: dict) -> str:
    parts = [f"step {step}/{self.total} ({100.0 * step / max(self.total, 1):.0f}%)"]
    parts += [f"{k} {v:.4g}" for k, v in sorted(metrics.items())]
    if rates:
      parts.append(f"{rates['steps_per_sec']:.2f} steps/s, {rates['images_per_sec']:.0f} img/s")
      parts.append(f"ETA {format_seconds(rates['eta_s'])}")
    return " | ".join(parts)


# How often a Ticker prints, in seconds.
TICK_SECONDS = 15.0


class Ticker:
  """Progress of one long piece of work outside the train loop (feature extraction, a probe's
  epochs, k-NN over a large test set, dataset preparation): "<what>: 12,288/50,000 images (25%)
  | ETA 1m20s" on the console at most every `every_s` seconds (default `TICK_SECONDS`), and
  "<what>: 50,000 images in 1m42s" at the end. Work that ends within `every_s` prints nothing,
  so small evaluations stay quiet. `stream`: print there instead of the lead process's stdout
  (a command whose stdout is its machine-readable result)."""

  def __init__(self, what: str, total: int, unit: str, every_s: float | None = None, stream=None):
    self.what, self.total, self.unit = what, int(total), unit
    self.every_s = TICK_SECONDS if every_s is None else every_s
    self._say = console if stream is None else (lambda m: print(m, file=stream, flush=True))
    self.start = self.last = time.perf_counter()
    self.printed = False

  def due(self) -> bool:
    """Whether `update` would print now: callers that dispatch work asynchronously wait for it
    only then, so progress counts finished work without a sync per piece."""
    return time.perf_counter() - self.last >= self.every_s

  def update(self, done: int) -> None:
    now = time.perf_counter()
    if now - self.last < self.every_s or done <= 0:
      return
    self.last, self.printed = now, True
    eta = (now - self.start) * (self.total - done) / done
    self._say(
      f"{self.what}: {done:,}/{self.total:,} {self.unit} ({100.0 * done / max(self.total, 1):.0f}%)"
      f" | ETA {format_seconds(eta)}"
    )

  def finish(self) -> None:
    if self.printed or time.perf_counter() - self.start >= self.every_s:
      took = format_seconds(time.perf_counter() - self.start)
      self._say(f"{self.what}: {self.total:,} {self.unit} in {took}")


class Writer:
  """Scalars to TensorBoard event files under `workdir/tensorboard` and to the console."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._tb = None
    self._remote = None  # the URL event files are uploaded to, for a remote workdir
    self._staging = None
    if enabled and is_lead():
      from tensorboardX import SummaryWriter  # no TensorFlow import

      logdir = os.path.join(workdir, "tensorboard")
      if paths.is_remote(workdir):
        self._remote = paths.join(workdir, "tensorboard")
        self._staging = tempfile.mkdtemp(prefix="sslx-tensorboard-")
        logdir = self._staging
      self._tb = SummaryWriter(logdir, flush_secs=10)

  def sync(self):
    """Flushes, and uploads the staged event files of a remote workdir (whole files: they are
    small, and an upload replaces the previous copy)."""
    if self._tb is None:
      return
    self._tb.flush()
    self._upload()

  def _upload(self):
    if self._remote is None:
      return
    for rel in paths.walk_files(self._staging):
      with open(os.path.join(self._staging, rel), "rb") as f:
        paths.write_bytes(paths.join(self._remote, rel), f.read())

  def scalars(self, step: int, values: dict, prefix: str = ""):
    if self._tb is None:
      return
    for k, v in values.items():
      self._tb.add_scalar(f"{prefix}{k}", float(v), step)

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._upload()
      if self._staging is not None:
        shutil.rmtree(self._staging, ignore_errors=True)
      self._tb = None


def is_lead() -> bool:
  """True on the process that prints, writes TensorBoard events and results.json."""
  return jax.process_index() == 0


def console(msg: str):
  """Prints on the lead process only (every process runs the same loop)."""
  if is_lead():
    print(msg, flush=True, file=sys.stdout)


def write_results(workdir: str, results: dict, transfer: str | None = None) -> str:
  """Merges `results` into workdir/results.json (written whole, by the lead process). With
  `transfer` (a dataset other than the run's, `evaluation.transfer_label`) they go under
  results["transfer"][transfer] instead, beside those of other datasets, never in place of
  the run's own figures."""
  path = paths.join(workdir, "results.json")
  if not is_lead():
    return path
  current = paths.read_json(path) if paths.exists(path) else {}
  if transfer:
    section = current.setdefault("transfer", {}).setdefault(transfer, {})
    section.update(results)
  else:
    current.update(results)
  return paths.write_text(path, json.dumps(current, indent=2, sort_keys=True))
