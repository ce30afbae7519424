r"""Trains and evaluates one experiment:

    python -m sslx train --config=experiments/simclr.py --workdir=/tmp/sslx-demo
    python -m sslx train --config=experiments/simclr.py:cifar10 \
        --config.dataset.path=... --config.batch_size=512 --workdir=...

(``python -m sslx.main`` is the same command.)
"""

import os

from absl import app, flags

from sslx import cli, distributed, methods, progress, train, visualize


def define_flags():
  cli.define_config_flags("directory or URL for checkpoints, logs, results.json")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.maybe_initialize()
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  # SIGTERM/SIGINT: raises preemption.Preempted, a SystemExit with status 75 ("run me again").
  train.train_and_evaluate(config, workdir)
  draw_pictures(config, workdir)


def draw_pictures(config, workdir: str) -> list[str]:
  """The pictures that show what the method learned (its module's PICTURES: visualize
  subcommands such as DINO's attention maps or MAE's reconstructions), drawn from the final
  checkpoint into the workdir and named in the last lines of output."""
  paths = []
  for name in getattr(methods.get(config.method.name), "PICTURES", ()):
    why = visualize.unavailable(name, config)
    if why:
      progress.console(f"no {name} picture: {why}")
      continue
    out = os.path.join(workdir, f"{name}.png")
    paths.append(visualize.run(name, config, workdir, out=out))
    progress.console(f"{name} of test images: {out}")
  return paths
