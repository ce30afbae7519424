r"""Runs an experiment's sweep points one after another, locally:

    python -m sslx sweep --config=experiments/simclr.py --workdir=/tmp/sweep

Point i of the experiment file's `sweep()` trains in <workdir>/<i>; `python -m sslx report`
compares them.
"""

import os

from absl import app, flags

from sslx import sweep


def define_flags():
  flags.DEFINE_string("config", None, "experiment file[:preset] defining sweep()")
  flags.DEFINE_string("workdir", None, "base directory; point i runs in <workdir>/<i>")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  results = sweep.run_sweep(f.config, f.workdir)
  dirs = ",".join(os.path.join(f.workdir, str(i)) for i in range(len(results)))
  print(
    f"done: compare with python -m sslx report --workdirs={dirs} "
    f"--out={os.path.join(f.workdir, 'report.md')}"
  )
