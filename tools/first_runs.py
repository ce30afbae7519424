r"""Runs every experiment's default preset as a new user would and regenerates the results table.

    python tools/first_runs.py --workdir=/tmp/first-runs            # all experiments, ~2 h
    python tools/first_runs.py --workdir=/tmp/fr --only=simclr,dino  # some of them
    python tools/first_runs.py --workdir=/tmp/fr --preset=tiny       # seconds each: a smoke test

Each experiment runs as its own `python -m sslx.main --config=experiments/<name>.py[:preset]`
process (wall time measured around it, evaluation included), one after another so they do not
share the CPU. Its family's metric is then read from `results.json`: k-NN@20 for contrastive and
self-distillation methods, the linear probe for masked modeling and pretext tasks, next to the
same protocol on the untrained encoder and on raw pixels. The table (method, wall time, metric,
untrained, raw pixels, margin over the better baseline) and a bar chart replace the block
between the `first-runs` markers in docs/results.md and README.md, stamped with the date and
the commit each run was made at; nothing in that block is edited by hand. A run already
finished in --workdir is read, not repeated (delete its folder to run it again): it keeps the
commit it ran at, so a table mixing runs of several commits names each commit and its rows.

    python tools/first_runs.py --workdir=/tmp/fr --only=cpc --keep_other_rows

re-runs one experiment (its recipe changed) and keeps every other row as the table in
docs/results.md states it, with the commit and day that row was measured at, instead of
re-running all of them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# The metric each family is judged on (first runs must beat both baselines on it by MARGIN).
FAMILIES = {
  "knn@20": ("simclr", "moco_v1", "moco_v2", "cpc", "byol", "dino", "dinov2", "vicreg"),
  "linear": (
    "mae",
    "data2vec",
    "beit",
    "rotation",
    "relative_patch",
    "jigsaw",
    "context_encoder",
    "colorization",
  ),
}
MARGIN = 3.0  # points over the better of the untrained encoder and raw pixels
BUDGET_S = 600.0  # a first run's wall-clock budget on a 2-core CPU
BEGIN, END = "<!-- first-runs:begin -->", "<!-- first-runs:end -->"


def metric_of(name: str) -> str:
  for metric, names in FAMILIES.items():
    if name in names:
      return metric
  raise ValueError(f"experiment {name!r} is in no family of {sorted(FAMILIES)}")


def experiments() -> list[str]:
  """Every experiment that is a first run (the BEiT tokenizer is stage one of beit)."""
  names = sorted(p.stem for p in (REPO / "experiments").glob("*.py"))
  return [n for n in names if n != "beit_tokenizer"]


def source_version() -> str:
  """The short commit of the code a run uses, "-dirty" when tracked files differ from it."""

  def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

  commit = git("rev-parse", "--short", "HEAD") or "unknown"
  return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run(name: str, preset: str, workdir: pathlib.Path) -> dict:
  """Trains and evaluates one experiment in workdir/<name> (skipped when already finished);
  returns its results.json with the measured wall time and the commit it ran at added."""
  out = workdir / name
  results_path = out / "results.json"
  timing = out / "first_run.json"
  if not results_path.exists():
    out.mkdir(parents=True, exist_ok=True)
    spec = f"experiments/{name}.py" + (f":{preset}" if preset else "")
    cmd = [sys.executable, "-m", "sslx.main", f"--config={spec}", f"--workdir={out}"]
    if name == "beit":  # stage one, the tokenizer, counts in BEiT's wall time
      tok = workdir / "beit_tokenizer"
      tok_spec = "experiments/beit_tokenizer.py" + (f":{preset}" if preset else "")
      cmd += [f"--config.method.tokenizer_workdir={tok}"]
      before = [sys.executable, "-m", "sslx.main", f"--config={tok_spec}", f"--workdir={tok}"]
    else:
      before = None
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    version = source_version()
    start = time.perf_counter()
    with open(out / "first_run.log", "w") as log:
      for c in [before, cmd] if before else [cmd]:
        subprocess.run(c, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - start
    today = datetime.date.today().isoformat()
    timing.write_text(json.dumps({"wall_s": wall, "commit": version, "date": today}))
  results = json.loads(results_path.read_text())
  meta = json.loads(timing.read_text()) if timing.exists() else {}
  results["wall_s"] = meta.get("wall_s")
  results["commit"] = meta.get("commit", "unknown")
  # the day the run finished (older timing files hold none: the day results.json was written)
  finished = datetime.date.fromtimestamp(results_path.stat().st_mtime).isoformat()
  results["date"] = meta.get("date", finished)
  return results


def row(name: str, results: dict) -> dict:
  metric = metric_of(name)
  base = results.get("baselines", {})
  trained = results.get(metric)
  untrained = base.get("random_init", {}).get(metric)
  pixels = base.get("raw_pixels", {}).get(metric)
  known = [b for b in (untrained, pixels) if b is not None]
  margin = trained - max(known) if trained is not None and known else None
  wall = results.get("wall_s")
  passed = margin is not None and margin >= MARGIN and wall is not None and wall <= BUDGET_S
  return dict(
    name=name,
    metric=metric,
    trained=trained,
    untrained=untrained,
    pixels=pixels,
    margin=margin,
    wall=wall,
    passed=passed,
    commit=results.get("commit", "unknown"),
    date=results.get("date", "unknown"),
  )


def stamp(rows: list[dict]) -> str:
  """The table's stamp: the day and the commit the runs were made at; runs of several commits
  are named under each commit, and runs of several days under each day."""
  days: dict[str, dict[str, list[str]]] = {}
  for r in rows:
    days.setdefault(r["date"], {}).setdefault(r["commit"], []).append(r["name"])

  def commits(by_commit: dict[str, list[str]], named: bool) -> str:
    if len(by_commit) == 1 and not named:
      return f"commit {next(iter(by_commit))}"
    parts = [f"{c} ({', '.join(names)})" for c, names in by_commit.items()]
    return ("commit " if len(parts) == 1 else "commits ") + "; ".join(parts)

  named = len(days) > 1
  return "; ".join(f"on {d} at {commits(by, named)}" for d, by in sorted(days.items()))


def table(rows: list[dict], when: str) -> str:
  def f(x, fmt="{:.2f}"):
    return "–" if x is None else fmt.format(x)

  lines = [
    f"Measured {when} with `python tools/first_runs.py` (one seed, 2,000 test images: one",
    "standard error is about 1.1 points). A run passes with at least "
    f"+{MARGIN:g} points over the better baseline within {BUDGET_S / 60:g} minutes.",
    "",
    "| experiment | wall time | metric | trained | untrained | raw pixels | margin | pass |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    wall = "–" if r["wall"] is None else f"{int(r['wall'] // 60)} min {int(r['wall'] % 60):02d} s"
    lines.append(
      f"| {r['name']} | {wall} | {r['metric']} | {f(r['trained'])} | {f(r['untrained'])} | "
      f"{f(r['pixels'])} | {f(r['margin'], '{:+.2f}')} | {'yes' if r['passed'] else 'no'} |"
    )
  lines += ["", "![first runs against their baselines](first_runs.png)"]
  return "\n".join(lines)


def rows_in(block: str) -> list[dict]:
  """The rows of a table `table` wrote, read back from its text (the inverse of `table` and
  `stamp`, to the precision the table prints: hundredths of a point, whole seconds)."""
  head = re.search(r"^Measured (.*) with `python tools/first_runs.py`", block, re.M)
  if head is None:
    raise ValueError("no 'Measured ... with `python tools/first_runs.py`' line in the block")
  made: dict[str, tuple[str, str]] = {}  # name -> (commit, date)
  every = None  # one day, one commit: it names no rows
  for day, commits in re.findall(r"on (\d{4}-\d\d-\d\d) at (.*?)(?=; on \d{4}-|$)", head[1]):
    for part in re.sub(r"^commits? ", "", commits).split("; "):
      named = re.fullmatch(r"(\S+) \((.*)\)", part)
      if named is None:
        every = (part, day)
        continue
      for name in named[2].split(", "):
        made[name] = (named[1], day)

  def num(x):
    return None if x == "–" else float(x)

  rows = []
  for line in re.findall(r"^\| (?!experiment |---).*\|$", block, re.M):
    name, wall, metric, trained, untrained, pixels = [
      c.strip() for c in line.strip("|").split("|")
    ][:6]
    if name not in made and every is None:
      raise ValueError(f"the table's stamp names no commit for its row {name!r}")
    commit, date = made.get(name, every)
    minutes = re.fullmatch(r"(\d+) min (\d+) s", wall)
    results = {metric: num(trained), "commit": commit, "date": date}
    results["wall_s"] = 60 * int(minutes[1]) + int(minutes[2]) if minutes else None
    results["baselines"] = {
      "random_init": {metric: num(untrained)},
      "raw_pixels": {metric: num(pixels)},
    }
    rows.append(row(name, results))
  return rows


def chart(rows: list[dict], out: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4))
  for i, (key, label) in enumerate(
    [("trained", "trained"), ("untrained", "untrained encoder"), ("pixels", "raw pixels")]
  ):
    vals = [r[key] or 0.0 for r in rows]
    ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label)
  ax.set_xticks(x)
  ax.set_xticklabels([f"{r['name']}\n{r['metric']}" for r in rows], rotation=45, ha="right")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.grid(axis="y", alpha=0.3)
  top = max([r[k] or 0.0 for r in rows for k in ("trained", "untrained", "pixels")] + [1.0])
  ax.set_ylim(0, top * 1.25)  # room above the bars for the legend
  ax.legend(fontsize="small", ncol=3, loc="upper left")
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)


def _text_with_block(path: pathlib.Path, action: str) -> str:
  text = path.read_text()
  if BEGIN not in text or END not in text:
    raise ValueError(f"{path} has no {BEGIN} ... {END} block to {action}")
  return text


def current_block(path: pathlib.Path) -> str:
  return _text_with_block(path, "read").split(BEGIN, 1)[1].split(END, 1)[0]


def replace_block(path: pathlib.Path, block: str, image_dir: str) -> None:
  text = _text_with_block(path, "replace")
  block = block.replace("](first_runs.png)", f"]({image_dir}first_runs.png)")
  pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
  path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="one folder per experiment goes here")
  parser.add_argument("--only", default="", help="comma-separated experiment names (default all)")
  parser.add_argument("--preset", default="", help="preset for every run (default: the default)")
  parser.add_argument(
    "--no_docs", action="store_true", help="print the table, leave the docs untouched"
  )
  parser.add_argument(
    "--keep_other_rows",
    action="store_true",
    help="experiments not in --only keep their row of the table in docs/results.md",
  )
  args = parser.parse_args(argv)
  names = [n for n in args.only.split(",") if n] or experiments()
  unknown = sorted(set(names) - set(experiments()))
  if unknown:
    parser.error(f"unknown experiments {unknown}; valid: {experiments()}")
  kept = {}
  if args.keep_other_rows:
    kept = {r["name"]: r for r in rows_in(current_block(REPO / "docs" / "results.md"))}
    missing = sorted(set(experiments()) - set(names) - set(kept))
    if missing:
      parser.error(f"docs/results.md has no row for {missing}: run them (add them to --only)")
  workdir = pathlib.Path(args.workdir)
  by_name = {**kept, **{n: row(n, run(n, args.preset, workdir)) for n in names}}
  rows = [by_name[n] for n in experiments() if n in by_name]
  text = table(rows, stamp(rows))
  print(text)
  (workdir / "first_runs.md").write_text(text + "\n")
  if not args.no_docs:
    chart(rows, REPO / "docs" / "first_runs.png")
    replace_block(REPO / "docs" / "results.md", text, "")
    replace_block(REPO / "README.md", text, "docs/")
  return rows


if __name__ == "__main__":
  main()
