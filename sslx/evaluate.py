"""Runs `config.evals` (k-NN, linear probe, ...) on the latest checkpoint in --workdir:

    python -m sslx.evaluate --config=experiments/simclr.py --workdir=/tmp/sslx-demo

and, as a subcommand, draws the test features in 2-D (t-SNE or UMAP, `pip install
'sslx[plots]'`):

    python -m sslx.evaluate embed --config=... --workdir=... --method=umap|tsne [--out=x.png]

The config must describe the same method and model the checkpoint was trained with (checked);
the results are merged into workdir/results.json under "evaluate".
"""

from sslx import xla

xla.configure_xla_for_cpu()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def evaluate_checkpoint(config, workdir: str) -> dict:
  import numpy as np

  from sslx import checkpointing, config_lib, data, evaluation, progress, train

  config_lib.validate(config)
  mngr = checkpointing.manager(workdir, async_save=False)
  step = checkpointing.check_compatible(mngr, config)
  if step is None:
    raise FileNotFoundError(
      f"no checkpoint in {mngr.directory}: train first with "
      f"python -m sslx.main --config=... --workdir={workdir}"
    )
  source = data.build_source(config.dataset, config.dataset.train_split)
  sample = np.zeros((2, source.image_size, source.image_size, 3), np.uint8)
  setup = train.build(config, sample, len(source), getattr(source, "num_classes", 0))
  state, _ = checkpointing.restore(mngr, step, setup.abstract_state)  # no second state
  results = evaluation.run_all(config, setup.method, state, setup.mesh, step=step)
  progress.write_results(workdir, {"evaluate": dict(results, step=step)})
  return results


def main(argv):
  if len(argv) > 1:
    if argv[1:] != ["embed"]:
      raise app.UsageError(f"unknown subcommand {argv[1:]}; valid: embed")
    from sslx import embed

    out = FLAGS.out or f"{FLAGS.workdir}/embed_{FLAGS.method}.png"
    print(embed.embed_plot(FLAGS.config, FLAGS.workdir, FLAGS.method, out))
    return
  evaluate_checkpoint(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  import sys

  from sslx import config_lib

  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory holding checkpoints/")
  flags.DEFINE_enum("method", "umap", ["umap", "tsne"], "embed: 2-D projection")
  flags.DEFINE_string("out", None, "embed: PNG path (default workdir/embed_<method>.png)")
  flags.mark_flags_as_required(["config", "workdir"])
  problem = config_lib.check_override_keys(sys.argv[1:])
  if problem:
    sys.exit(f"error: {problem}")
  app.run(main)
