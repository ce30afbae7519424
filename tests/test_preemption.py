"""Preemption: a signal saves the step it interrupts and exits 75; resuming loses nothing."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sslx import checkpointing, preemption, train
from tests.helpers import REPO, tiny_simclr
from tests.test_train import final_state

SETTINGS = {"steps": 40, "evals": {}, "log_every_steps": 1, "checkpoint_every_steps": 0}


def start_worker(workdir, settings=SETTINGS, env=None):
  return subprocess.Popen(
    [sys.executable, "-m", "tests.train_worker", str(workdir), json.dumps(settings)],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=dict(env or os.environ, PYTHONPATH=REPO),
  )


def wait_for_line(proc, prefix, timeout=300):
  """Reads the worker's stdout until a line starts with `prefix`; returns the lines read."""
  lines, t0 = [], time.monotonic()
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefix):
      return lines
    assert time.monotonic() - t0 < timeout, "".join(lines[-20:])
  raise AssertionError(f"worker ended before {prefix!r}: {proc.stderr.read()[-3000:]}")


def signal_at(workdir, step, sig=signal.SIGTERM, settings=SETTINGS):
  """Runs the worker, sends `sig` once it reports `step`; returns (exit status, stopped_at,
  seconds from the signal to the process's exit)."""
  proc = start_worker(workdir, settings)
  wait_for_line(proc, f"step {step}/")
  t0 = time.monotonic()
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  seconds = time.monotonic() - t0
  stopped = [json.loads(l) for l in out.splitlines() if l.startswith('{"process"')]
  return proc.returncode, (stopped[0]["stopped_at"] if stopped else None), seconds, err


def assert_same_state(config, dir_a, dir_b):
  step_a, a, data_a = final_state(config, str(dir_a))
  step_b, b, data_b = final_state(config, str(dir_b))
  assert step_a == step_b and data_a == data_b
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sigterm_at_random_steps_then_resume_equals_uninterrupted(tmp_path):
  straight = start_worker(tmp_path / "straight")
  _, err = straight.communicate(timeout=600)
  assert straight.returncode == 0, err[-3000:]

  seed = int.from_bytes(os.urandom(4), "little")
  kills = sorted(random.Random(seed).sample(range(2, 30), 3))
  resumed, last = tmp_path / "resumed", 0
  for i, k in enumerate(kills):
    k = max(k, last + 1)
    sig = signal.SIGINT if i == 1 else signal.SIGTERM  # Ctrl-C does the same
    rc, stopped_at, seconds, err = signal_at(resumed, k, sig)
    assert rc == preemption.EXIT_RESTART, f"seed {seed}: {err[-3000:]}"
    # The checkpoint is the step the signal interrupted (or the one after): none is lost.
    assert stopped_at is not None and k <= stopped_at <= k + 3, (seed, k, stopped_at)
    assert checkpointing.manager(str(resumed)).latest_step() == stopped_at
    assert seconds < 60
    print(f"seed {seed}: {sig.name} at step {k}, saved step {stopped_at}, exit in {seconds:.2f} s")
    last = stopped_at
  final = start_worker(resumed)
  _, err = final.communicate(timeout=600)
  assert final.returncode == 0, err[-3000:]

  config = tiny_simclr(**SETTINGS)
  assert_same_state(config, tmp_path / "straight", resumed)
  a = json.load(open(tmp_path / "straight" / "results.json"))
  b = json.load(open(resumed / "results.json"))
  assert a["steps"] == b["steps"] == 40
  assert a["train_loss_last"] == b["train_loss_last"]  # the last step's loss, bit for bit
  assert a["evaluation"] == b["evaluation"] == "none: config.evals is empty"


def test_interrupted_save_is_never_restored(tmp_path):
  """A step directory left by a save that never committed (orbax writes to a temporary name
  and renames it at commit) is not listed, so a resume starts from the last committed step."""
  config = tiny_simclr(steps=3, evals={})
  train.train_and_evaluate(config, str(tmp_path))
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(ckpts / "3", ckpts / "6.orbax-checkpoint-tmp-1700000000")
  assert checkpointing.manager(str(tmp_path)).latest_step() == 3
  config.total_steps = 6
  calls = []
  real = checkpointing.restore

  def spy(mngr, step, target):
    calls.append(step)
    return real(mngr, step, target)

  checkpointing.restore, saved = spy, checkpointing.restore
  try:
    train.train_and_evaluate(config, str(tmp_path))
  finally:
    checkpointing.restore = saved
  assert calls == [3]
  assert checkpointing.manager(str(tmp_path)).latest_step() == 6


