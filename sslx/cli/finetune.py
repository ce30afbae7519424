r"""Fine-tunes the latest checkpoint in --workdir on the config's labelled dataset:

    python -m sslx finetune --config=experiments/mae.py --workdir=/tmp/mae [--steps=500] \
        [--label_fraction=0.01] [--from_scratch]

The encoder alone (Method.finetune_params) is trained with AdamW, layer-wise lr decay, label
smoothing, mixup/CutMix and flips, sharded over every device; the result is merged into
workdir/results.json as "finetune" ("finetune_<pct>pct" on a label subset, whose image list is
written to the workdir). --from_scratch trains the untrained encoder with the same recipe: the
baseline that says what pretraining bought ("finetune_from_scratch").
"""

import jax
from absl import app, flags

from sslx import cli, evaluation, progress, train
from sslx.evaluation import finetune

SETTINGS = (
  "steps",
  "batch_size",
  "lr",
  "layer_decay",
  "label_smoothing",
  "mixup_alpha",
  "cutmix_alpha",
  "label_fraction",
  "train_limit",
)


def finetune_checkpoint(
  config, workdir: str, cfg: dict | None = None, from_scratch: bool = False
) -> dict:
  """Fine-tunes the latest checkpoint in `workdir` (or, `from_scratch`, the untrained encoder)
  and merges the result into workdir/results.json; returns it."""
  setup, state, step = train.restore_latest(config, workdir, pretrained=not from_scratch)
  splits = evaluation.eval_splits(config)
  if splits is None:
    raise ValueError(f"dataset {config.dataset.name!r} has no labels: nothing to fine-tune on")
  eval_data = evaluation.eval_images(config, *splits, image_protocols=True)
  state = jax.device_get(state)
  if cfg is None:
    cfg = dict(config.get("evals", {}).get("finetune", {}) or {})
  ctx = evaluation.Context(
    setup.method, state.params["model"], state.batch_stats, *eval_data, setup.mesh, workdir
  )
  results, _ = finetune.finetune(ctx, cfg)
  key = next(iter(results))  # finetune, or finetune_<pct>pct on a label subset
  transfer = evaluation.transfer_label(config, workdir)
  if from_scratch:
    results = {key.replace("finetune", "finetune_from_scratch", 1): results[key]}
    progress.write_results(workdir, results, transfer)
    progress.console(
      f"trained the untrained encoder with the fine-tuning recipe: top-1 "
      f"{next(iter(results.values())):.2f}%"
    )
    return results
  progress.write_results(workdir, dict(results, finetune_step=step), transfer)
  progress.console(f"fine-tuned checkpoint step {step}: top-1 {results[key]:.2f}% ({key})")
  return results


def define_flags():
  d = finetune.DEFAULTS
  cli.define_config_flags("run directory holding checkpoints/")
  flags.DEFINE_integer("steps", d["steps"], "fine-tuning steps")
  flags.DEFINE_integer("batch_size", d["batch_size"], "batch size")
  flags.DEFINE_float("lr", d["lr"], "peak AdamW learning rate")
  flags.DEFINE_float("layer_decay", d["layer_decay"], "layer-wise lr decay (ViT)")
  flags.DEFINE_float("label_smoothing", d["label_smoothing"], "label smoothing")
  flags.DEFINE_float("mixup_alpha", d["mixup_alpha"], "mixup Beta(α, α); 0 = off")
  flags.DEFINE_float("cutmix_alpha", 0.0, "CutMix Beta(α, α); 0 = off (both on: one per batch)")
  flags.DEFINE_float("label_fraction", 0.0, "class-balanced label subset, e.g. 0.01 (0: all)")
  flags.DEFINE_integer("train_limit", 0, "at most this many training images (0: all)")
  flags.DEFINE_bool(
    "from_scratch",
    False,
    "baseline: the same recipe from the untrained encoder (written as finetune_from_scratch)",
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  cfg = {k: getattr(f, k) for k in SETTINGS}
  print(finetune_checkpoint(f.config, f.workdir, cfg, from_scratch=f.from_scratch))
