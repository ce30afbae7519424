"""Multi-host start-up with JAX's own runtime (`jax.distributed.initialize`).

Called by the entry points before any computation. In order:

  * explicit: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i win
    over everything (any cluster, and the two-process loopback test on one machine);
  * a cluster JAX knows, with more than one process: SLURM (`srun`: SLURM_NTASKS > 1),
    Open MPI (`mpirun`: OMPI_COMM_WORLD_SIZE > 1), a Cloud TPU pod slice (TPU_WORKER_HOSTNAMES
    lists several workers, or MEGASCALE_COORDINATOR_ADDRESS is set). Then
    `jax.distributed.initialize()` is called without arguments, so JAX's own cluster
    detection finds the coordinator, the process count and this process's id;
  * SSLX_DISTRIBUTED=0 turns all of this off, =1 calls `jax.distributed.initialize()` (auto-
    detection) even where none of the above is recognised.

Initialising also starts JAX's preemption service, which `sslx.preemption` uses so every
process saves the same step on SIGTERM. On CPU, cross-process collectives go through gloo.
Nothing here is needed for one process.
"""

from __future__ import annotations

import os


def _count(var: str) -> int:
  try:
    return int(os.environ.get(var, "") or 0)
  except ValueError:
    return 0


def detected_cluster() -> str | None:
  """The multi-process environment this process runs in, if JAX can auto-detect it."""
  if "SLURM_JOB_ID" in os.environ and _count("SLURM_NTASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in os.environ and _count("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  workers = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(workers) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  return None


def maybe_initialize() -> bool:
  """Initialises jax.distributed if the environment asks for several processes."""
  import jax

  mode = os.environ.get("SSLX_DISTRIBUTED", "auto").lower()
  if mode in ("0", "off", "false"):
    return False
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    if os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=address,
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
    return True
  if detected_cluster() is not None or mode in ("1", "on", "true"):
    jax.distributed.initialize()  # JAX's own detection: coordinator, count, id, local devices
    return True
  return False
