"""Runs `config.evals` (k-NN, linear probe, ...) on the latest checkpoint in --workdir, or on
the encoder `--config.init_from` names where the workdir holds none:

    python -m sslx evaluate --config=experiments/simclr.py --workdir=/tmp/sslx-demo
    python -m sslx evaluate --config=experiments/dino.py:imagenet --workdir=/tmp/dino-s16 \
      --config.init_from=timm:vit_small_patch16_224.dino

The config must describe the same method and model the checkpoint was trained with (checked);
the dataset may be another (the encoder alone is read from the checkpoint). The results are
merged into workdir/results.json under "evaluate", or, on a dataset other than the run's,
under "transfer" and that dataset's label, apart from the run's own figures.
"""

from absl import app, flags

from sslx import cli, evaluation, preemption, progress, train


def evaluate_checkpoint(config, workdir: str) -> dict:
  setup, state, step = train.restore_latest(config, workdir)
  try:
    with preemption.stop_evaluating(step, workdir):
      results = evaluation.run_all(config, setup.method, state, setup.mesh, step=step)
  except preemption.StoppedEvaluating as e:
    progress.console(str(e))
    raise
  transfer = evaluation.transfer_label(config, workdir)
  path = progress.write_results(workdir, {"evaluate": dict(results, step=step)}, transfer)
  where = f'transfer["{transfer}"].evaluate' if transfer else "evaluate"
  progress.console(f"results of step {step} under {where} in {path}")
  return results


def define_flags():
  cli.define_config_flags("run directory holding checkpoints/")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  evaluate_checkpoint(flags.FLAGS.config, flags.FLAGS.workdir)
