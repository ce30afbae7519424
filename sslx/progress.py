"""Console progress with ETA, TensorBoard event files (tensorboardX: no TensorFlow needed)
and results.json."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax

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


class Writer:
  """Scalars to TensorBoard event files under `workdir/tensorboard` and to the console."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._tb = None
    if enabled and is_lead():
      from tensorboardX import SummaryWriter  # no TensorFlow import

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)

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


def is_lead() -> bool:
  """True on the process that prints, writes TensorBoard events and results.json."""
  return jax.process_index() == 0


def console(msg: str):
  """Prints on the lead process only (every process runs the same loop)."""
  if is_lead():
    print(msg, flush=True, file=sys.stdout)


def write_results(workdir: str, results: dict) -> str:
  """Merges `results` into workdir/results.json (written atomically, by the lead process)."""
  path = os.path.join(workdir, "results.json")
  if not is_lead():
    return path
  current = {}
  if os.path.exists(path):
    with open(path) as f:
      current = json.load(f)
  current.update(results)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path
