"""Two processes on this machine, joined by jax.distributed over loopback, take exactly the
steps one process with all their devices takes."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from sslx import checkpointing
from tests.helpers import REPO


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_with(devices: int, **extra):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO,
  )
  env.update({k: str(v) for k, v in extra.items()})
  return env


def last_json(text):
  return json.loads(text.strip().splitlines()[-1])


def two_processes(cmd: list) -> list:
  """`cmd` started twice as processes 0 and 1 of one jax.distributed job on a free loopback
  port, two CPU devices each; output piped as text."""
  port = free_port()
  return [
    subprocess.Popen(
      cmd,
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env_with(
        2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i
      ),
    )
    for i in range(2)
  ]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_both_devices():
  cmd = [sys.executable, "-m", "tests.multihost_worker"]
  procs = two_processes(cmd)
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    outs.append(last_json(out))
  single = subprocess.run(
    cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env_with(4)
  )
  assert single.returncode == 0, single.stderr[-3000:]
  one = last_json(single.stdout)

  assert [o["processes"] for o in outs] == [2, 2] and one["processes"] == 1
  assert outs[0]["devices"] == outs[1]["devices"] == one["devices"] == 4
  assert outs[0]["local_rows"] == outs[1]["local_rows"] == 8 and one["local_rows"] == 16
  # The global batch is the union of the two slices, in the single-process order.
  assert outs[0]["labels"] == outs[1]["labels"] == one["labels"]
  for o in outs:
    assert o["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert o["checksum"] == pytest.approx(one["checksum"], rel=1e-6)
  # Evaluation features read batch by batch: each process decodes only its devices' rows (100
  # images in batches of 16: rows 0-7 of each batch on process 0, 8-15 on process 1), and both
  # end with every image's features in the split's order, as one process reading them all.
  reads = [o["extract"]["reads"] for o in outs]
  assert sorted(reads) == [48, 52] and one["extract"]["reads"] == 100
  for o in outs:
    assert o["extract"]["labels"] == one["extract"]["labels"]
    assert o["extract"]["features"] == one["extract"]["features"]
    # k-NN with the training features spread over both processes' devices: as on one device.
    assert o["extract"]["knn"] == o["extract"]["knn_one_device"] == one["extract"]["knn"]
    assert o["extract"]["nearest"] == {"knn@1": 100.0}  # every nearest image found
    assert o["extract"]["linear"] == [one["extract"]["linear"][0]] * 2


def sigterm_to_process_1(cmd: list, at_line: str) -> list:
  """`cmd` as the two processes; once the lead prints a line starting with `at_line`, a SIGTERM
  to process 1 alone. Both must exit 75; returns their {"process", "stopped_at"} lines."""
  procs = two_processes(cmd)
  for line in procs[0].stdout:
    if line.startswith(at_line):
      break
  else:
    raise AssertionError(procs[0].stderr.read()[-3000:])
  procs[1].send_signal(signal.SIGTERM)
  stopped = []
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 75, err[-3000:]
    stopped.append(next(json.loads(l) for l in out.splitlines() if l.startswith('{"process"')))
  return stopped


@pytest.mark.slow
def test_sigterm_to_one_process_both_save_the_same_step(tmp_path):
  """JAX's preemption service: a SIGTERM to process 1 alone makes both processes save the same
  step (reached_preemption_sync_point) and exit 75."""
  settings = {"steps": 60, "batch": 16, "evals": {}, "log_every_steps": 1, "mesh": "all"}
  settings["checkpoint_every_steps"] = 0
  cmd = [sys.executable, "-m", "tests.train_worker", str(tmp_path), json.dumps(settings)]
  stopped = sigterm_to_process_1(cmd, "step 3/")  # the lead prints every step
  assert sorted(s["process"] for s in stopped) == [0, 1]
  assert stopped[0]["stopped_at"] == stopped[1]["stopped_at"] < 60
  assert checkpointing.manager(str(tmp_path)).latest_step() == stopped[0]["stopped_at"]


@pytest.mark.slow
def test_sigterm_to_one_process_during_fine_tuning_both_save_its_step_and_resume(tmp_path):
  """Fine-tuning after pretraining on two processes: a SIGTERM to process 1 alone, once the
  evaluation began, makes both save the same fine-tuning step (JAX's preemption service, the
  protocol's own step ids) and exit 75; the rerun resumes that step and finishes."""
  settings = {
    "steps": 4,
    "batch": 16,
    "log_every_steps": 1,
    "mesh": "all",
    "checkpoint_every_steps": 0,
    "evals": {"finetune": {"steps": 60, "batch_size": 16, "checkpoint_every_steps": 0}},
  }
  cmd = [sys.executable, "-m", "tests.train_worker", str(tmp_path), json.dumps(settings)]
  stopped = sigterm_to_process_1(cmd, "evaluating:")
  step = stopped[0]["stopped_at"]
  assert stopped[1]["stopped_at"] == step and 0 < step < 60
  (folder,) = (tmp_path / "protocol_checkpoints").iterdir()
  assert [p.name for p in folder.iterdir() if p.name.isdigit()] == [str(step)]
  outs = []
  for p in two_processes(cmd):
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    outs.append(out)
  assert f"resuming at step {step}" in outs[0]  # the lead prints
  results = json.loads((tmp_path / "results.json").read_text())
  assert 0.0 <= results["finetune"] <= 100.0


@pytest.mark.slow
def test_sigterm_to_one_process_while_extracting_features_both_exit_75(tmp_path):
  """The final evaluation's feature extraction on two processes: a SIGTERM to process 1 alone
  stops both at the same batch (`preemption.evaluation_sync_point`) with exit 75 and no
  results, instead of running on until the scheduler kills them."""
  settings = {
    "steps": 2,
    "batch": 16,
    "mesh": "all",
    "checkpoint_every_steps": 0,
    "eval_batch_size": 8,  # 63 + 250 batches: the signal lands inside them
    "evals": {"knn": {"ks": [5]}},
  }
  cmd = [sys.executable, "-m", "tests.train_worker", str(tmp_path), json.dumps(settings)]
  stopped = sigterm_to_process_1(cmd, "evaluating:")
  assert [s["stopped_at"] for s in stopped] == [2, 2]  # the training step they evaluated
  assert checkpointing.manager(str(tmp_path)).latest_step() == 2
  assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_sigterm_to_one_process_during_knn_both_exit_75(tmp_path):
  """After extraction, k-NN on two processes: a SIGTERM to process 1 alone while the lead
  reports k-NN's progress stops both at the same chunk of queries (its sync points draw their
  ids from the counter extraction's used, so the ids agree across the loops) with exit 75."""
  settings = {
    "steps": 2,
    "batch": 16,
    "mesh": "all",
    "checkpoint_every_steps": 0,
    "tick_seconds": 0.2,
    "evals": {"knn": {"ks": [5], "chunk": 1}},  # 2,000 queries one by one: seconds of k-NN
  }
  cmd = [sys.executable, "-m", "tests.train_worker", str(tmp_path), json.dumps(settings)]
  stopped = sigterm_to_process_1(cmd, "pretrained: k-NN:")
  assert [s["stopped_at"] for s in stopped] == [2, 2]
  assert not (tmp_path / "results.json").exists()
