"""Command-line tools, one module per command: ``python -m sslx <command> [flags]``.

Each command module defines ``define_flags()`` (its absl flags; nothing is defined on import,
so tests and notebooks can import a command's module freely) and ``main(argv)``. :func:`run`
is the one start-up path every command shares: on the CPU a restart with a caching allocator
when one is installed (:func:`sslx.xla.reexec_with_fast_malloc`), CPU XLA flags before jax
starts its backend, flags, a clear message for an unknown ``--config.<key>``, and
WARNING-level logging unless ``--verbosity`` asks for more. The commands are thin: the work is done by library functions.

``python -m sslx.main`` is kept as the training command's historical name.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from sslx import config_lib, xla

USAGE = "usage: python -m sslx COMMAND [--flag=value ...]   (python -m sslx COMMAND --help)"


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def define_config_flags(workdir_help: str = "run directory (checkpoints/, results.json)") -> None:
  """--config (an experiment file with its preset) and --workdir, both required."""
  config_flags.DEFINE_config_file(
    "config", None, "experiment file, e.g. experiments/simclr.py[:preset]", lock_config=True
  )
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])


def run(
  main: Callable[[list[str]], None],
  define_flags: Callable[[], None],
  argv: Sequence[str],
  doc: str | None = None,
):
  """Starts one command: `argv` is its command line (argv[0] is the program name); `doc` is
  what --help prints above the command's flags."""
  xla.reexec_with_fast_malloc()  # CPU runs: restart once with tcmalloc when it is installed
  xla.keep_idle_plugins_asleep()  # no TPU plugin start-up noise on a CPU-only machine
  xla.configure_xla_for_cpu()  # before anything starts a jax backend
  define_flags()
  if doc:
    sys.modules["__main__"].__doc__ = doc  # absl's --help prints the main module's docstring
  for module in (main.__module__, __name__):  # --help lists the command's own flags
    for flag in flags.FLAGS.get_flags_for_module(module):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  problem = config_lib.check_override_keys(list(argv[1:]))
  if problem:
    sys.exit(f"error: {problem}")

  verbose = any(a.startswith(("--verbosity", "-v=")) for a in argv)

  def quiet_main(args):
    if not verbose:
      logging.set_verbosity(logging.WARNING)  # no orbax/absl INFO lines between the results
    try:
      return main(args)
    except CHECKS as e:
      where = raised_at(e)
      if verbose or os.environ.get("SSLX_TRACEBACK") or where is None:
        raise
      sys.exit(f"error: {e}\n({where}; SSLX_TRACEBACK=1 shows the whole traceback)")

  app.run(quiet_main, argv=list(argv))


# What sslx raises when it refuses input (a config value, a path, a checkpoint of another run):
# its own message names the problem, so the command prints that line, not a traceback.
CHECKS = (ValueError, OSError, RuntimeError, FloatingPointError)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raised_at(error: BaseException) -> str | None:
  """Where sslx's own code raised `error` (a check with its message), as "raised at
  sslx/<file>:<line>"; None where it came from elsewhere (jax, a library: a bug or an
  environment problem, whose traceback is worth seeing)."""
  tb = error.__traceback__
  jax_filtered = type(error.__cause__).__name__ == "UnfilteredStackTrace" or any(
    "JAX has removed its internal frames" in note for note in getattr(error, "__notes__", ())
  )
  if tb is None or jax_filtered:  # raised inside jax: its remaining frames may all be sslx's
    return None
  while tb.tb_next is not None:
    tb = tb.tb_next
  file = os.path.abspath(tb.tb_frame.f_code.co_filename)
  if not file.startswith(_PACKAGE + os.sep):
    return None
  return f"raised at sslx/{os.path.relpath(file, _PACKAGE)}:{tb.tb_lineno}"


def dispatch(argv: Sequence[str]) -> None:
  """`python -m sslx COMMAND ...`: runs sslx/cli/COMMAND.py."""
  commands = available()
  if len(argv) < 2 or argv[1] not in commands:
    given = f"unknown command {argv[1]!r}\n" if len(argv) > 1 and argv[1] != "--help" else ""
    sys.exit(f"{given}{USAGE}\ncommands: {', '.join(commands)}")
  module = importlib.import_module(f"{__name__}.{argv[1]}")
  run(module.main, module.define_flags, [f"python -m sslx {argv[1]}", *argv[2:]], module.__doc__)
