"""XLA flag set-up for CPU runs.

XLA reads ``XLA_FLAGS`` once, when jax initialises its backend (the first computation, or the
first ``jax.devices()``), so flags must be in the environment before that. Entry points call
:func:`configure_xla_for_cpu` first thing -- before anything that touches a jax backend::

    from sslx.xla import configure_xla_for_cpu
    configure_xla_for_cpu()
    import jax  # importing jax is fine either way; creating arrays is what starts the backend

What it does, only when the run targets the CPU (``JAX_PLATFORMS``/``JAX_PLATFORM_NAME`` unset
or naming ``cpu`` first): it appends to ``XLA_FLAGS`` each flag below that the user has not
already set, so a user's own value for the same flag always wins.

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
"""

from __future__ import annotations

import os
import shlex
import sys

CPU_FLAGS: dict[str, str] = {
  "--xla_cpu_experimental_ynn_fusion_type": "reduce",  # YNNPACK for reductions only
  "--xla_disable_hlo_passes": "tree_reduction_rewriter",
}


def _flag_name(token: str) -> str:
  return token.split("=", 1)[0]


def _targets_cpu(env) -> bool:
  plat = env.get("JAX_PLATFORMS") or env.get("JAX_PLATFORM_NAME") or ""
  plat = plat.strip().lower()
  if not plat:
    return True  # nothing requested: on the CPU-only machines this project targets
  return plat.split(",")[0].strip() == "cpu"


def merge_flags(existing: str, extra: dict[str, str]) -> str:
  """Append ``extra`` flags to the ``existing`` XLA_FLAGS string, skipping any flag name
  the string already sets (the user's setting wins)."""
  tokens: list[str] = shlex.split(existing) if existing else []
  present = {_flag_name(t) for t in tokens}
  for name, value in extra.items():
    if name not in present:
      tokens.append(f"{name}={value}")
  return " ".join(shlex.quote(t) if (" " in t or t == "") else t for t in tokens)


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
