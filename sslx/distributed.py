"""Multi-host start-up with JAX's own runtime (`jax.distributed.initialize`).

Called by the entry points before any computation. It initialises the runtime when the
environment describes more than one process:

  * explicit: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i
    (any cluster, and the two-process loopback test on one machine);
  * Cloud TPU pods: TPU_WORKER_HOSTNAMES lists more than one worker; jax then discovers
    everything itself.

On CPU, cross-process collectives go through gloo. Nothing here is needed for one process.
"""

from __future__ import annotations

import os


def maybe_initialize() -> bool:
  """Initialises jax.distributed if the environment asks for several processes."""
  import jax

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
  if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    jax.distributed.initialize()
    return True
  return False
