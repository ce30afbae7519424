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

``--xla_cpu_experimental_ynn_fusion_type=`` (empty: no YNNPACK fusions). By default XLA:CPU
  sends convolutions (and some dot/elementwise fusions) to YNNPACK. Its weight-gradient
  convolution is ~3x slower than Eigen's on this class of machine, and its fused
  elementwise/reduction kernels are slower than XLA's own loops for the ViT. With the flag
  convolutions and matmuls run on Eigen / XLA's emitters. The maths is unchanged (same fp32
  operations; results agree to rounding -- the test suite checks loss and gradients).

Set ``SSLX_NO_XLA_FLAGS=1`` to skip the set-up entirely.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Dict, List, Optional

CPU_FLAGS: Dict[str, str] = {
    "--xla_cpu_experimental_ynn_fusion_type": "",
}


def _flag_name(token: str) -> str:
    return token.split("=", 1)[0]


def _targets_cpu(env) -> bool:
    plat = env.get("JAX_PLATFORMS") or env.get("JAX_PLATFORM_NAME") or ""
    plat = plat.strip().lower()
    if not plat:
        return True  # nothing requested: on the CPU-only machines this project targets
    return plat.split(",")[0].strip() == "cpu"


def merge_flags(existing: str, extra: Dict[str, str]) -> str:
    """Append ``extra`` flags to the ``existing`` XLA_FLAGS string, skipping any flag name
    the string already sets (the user's setting wins)."""
    tokens: List[str] = shlex.split(existing) if existing else []
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


def configure_xla_for_cpu(env: Optional[dict] = None, flags: Optional[Dict[str, str]] = None,
                          warn: bool = True) -> str:
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
            warnings.warn("configure_xla_for_cpu() called after jax initialised its backend; "
                          "the XLA flags will not take effect in this process", stacklevel=2)
        env["XLA_FLAGS"] = new
    return new
