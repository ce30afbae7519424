r"""Trains and evaluates one experiment:

    python -m sslx train --config=experiments/simclr.py --workdir=/tmp/sslx-demo
    python -m sslx train --config=experiments/simclr.py:cifar10 \
        --config.dataset.path=... --config.batch_size=512 --workdir=...

(``python -m sslx.main`` is the same command.)
"""

from absl import app, flags

from sslx import cli, distributed, train


def define_flags():
  cli.define_config_flags("directory or URL for checkpoints, logs, results.json")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.maybe_initialize()
  train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