def test_restore_reads_into_abstract_shards_without_a_fresh_state(tmp_path, monkeypatch):
  config = tiny_simclr(steps=3, evals={})
  train.train_and_evaluate(config, str(tmp_path))
  config.total_steps = 4

  def no_fresh_state(*args, **kwargs):
    raise AssertionError("a resumed run must not initialise a second state")

  monkeypatch.setattr(train, "create_state", no_fresh_state)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 4


def test_keep_every_steps_series_survives_and_minutes_cadence_saves(tmp_path, monkeypatch):
  config = tiny_simclr(steps=12, evals={})
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = 2
  config.keep_every_steps = 4
  train.train_and_evaluate(config, str(tmp_path / "a"))
  assert checkpointing.manager(str(tmp_path / "a")).all_steps() == [4, 8, 11, 12]

  # Wall clock: a cadence shorter than a step saves after every step.
  config = tiny_simclr(steps=5, evals={})
  config.checkpoint_every_steps = 0
  config.checkpoint_every_minutes = 1e-6
  config.keep_checkpoints = 10
  train.train_and_evaluate(config, str(tmp_path / "b"))
  assert checkpointing.manager(str(tmp_path / "b")).all_steps() == [1, 2, 3, 4, 5]


def test_save_schedule_minutes_and_steps():
  now = [0.0]
  s = preemption.SaveSchedule(every_steps=10, every_minutes=2.0, clock=lambda: now[0])
  assert not s.due(1)
  now[0] = 119.0
  assert not s.due(2)
  now[0] = 120.0
  assert s.due(3)
  s.saved()
  now[0] = 200.0
  assert not s.due(4) and s.due(10)  # the step cadence is independent of the clock


def test_sigterm_while_evaluating_exits_75_and_the_rerun_evaluates_the_same_step(
  tmp_path, monkeypatch
):
  """A SIGTERM during the final evaluation (here: before the second batch of features) ends
  the run with status 75, not 143, and no results.json; the rerun trains nothing and evaluates
  the committed last step: the uninterrupted run's figures."""
  from sslx.evaluation import reading

  config = tiny_simclr()
  whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
  real = reading.device_batches

  def sigterm_at_second_batch(*args, **kwargs):
    for i, b in enumerate(real(*args, **kwargs)):
      if i == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield b

  work = str(tmp_path / "stopped")
  monkeypatch.setattr(reading, "device_batches", sigterm_at_second_batch)
  with pytest.raises(preemption.StoppedEvaluating) as stopped:
    train.train_and_evaluate(config, work)
  assert stopped.value.code == preemption.EXIT_RESTART and stopped.value.step == 6
  assert stopped.value.signal_name == "SIGTERM"
  assert not os.path.exists(os.path.join(work, "results.json"))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
  monkeypatch.setattr(reading, "device_batches", real)
  again = train.train_and_evaluate(config, work)
  assert checkpointing.manager(work).latest_step() == 6
  figures = [k for k in whole if k.startswith(("knn", "linear"))]
  assert figures and {k: again[k] for k in figures} == {k: whole[k] for k in figures}


def test_every_sync_point_of_a_process_has_its_own_id_and_evaluation_stops_at_the_chosen_one(
  monkeypatch,
):
  """Several processes (faked): training steps, extraction batches, k-NN chunks and the frozen
  probe's epochs draw ids from one counter, so an id names one point of the program, and the
  evaluation stops at the call whose id the preemption service chose, in whichever loop."""
  from jax.experimental import multihost_utils

  from sslx.evaluation import knn, linear

  ids, chosen = [], {"id": None}

  def service(i):
    ids.append(i)
    return i == chosen["id"]

  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", service)
  monkeypatch.setattr(preemption, "_multi_process", lambda: True)
  stop = preemption.StopRequest()
  assert not any(stop.due() for _ in range(3))  # three training steps
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 4, 64)
  with preemption.stop_evaluating(3, "/ckpt"):
    knn.knn_accuracy(x, y, x[:20], y[:20], 4, ks=(5,), chunk=8)  # 3 chunks
    linear.linear_probe_accuracy(x, y, x, y, 4, epochs=4, batch_size=16)
  assert ids == list(range(ids[0], ids[0] + 10))  # 3 + 3 + 4 calls, no id twice
  chosen["id"] = ids[-1] + 5  # the service's choice: the probe's second epoch below
  with preemption.stop_evaluating(3, "/ckpt"):
    knn.knn_accuracy(x, y, x[:20], y[:20], 4, ks=(5,), chunk=8)
    with pytest.raises(preemption.StoppedEvaluating, match="while evaluating step 3"):
      linear.linear_probe_accuracy(x, y, x, y, 4, epochs=4, batch_size=16)
  assert ids[-1] == chosen["id"] and len(ids) == 15
  preemption.evaluation_sync_point()  # outside an evaluation: no sync point
  assert len(ids) == 15
