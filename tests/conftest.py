"""Test-suite set-up: 8 fake CPU devices, so sharded code runs as on a real mesh.

XLA_FLAGS must be set before jax initialises its backend, hence here, at import time.
"""

import os

# Compilation, not execution, dominates this suite (hundreds of small train steps, each run a
# few times): LLVM optimisation level 1 compiles a small step ~35% faster and runs it ~5%
# slower (level 0 halves compile time but doubles run time). Results are unchanged.
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=1"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same tiny train step: a persistent compilation cache shared by the
# whole run (and by the subprocesses it starts, through the environment) compiles each once.
import tempfile  # noqa: E402

_CACHE = os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="sslx-test-jax-cache-")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CIFAR = os.path.join(os.path.dirname(REPO), "shared", "datasets", "cifar10")


@pytest.fixture(scope="session")
def shared_cifar():
  if not os.path.isdir(SHARED_CIFAR):
    pytest.skip(f"{SHARED_CIFAR} not present")
  return SHARED_CIFAR
