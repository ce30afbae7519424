r"""Side-by-side comparison of runs: a Markdown table and a bar chart from results.json files.

    python -m sslx report --workdirs=/tmp/simclr,/tmp/byol --out=report.md

Writes report.md (one row per run: method, encoder, epochs, batch, k-NN@20, k-NN@200, linear,
fine-tune, the untrained encoder's k-NN@20 and linear, images/s; then, for runs evaluated or
fine-tuned on other datasets, one row per run and dataset) and report.png next to it (grouped
bars of the accuracies; needs matplotlib: pip install 'sslx[plots]').
"""

from __future__ import annotations

import math
import os

from sslx import paths

COLUMNS = (  # (header, results.json key, format)
  ("method", "method", "{}"),
  ("encoder", "model", "{}"),
  ("epochs", "epochs", "{:.1f}"),
  ("batch", "batch_size", "{}"),
  ("k-NN@20", "knn@20", "{:.2f}"),
  ("k-NN@200", "knn@200", "{:.2f}"),
  ("linear", "linear", "{:.2f}"),
  ("fine-tune", "finetune", "{:.2f}"),
  # the same encoder untrained (the run's `eval_baselines`): what pretraining added
  ("k-NN@20 untrained", "baselines.random_init.knn@20", "{:.2f}"),
  ("linear untrained", "baselines.random_init.linear", "{:.2f}"),
  ("images/s", "train_images_per_sec", "{:.0f}"),
)
ACCURACIES = ("knn@20", "knn@200", "linear", "finetune")
# A run evaluated or fine-tuned on other datasets (results.json["transfer"][<dataset label>]):
# one row per run and dataset.
TRANSFER_COLUMNS = (
  ("method", "method", "{}"),
  ("dataset", "dataset", "{}"),
  ("step", "evaluate.step", "{}"),
  ("k-NN@20", "evaluate.knn@20", "{:.2f}"),
  ("k-NN@200", "evaluate.knn@200", "{:.2f}"),
  ("linear", "evaluate.linear", "{:.2f}"),
  ("fine-tune", "finetune", "{:.2f}"),
  ("k-NN@20 untrained", "evaluate.baselines.random_init.knn@20", "{:.2f}"),
  ("linear untrained", "evaluate.baselines.random_init.linear", "{:.2f}"),
  ("k-NN@20 raw pixels", "evaluate.baselines.raw_pixels.knn@20", "{:.2f}"),
)


def load_results(workdir: str) -> dict:
  """workdir/results.json; a later `python -m sslx evaluate` pass (under "evaluate") overrides the
  accuracies it re-measured."""
  path = paths.join(workdir, "results.json")
  if not paths.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a finished run's workdir?")
  results = paths.read_json(path)
  later = results.get("evaluate", {})
  results.update({k: later[k] for k in ACCURACIES if k in later})
  results.setdefault("workdir", workdir)
  return results


def _cell(value, fmt: str) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  try:
    return fmt.format(value)
  except (ValueError, TypeError):
    return str(value)


def _get(results: dict, key: str):
  """results[key], where a dotted key walks into nested dicts ("baselines.random_init.linear")."""
  node = results
  for part in key.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
  """One Markdown row per results dict; missing values shown as "–"."""
  lines = [
    "| run | " + " | ".join(h for h, _, _ in columns) + " |",
    "|---" * (len(columns) + 1) + "|",
  ]
  for r in rows:
    name = os.path.basename(os.path.normpath(r.get("workdir", ""))) or "-"
    lines.append(
      f"| {name} | " + " | ".join(_cell(_get(r, k), fmt) for _, k, fmt in columns) + " |"
    )
  return "\n".join(lines) + "\n"


def transfer_rows(rows: list[dict]) -> list[dict]:
  """One row per run and other dataset it was evaluated or fine-tuned on."""
  return [
    dict(section, workdir=r.get("workdir", ""), method=r.get("method"), dataset=label)
    for r in rows
    for label, section in sorted(r.get("transfer", {}).items())
  ]


def bar_chart(rows: list[dict], out: str) -> str:
  """Grouped bars: one group per run, one bar per accuracy present in any run."""
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError("the report's bar chart needs matplotlib: pip install 'sslx[plots]'") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  keys = [k for k in ACCURACIES if any(r.get(k) is not None for r in rows)]
  names = []
  for r in rows:
    run, method = os.path.basename(os.path.normpath(r.get("workdir", ""))), r.get("method", "?")
    names.append(run if run == method else f"{run}\n{method}")
  fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(rows) + 2), 4))
  width = 0.8 / max(len(keys), 1)
  x = np.arange(len(rows))
  top = 0.0
  marked = False
  for i, k in enumerate(keys):
    vals = [r.get(k) if r.get(k) is not None else 0.0 for r in rows]
    pos = x + (i - (len(keys) - 1) / 2) * width
    ax.bar(pos, vals, width, label=k)
    # the untrained encoder's figure as a black tick on each bar: what pretraining added
    base = [_get(r, f"baselines.random_init.{k}") for r in rows]
    pts = [(p, b) for p, b in zip(pos, base) if b is not None]
    if pts:
      ax.scatter(
        [p for p, _ in pts],
        [b for _, b in pts],
        marker="_",
        s=120,
        color="black",
        zorder=3,
        label=None if marked else "untrained encoder",
      )
      marked = True
    top = max([top] + vals + [b for _, b in pts])
  ax.set_xticks(x)
  ax.set_xticklabels(
    names, rotation=30 if len(rows) > 6 else 0, ha="right" if len(rows) > 6 else "center"
  )
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_ylim(0, min(100.0, top * 1.15 + 1.0))
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize="small", ncol=len(keys) + 1)
  fig.tight_layout()
  paths.save(out, lambda f: fig.savefig(f, format=paths.file_format(out), dpi=100))
  plt.close(fig)
  return out


def write_report(workdirs: list[str], out: str, chart: bool = True) -> dict:
  """Writes the Markdown table to `out` (with the chart embedded when written) and the chart
  to `out` with a .png suffix. Returns {"markdown": path, "chart": path or None}."""
  if not workdirs:
    raise ValueError("no workdirs given: pass --workdirs=run_a,run_b,...")
  rows = [load_results(w) for w in workdirs]
  png = None
  if chart:
    png = bar_chart(rows, os.path.splitext(out)[0] + ".png")
  text = "# sslx runs\n\n" + markdown_table(rows)
  if png:
    text += f"\n![accuracies]({os.path.basename(png)})\n"
  other = transfer_rows(rows)
  if other:
    text += "\n## On other datasets\n\n" + markdown_table(other, TRANSFER_COLUMNS)
  paths.write_text(out, text)
  return {"markdown": out, "chart": png}
