"""Two processes on this machine, joined by jax.distributed over loopback, take exactly the
steps one process with all their devices takes."""

import json
import os
import socket
import subprocess
import sys

import pytest

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


@pytest.mark.slow
def test_two_processes_equal_one_process_with_both_devices():
  cmd = [sys.executable, "-m", "tests.multihost_worker"]
  port = free_port()
  procs = [
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
