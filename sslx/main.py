"""Trains and evaluates one experiment:

    python -m sslx.main --config=experiments/simclr.py --workdir=/tmp/sslx-demo
    python -m sslx.main --config=experiments/simclr.py:cifar10 --config.dataset.path=... \
        --config.batch_size=512 --workdir=...

Kept short on purpose: it parses flags and calls `sslx.train.train_and_evaluate`; all logic
lives in the library so tests and notebooks call the same code.
"""

from sslx import xla

xla.configure_xla_for_cpu()  # before jax initialises its backend

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # no orbax/absl INFO lines unless asked
  from sslx import distributed, train  # after flags: jax backend starts here

  distributed.maybe_initialize()
  # SIGTERM/SIGINT: raises preemption.Preempted, a SystemExit with status 75 ("run me again").
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  import sys

  from sslx import config_lib

  config_flags.DEFINE_config_file(
    "config", None, "Experiment file, e.g. experiments/simclr.py[:preset]", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results.json")
  flags.mark_flags_as_required(["config", "workdir"])
  problem = config_lib.check_override_keys(sys.argv[1:])
  if problem:
    sys.exit(f"error: {problem}")
  app.run(main)
