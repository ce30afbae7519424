"""Multi-process start-up: explicit variables win, JAX's own cluster detection otherwise."""

import jax
import pytest
from jax._src import clusters

from sslx import distributed

CLUSTER_VARS = (
  "JAX_COORDINATOR_ADDRESS",
  "JAX_NUM_PROCESSES",
  "JAX_PROCESS_ID",
  "SLURM_JOB_ID",
  "SLURM_NTASKS",
  "SLURM_STEP_NODELIST",
  "SLURM_PROCID",
  "SLURM_LOCALID",
  "OMPI_MCA_orte_hnp_uri",
  "OMPI_COMM_WORLD_SIZE",
  "TPU_WORKER_HOSTNAMES",
  "MEGASCALE_COORDINATOR_ADDRESS",
  "SSLX_DISTRIBUTED",
)
SLURM = {
  "SLURM_JOB_ID": "4242",
  "SLURM_NTASKS": "16",
  "SLURM_STEP_NODELIST": "gpu[007-008]",
  "SLURM_PROCID": "9",
  "SLURM_LOCALID": "1",
}


@pytest.fixture
def calls(monkeypatch):
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: seen.append((a, k)))
  return seen


def test_single_process_initialises_nothing(calls):
  assert distributed.detected_cluster() is None
  assert distributed.maybe_initialize() is False and calls == []


@pytest.mark.parametrize(
  "env,kind",
  [
    (SLURM, "slurm"),
    (
      {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911", "OMPI_COMM_WORLD_SIZE": "4"},
      "ompi",
    ),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, "tpu"),
  ],
)
def test_clusters_use_jax_auto_detection(calls, monkeypatch, env, kind):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert distributed.detected_cluster() == kind
  assert distributed.maybe_initialize() is True
  assert calls == [((), {})]  # no arguments: JAX detects coordinator, count and id itself


def test_jax_detection_reads_slurm_as_srun_sets_it(calls, monkeypatch):
  for k, v in SLURM.items():
    monkeypatch.setenv(k, v)
  address, count, pid, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
    coordinator_address=None,
    num_processes=None,
    process_id=None,
    local_device_ids=None,
    cluster_detection_method="slurm",
    initialization_timeout=None,
  )
  assert address.startswith("gpu007:") and (count, pid, local) == (16, 9, [1])


def test_single_task_slurm_job_stays_single_process(calls, monkeypatch):
  for k, v in dict(SLURM, SLURM_NTASKS="1").items():
    monkeypatch.setenv(k, v)
  assert distributed.maybe_initialize() is False and calls == []


def test_explicit_variables_win_over_detection(calls, monkeypatch):
  for k, v in SLURM.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.1.2.3:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  monkeypatch.setattr(jax.config, "update", lambda *a: None)
  assert distributed.maybe_initialize() is True
  assert calls == [
    ((), {"coordinator_address": "10.1.2.3:1234", "num_processes": 2, "process_id": 1})
  ]


def test_off_switch(calls, monkeypatch):
  for k, v in SLURM.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("SSLX_DISTRIBUTED", "0")
  assert distributed.maybe_initialize() is False and calls == []
