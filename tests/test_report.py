"""sslx.report: the Markdown table and bar chart from results.json files."""

import json
import os
import subprocess
import sys

import pytest

from sslx import report
from tests.helpers import REPO


def _run(tmp_path, name, **results):
  d = tmp_path / name
  d.mkdir()
  (d / "results.json").write_text(json.dumps(results))
  return str(d)


def test_table_and_chart_from_workdirs(tmp_path):
  pytest.importorskip("matplotlib")
  a = _run(
    tmp_path,
    "simclr_run",
    method="simclr",
    model="convnet",
    epochs=6.0,
    batch_size=256,
    baselines={"random_init": {"knn@20": 35.0, "linear": 40.25}},
    **{"knn@20": 41.234, "knn@200": 39.5, "linear": 45.0, "train_images_per_sec": 812.4},
  )
  b = _run(
    tmp_path,
    "byol_run",
    method="byol",
    model="resnet18",
    epochs=2.0,
    batch_size=128,
    **{
      "knn@20": 30.0,
      "knn@200": 28.0,
      "linear": 33.3,
      "finetune": 50.0,
      "train_images_per_sec": 100.0,
      "evaluate": {"knn@20": 31.5, "step": 9},
    },
  )
  out = subprocess.run(
    [sys.executable, "-m", "sslx", "report", f"--workdirs={a},{b}", f"--out={tmp_path / 'r.md'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  md = (tmp_path / "r.md").read_text()
  lines = [l for l in md.splitlines() if l.startswith("|")]
  assert lines[0].split("|")[1:-1] == [
    " run ",
    " method ",
    " encoder ",
    " epochs ",
    " batch ",
    " k-NN@20 ",
    " k-NN@200 ",
    " linear ",
    " fine-tune ",
    " k-NN@20 untrained ",
    " linear untrained ",
    " images/s ",
  ]
  assert (
    "| simclr_run | simclr | convnet | 6.0 | 256 | 41.23 | 39.50 | 45.00 | – | 35.00 | "
    "40.25 | 812 |"
  ) in md
  assert "| byol_run | byol | resnet18 | 2.0 | 128 | 31.50 |" in md  # the later evaluate wins
  assert "50.00" in md and "r.png" in md
  assert os.path.getsize(tmp_path / "r.png") > 2000


def test_missing_results_says_which(tmp_path):
  with pytest.raises(FileNotFoundError, match="results.json does not exist"):
    report.write_report([str(tmp_path)], str(tmp_path / "r.md"), chart=False)


def test_runs_evaluated_on_other_datasets_get_their_own_table(tmp_path):
  stl = "image_folder /data/stl10 (test, 96 px)"
  a = _run(
    tmp_path,
    "demo",
    method="simclr",
    transfer={
      stl: {
        "evaluate": {
          "knn@20": 50.0,
          "linear": 55.5,
          "step": 532,
          "baselines": {"random_init": {"knn@20": 40.0}, "raw_pixels": {"knn@20": 35.125}},
        },
        "finetune": 70.0,
      }
    },
    **{"knn@20": 55.3},
  )
  b = _run(tmp_path, "other", method="byol", **{"knn@20": 42.0})
  written = report.write_report([a, b], str(tmp_path / "r.md"), chart=False)
  text = open(written["markdown"]).read()
  main, transfer = text.split("## On other datasets")
  assert "| demo | simclr |" in main and "50.00" not in main  # the run's own row keeps 55.30
  rows = [l for l in transfer.splitlines() if l.startswith("| demo")]
  assert rows == [
    f"| demo | simclr | {stl} | 532 | 50.00 | – | 55.50 | 70.00 | 40.00 | – | 35.12 |"
  ]
  assert "other" not in transfer
  only_own = report.write_report([b], str(tmp_path / "own.md"), chart=False)
  assert "On other datasets" not in open(only_own["markdown"]).read()

  # Their chart draws the same figures as the table, the untrained encoder's as ticks.
  other = report.transfer_rows([report.load_results(a), report.load_results(b)])
  assert report.chart_series(other) == {
    "knn@20": ([50.0], [40.0]),
    "linear": ([55.5], [None]),
    "finetune": ([70.0], [None]),
  }
  pytest.importorskip("matplotlib")
  charted = report.write_report([a, b], str(tmp_path / "c.md"))
  assert charted["other_chart"] == str(tmp_path / "c_other_datasets.png")
  assert os.path.getsize(charted["other_chart"]) > 2000
  assert "](c_other_datasets.png)" in open(charted["markdown"]).read()
  assert report.write_report([b], str(tmp_path / "d.md"))["other_chart"] is None
