r"""Side-by-side comparison of runs: a Markdown table and a bar chart from results.json files.

    python -m sslx report --workdirs=/tmp/simclr,/tmp/byol --out=report.md

Writes report.md (one row per run: method, encoder, epochs, batch, k-NN@20, k-NN@200, linear,
fine-tune, the untrained encoder's k-NN@20 and linear, images/s; then, for runs evaluated or
fine-tuned on other datasets, one row per run and dataset) and report.png next to it (grouped
bars of the accuracies; needs matplotlib: pip install 'sslx[plots]'), plus
report_other_datasets.png with the same bars for the other datasets' rows.
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
# one row per run and dataset (`transfer_rows`).
TRANSFER_COLUMNS = (
  ("method", "method", "{}"),
  ("dataset", "dataset", "{}"),
  ("step", "step", "{}"),
  ("k-NN@20", "knn@20", "{:.2f}"),
  ("k-NN@200", "knn@200", "{:.2f}"),
  ("linear", "linear", "{:.2f}"),
  ("fine-tune", "finetune", "{:.2f}"),
  ("k-NN@20 untrained", "baselines.random_init.knn@20", "{:.2f}"),
  ("linear untrained", "baselines.random_init.linear", "{:.2f}"),
  ("k-NN@20 raw pixels", "baselines.raw_pixels.knn@20", "{:.2f}"),
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
  """One row per run and other dataset it was evaluated or fine-tuned on, shaped as a run's own
  row (its `evaluate` figures and `finetune` at the top level) so that the table and the chart
  read both alike."""
  return [
    dict(
      section.get("evaluate", {}),
      finetune=section.get("finetune"),
      workdir=r.get("workdir", ""),
      method=r.get("method"),
      dataset=label,
    )
    for r in rows
    for label, section in sorted(r.get("transfer", {}).items())
  ]


def _bar_name(r: dict) -> str:
  run, method = os.path.basename(os.path.normpath(r.get("workdir", ""))), r.get("method", "?")
  name = run if run == method else f"{run}\n{method}"
  if r.get("dataset"):  # a transfer row: which dataset, shortly ("stl10 (test, 96 px)")
    label = r["dataset"]
    where, _, rest = label.partition(" (")
    where = os.path.basename(os.path.normpath(where.split(" ", 1)[-1]))
    name += f"\n{where} ({rest}" if rest else f"\n{label}"
  return name


def chart_series(rows: list[dict]) -> dict[str, tuple[list, list]]:
  """What `bar_chart` draws: per accuracy present in any row, each row's figure (None where the
  row has none), and the untrained encoder's (the black ticks)."""
  keys = [k for k in ACCURACIES if any(r.get(k) is not None for r in rows)]
  return {
    k: ([r.get(k) for r in rows], [_get(r, f"baselines.random_init.{k}") for r in rows])
    for k in keys
  }


def bar_chart(rows: list[dict], out: str) -> str:
  """Grouped bars: one group per run (or run and other dataset), one bar per accuracy present in
  any row."""
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError("the report's bar chart needs matplotlib: pip install 'sslx[plots]'") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  series = chart_series(rows)
  keys = list(series)
  names = [_bar_name(r) for r in rows]
  # Slanted names where they would run into each other (many runs, or long dataset names).
  slant = len(rows) > 6 or max(len(line) for n in names for line in n.split("\n")) > 14
  width_in = max(4, 1.1 * len(rows) + 2)
  fig, ax = plt.subplots(figsize=(width_in, 4.8 if slant else 4))
  width = 0.8 / max(len(keys), 1)
  x = np.arange(len(rows))
  top = 0.0
  marked = False
  for i, (k, (vals, base)) in enumerate(series.items()):
    vals = [v if v is not None else 0.0 for v in vals]
    pos = x + (i - (len(keys) - 1) / 2) * width
    ax.bar(pos, vals, width, label=k)
    # the untrained encoder's figure as a black tick on each bar: what pretraining added
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
  ax.set_xticklabels(names, rotation=30 if slant else 0, ha="right" if slant else "center")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_ylim(0, min(100.0, top * 1.15 + 1.0))
  ax.grid(axis="y", alpha=0.3)
  # above the axes, where no bar can be under it
  ax.legend(
    fontsize="small",
    ncol=max(1, min(len(keys) + 1, int(width_in / 1.35))),  # rows of entries that fit the width
    loc="lower center",
    bbox_to_anchor=(0.5, 1.0),
    frameon=False,
  )
  fig.tight_layout()
  paths.save(out, lambda f: fig.savefig(f, format=paths.file_format(out), dpi=100))
  plt.close(fig)
  return out


def write_report(workdirs: list[str], out: str, chart: bool = True) -> dict:
  """Writes the Markdown table to `out` (with the chart embedded when written) and the chart
  to `out` with a .png suffix (and, when runs have other datasets' results, theirs to
  <out>_other_datasets.png). Returns {"markdown": path, "chart": path or None, "other_chart": path
  or None}."""
  if not workdirs:
    raise ValueError("no workdirs given: pass --workdirs=run_a,run_b,...")
  rows = [load_results(w) for w in workdirs]
  stem = os.path.splitext(out)[0]
  png = bar_chart(rows, stem + ".png") if chart else None
  text = "# sslx runs\n\n" + markdown_table(rows)
  if png:
    text += f"\n![accuracies]({os.path.basename(png)})\n"
  other = transfer_rows(rows)
  other_png = None
  if other:
    text += "\n## On other datasets\n\n" + markdown_table(other, TRANSFER_COLUMNS)
    if chart:
      other_png = bar_chart(other, stem + "_other_datasets.png")
      text += f"\n![accuracies on other datasets]({os.path.basename(other_png)})\n"
  paths.write_text(out, text)
  return {"markdown": out, "chart": png, "other_chart": other_png}
