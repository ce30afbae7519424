"""XLA flag set-up for CPU runs.

XLA reads ``XLA_FLAGS`` once, when jax initialises its backend (the first computation, or the
first ``jax.devices()``), so flags must be in the environment before that. Entry points call
:func:`configure_xla_for_cpu` first thing -- before anything that touches a jax backend::

    from sslx.xla import configure_xla_for_cpu
    configure_xla_for_cpu()
    import jax  # importing jax is fine either way; creating arrays is what starts the backend

What it does, only when the process will run on the CPU (:func:`target_platform`): it appends
to ``XLA_FLAGS`` each flag below that the user has not already set, so a user's own value for
the same flag always wins. ``XLA_FLAGS`` reaches every backend's compiler, so on a TPU VM or a
GPU host these CPU-tuned flags (``--xla_disable_hlo_passes`` in particular) must stay out.

Which backend jax will pick is decided here without starting one (starting it would fix
``XLA_FLAGS`` too early): ``JAX_PLATFORMS`` (or ``JAX_PLATFORM_NAME``) wins when set, its first
entry naming the platform; otherwise an accelerator counts only when both its jax plugin is
installed and its device nodes exist -- ``libtpu`` with ``/dev/accel*`` or ``/dev/vfio/<n>``
(TPU VMs), a CUDA plugin with ``/dev/nvidia<n>``, a ROCm plugin with ``/dev/kfd`` -- which is
the condition under which jax's own start-up would find one. ``libtpu`` installed on a machine
without TPU devices (e.g. to compile for a TPU topology, see :mod:`sslx.planning`) still means
CPU.

``--xla_cpu_experimental_ynn_fusion_type=reduce``: only reductions go to YNNPACK; convolutions
  and matmuls go to Eigen / XLA's own emitters. By default XLA:CPU sends convolutions, matmuls
  and reductions to YNNPACK. Measured on the 2-core AVX-512 machines this project targets
  (batch 128, 32x32, 64 channels): YNNPACK's convolution forward takes 92 ms vs Eigen's 43 ms,
  its weight-gradient convolution 304 ms vs 73 ms; its matmul fusions are slower than Eigen's for
  the ViT. Its reductions, however, are far faster than XLA's (BatchNorm statistics over
  [131072, 64]: 2.5 ms vs 238 ms; a column sum over [8320, 768]: 1.1 ms vs 21 ms), so YNNPACK
  is kept for those -- turning it off entirely (``=``) doubles a ResNet step.

``--xla_disable_hlo_passes=tree_reduction_rewriter``. XLA:CPU rewrites every reduction longer
  than 32 elements into a ``reduce-window`` of 32-element chunks followed by a second reduction
  (pairwise-style summation), and runs those ``reduce-window`` ops as slow scalar loops: in the
  ViT-Tiny step they took ~20% of all op time (LayerNorm over 192 channels, softmax over 65
  keys; a LayerNorm forward+backward goes from 20 ms to 2.5 ms without the rewrite).

Neither flag changes the maths, only which library runs an op and the order of a sum: results
agree to float32 rounding (the test suite runs a ResNet and a ViT train step with and without
them and compares loss and gradients).

Set ``SSLX_NO_XLA_FLAGS=1`` to skip the set-up entirely.

**The host allocator.** XLA:CPU allocates each step's activations afresh. glibc's malloc serves
buffers of more than a few MiB with ``mmap`` and returns them to the kernel when freed, so every
step faults hundreds of MiB of zeroed pages back in: 16% of the CPU time of the SimCLR demo was
kernel time (28.6 M page faults in a 6-epoch run). An allocator that keeps freed memory for
reuse removes that: with gperftools' tcmalloc preloaded, the demo's step takes 0.74 s instead
of 0.93 s, DINO's tiny-ViT step 0.21 s instead of 0.30 s and MAE's 0.30 s instead of 0.58 s (same
results; ``python -m sslx benchmark --workload=config``). The allocator must be in place before
the interpreter starts, so :func:`reexec_with_fast_malloc` restarts a ``python -m sslx ...``
command once with ``LD_PRELOAD`` set when the run will be on the CPU, a tcmalloc library is
installed (Debian/Ubuntu: ``apt install libtcmalloc-minimal4``; Colab preloads one already) and
none is preloaded. ``SSLX_MALLOC=system`` keeps glibc's malloc; ``SSLX_MALLOC=/path/lib.so``
names the library to preload.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shlex
import sys
from collections.abc import Callable, Iterable

CPU_FLAGS: dict[str, str] = {
  "--xla_cpu_experimental_ynn_fusion_type": "reduce",  # YNNPACK for reductions only
  "--xla_disable_hlo_passes": "tree_reduction_rewriter",
}


def _flag_name(token: str) -> str:
  return token.split("=", 1)[0]


# jax plugin modules (or packages) per platform; any one installed counts.
PLUGINS: dict[str, tuple[str, ...]] = {
  "tpu": ("libtpu", "jax_plugins.xla_tpu"),
  "cuda": (
    "jax_cuda13_plugin",
    "jax_cuda12_plugin",
    "jax_plugins.xla_cuda13",
    "jax_plugins.xla_cuda12",
  ),
  "rocm": (
    "jax_rocm7_plugin",
    "jax_rocm6_plugin",
    "jax_plugins.xla_rocm7",
    "jax_plugins.xla_rocm6",
  ),
}
# Device nodes that show the accelerator is present (globs).
DEVICE_NODES: dict[str, tuple[str, ...]] = {
  "tpu": ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*"),
  "cuda": ("/dev/nvidia[0-9]*",),
  "rocm": ("/dev/kfd",),
}
# In jax's order of preference when several are present.
_ACCELERATORS = ("tpu", "cuda", "rocm")


def _module_installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):  # a parent package missing
    return False


def target_platform(
  env=None,
  installed: Callable[[str], bool] | None = None,
  device_nodes: Callable[[str], Iterable[str]] | None = None,
) -> str:
  """The platform jax will run this process on: "cpu", "tpu", "cuda", "rocm" (or whatever
  ``JAX_PLATFORMS`` names first), decided without initialising a backend.

  ``installed(module)`` and ``device_nodes(pattern)`` are injectable for tests.
  """
  env = os.environ if env is None else env
  installed = installed or _module_installed
  device_nodes = device_nodes or glob.glob
  requested = (env.get("JAX_PLATFORMS") or env.get("JAX_PLATFORM_NAME") or "").strip().lower()
  if requested:
    first = requested.split(",")[0].strip()
    return "cuda" if first == "gpu" else first
  for platform in _ACCELERATORS:
    if any(installed(m) for m in PLUGINS[platform]) and any(
      any(True for _ in device_nodes(pattern)) for pattern in DEVICE_NODES[platform]
    ):
      return platform
  return "cpu"


def keep_idle_plugins_asleep(
  env=None,
  installed: Callable[[str], bool] | None = None,
  device_nodes: Callable[[str], Iterable[str]] | None = None,
) -> bool:
  """Sets ``JAX_PLATFORMS=cpu`` when the process will run on the CPU although an accelerator
  plugin is installed (``libtpu`` beside a CPU-only jax, to compile for TPU topologies): jax
  would otherwise start that plugin, which finds no device and prints a page of errors (libtpu's
  host-bounds and worker-hostname warnings) before every command. Nothing is changed when
  ``JAX_PLATFORMS`` is set or a device is present. Returns whether it set the variable.
  TPU compilation without a TPU (:mod:`sslx.planning`) works with ``JAX_PLATFORMS=cpu``."""
  env = os.environ if env is None else env
  installed = installed or _module_installed
  if env.get("JAX_PLATFORMS") or env.get("JAX_PLATFORM_NAME"):
    return False
  if target_platform(env, installed, device_nodes) != "cpu":
    return False
  if not any(installed(m) for platform in _ACCELERATORS for m in PLUGINS[platform]):
    return False
  env["JAX_PLATFORMS"] = "cpu"
  if env is os.environ and "jax" in sys.modules:  # jax read the variable at import: tell it too
    sys.modules["jax"].config.update("jax_platforms", "cpu")
  return True


def _targets_cpu(env) -> bool:
  return target_platform(env) == "cpu"


def merge_flags(existing: str, extra: dict[str, str]) -> str:
  """Append ``extra`` flags to the ``existing`` XLA_FLAGS string, skipping any flag name
  the string already sets (the user's setting wins)."""
  tokens: list[str] = shlex.split(existing) if existing else []
  present = {_flag_name(t) for t in tokens}
  for name, value in extra.items():
    if name not in present:
      tokens.append(f"{name}={value}")
  return " ".join(shlex.quote(t) if (" " in t or t == "") else t for t in tokens)


# Allocators that keep freed memory for reuse, by preference, and where Linux distributions put them.
FAST_MALLOCS: tuple[str, ...] = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
MALLOC_DIRS: tuple[str, ...] = (
  "/usr/lib/x86_64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
  "/usr/lib64",
  "/usr/lib",
  "/usr/local/lib",
)
_PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
_REEXEC_MARK = "_SSLX_MALLOC_REEXEC"  # set in the restarted process: never restart twice


def fast_malloc(env=None, exists: Callable[[str], bool] = os.path.exists, platform=None) -> str:
  """The allocator library this process should be restarted with, or "" to keep the current
  one: "" when ``SSLX_MALLOC=system``, when an allocator is already preloaded, off Linux, when the
  run is not on the CPU, or when no library of :data:`FAST_MALLOCS` is installed. A path in
  ``SSLX_MALLOC`` is used as given and must exist."""
  env = os.environ if env is None else env
  choice = env.get("SSLX_MALLOC", "").strip()
  if choice == "system" or env.get(_REEXEC_MARK):
    return ""
  if any(name in env.get("LD_PRELOAD", "") for name in _PRELOADED_ALLOCATORS):
    return ""
  if (platform or sys.platform) != "linux" or not _targets_cpu(env):
    return ""
  if choice:
    if not exists(choice):
      raise FileNotFoundError(
        f"SSLX_MALLOC={choice!r}: no such file (expected the path of an allocator library, "
        "e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4, or 'system')"
      )
    return choice
  for name in FAST_MALLOCS:
    for folder in MALLOC_DIRS:
      path = os.path.join(folder, name)
      if exists(path):
        return path
  return ""


def reexec_with_fast_malloc(env=None, execv: Callable = os.execv) -> bool:
  """Restarts this ``python -m sslx ...`` process with :func:`fast_malloc`'s library in
  ``LD_PRELOAD`` (same interpreter, flags and arguments), once. Only a process whose main module
  is sslx's own is restarted (never a test runner or notebook that imported sslx), and only
  before jax has started a backend. Returns False when nothing was done (``execv`` does not
  return)."""
  env = os.environ if env is None else env
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is None or spec.name.split(".")[0] != "sslx" or backend_initialized():
    return False
  library = fast_malloc(env)
  if not library:
    return False
  preload = env.get("LD_PRELOAD", "")
  env["LD_PRELOAD"] = library + (":" + preload if preload else "")
  env[_REEXEC_MARK] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
  return True


def allocator() -> str:
  """The preloaded allocator library of this process ("" for the C library's malloc), for the
  records of a run's speed."""
  preload = os.environ.get("LD_PRELOAD", "")
  return next((p for p in preload.split(":") if any(a in p for a in _PRELOADED_ALLOCATORS)), "")


def backend_initialized() -> bool:
  """True if jax has already created a backend (then new XLA_FLAGS would be ignored)."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", {}))
  except Exception:  # pragma: no cover - private API moved
    return False


def configure_xla_for_cpu(
  env: dict | None = None, flags: dict[str, str] | None = None, warn: bool = True
) -> str:
  """Add the beneficial CPU flags to ``XLA_FLAGS`` (keeping the user's). Returns the new value.

  ``env`` defaults to ``os.environ`` (a dict may be given for testing). Does nothing when the
  platform requested is not CPU or ``SSLX_NO_XLA_FLAGS`` is set. Warns if jax's backend is
  already initialised, since the flags then have no effect in this process.
  """
  env = os.environ if env is None else env
  current = env.get("XLA_FLAGS", "")
  if env.get("SSLX_NO_XLA_FLAGS") or not _targets_cpu(env):
    return current
  new = merge_flags(current, CPU_FLAGS if flags is None else flags)
  if new != current:
    if warn and env is os.environ and backend_initialized():
      import warnings

      warnings.warn(
        "configure_xla_for_cpu() called after jax initialised its backend; "
        "the XLA flags will not take effect in this process",
        stacklevel=2,
      )
    env["XLA_FLAGS"] = new
  return new
