"""tools/first_runs.py: the script that regenerates the first-runs table from real runs."""

import datetime
import importlib.util
import json
import os

import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("first_runs", f"{REPO}/tools/first_runs.py")
first_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(first_runs)


def test_every_experiment_has_a_family_metric():
  for name in first_runs.experiments():
    assert first_runs.metric_of(name) in ("knn@20", "linear")


def test_row_margin_is_over_the_better_baseline_and_budget_counts():
  results = {
    "knn@20": 50.0,
    "wall_s": 300.0,
    "baselines": {"random_init": {"knn@20": 41.0}, "raw_pixels": {"knn@20": 46.5}},
  }
  r = first_runs.row("simclr", results)
  assert r["margin"] == pytest.approx(3.5) and r["passed"]
  assert not first_runs.row("simclr", dict(results, wall_s=700.0))["passed"]
  assert not first_runs.row("simclr", dict(results, **{"knn@20": 49.0}))["passed"]
  assert first_runs.row("mae", {"linear": 40.0})["margin"] is None


def test_replace_block_rewrites_only_between_the_markers(tmp_path):
  doc = tmp_path / "doc.md"
  doc.write_text(f"intro\n{first_runs.BEGIN}\nold table\n{first_runs.END}\noutro\n")
  first_runs.replace_block(doc, "new ![x](first_runs.png)", "docs/")
  assert doc.read_text() == (
    f"intro\n{first_runs.BEGIN}\nnew ![x](docs/first_runs.png)\n{first_runs.END}\noutro\n"
  )
  with pytest.raises(ValueError, match="no <!-- first-runs:begin -->"):
    (tmp_path / "x.md").write_text("no markers")
    first_runs.replace_block(tmp_path / "x.md", "", "")


@pytest.mark.slow
def test_a_tiny_run_is_timed_and_tabulated(tmp_path):
  rows = first_runs.main(
    ["--workdir", str(tmp_path), "--only=rotation", "--preset=tiny", "--no_docs"]
  )
  assert rows[0]["name"] == "rotation" and rows[0]["metric"] == "linear"
  assert rows[0]["wall"] > 0 and rows[0]["commit"] == first_runs.source_version()
  assert rows[0]["date"] == datetime.date.today().isoformat()
  assert json.loads((tmp_path / "rotation" / "results.json").read_text())["steps"] == 4
  assert "| rotation |" in (tmp_path / "first_runs.md").read_text()


def test_a_finished_run_is_read_with_the_commit_it_ran_at(tmp_path):
  out = tmp_path / "rotation"
  out.mkdir()
  (out / "results.json").write_text(json.dumps({"linear": 50.0}))
  timing = {"wall_s": 120.0, "commit": "abc1234", "date": "2026-03-04"}
  (out / "first_run.json").write_text(json.dumps(timing))
  results = first_runs.run("rotation", "", tmp_path)  # nothing is trained: it is finished
  assert (results["wall_s"], results["commit"], results["date"]) == (120.0, "abc1234", "2026-03-04")
  # an older timing file: no commit, and the day is the one results.json was written
  (out / "first_run.json").write_text(json.dumps({"wall_s": 120.0}))
  written = datetime.datetime(2026, 5, 6, 12).timestamp()
  os.utime(out / "results.json", (written, written))
  results = first_runs.run("rotation", "", tmp_path)
  assert (results["commit"], results["date"]) == ("unknown", "2026-05-06")


def test_stamp_names_each_day_and_commit_when_runs_come_from_several():
  rows = [
    dict(name=n, commit=c, date=d)
    for n, c, d in (
      ("a", "111", "2026-01-02"),
      ("b", "222", "2026-01-02"),
      ("c", "111", "2026-01-02"),
      ("d", "111", "2026-01-05"),
    )
  ]
  assert first_runs.stamp(rows[:1] + rows[2:3]) == "on 2026-01-02 at commit 111"
  assert first_runs.stamp(rows[:3]) == "on 2026-01-02 at commits 111 (a, c); 222 (b)"
  assert first_runs.stamp(rows) == (
    "on 2026-01-02 at commits 111 (a, c); 222 (b); on 2026-01-05 at commit 111 (d)"
  )
  assert first_runs.stamp(rows[3:] + rows[:1]) == (
    "on 2026-01-02 at commit 111 (a); on 2026-01-05 at commit 111 (d)"
  )


def _rows(specs):
  out = []
  for name, commit, date, trained, wall in specs:
    metric = first_runs.metric_of(name)
    results = {
      metric: trained,
      "wall_s": wall,
      "commit": commit,
      "date": date,
      "baselines": {"random_init": {metric: 41.2}, "raw_pixels": {metric: 38.8}},
    }
    out.append(first_runs.row(name, results))
  return out


@pytest.mark.parametrize(
  "specs",
  [
    # one day, one commit: the stamp names no rows
    [
      ("simclr", "aaa1111", "2026-01-02", 55.85, 458.0),
      ("mae", "aaa1111", "2026-01-02", 49.5, 310),
    ],
    # several commits over several days, a missing figure and a run over the budget
    [
      ("simclr", "aaa1111", "2026-01-02", 55.85, 458.0),
      ("cpc", "bbb2222", "2026-01-02", None, 829.0),
      ("dino", "aaa1111", "2026-01-05", 44.45, 449.0),
      ("mae", "ccc3333", "2026-01-05", 49.5, None),
    ],
  ],
)
def test_rows_read_back_from_the_table_equal_the_rows_it_was_written_from(specs):
  rows = _rows(specs)
  back = first_runs.rows_in(first_runs.table(rows, first_runs.stamp(rows)))
  for r in rows:
    r["margin"] = None if r["margin"] is None else round(r["margin"], 2)
  for r in back:
    r["margin"] = None if r["margin"] is None else round(r["margin"], 2)
  assert back == rows


def test_the_committed_table_reads_back_to_itself():
  block = first_runs.current_block(first_runs.REPO / "docs" / "results.md")
  rows = first_runs.rows_in(block)
  assert sorted(r["name"] for r in rows) == first_runs.experiments()
  assert first_runs.table(rows, first_runs.stamp(rows)).strip() == block.strip()


def test_one_rerun_keeps_every_other_row_of_the_docs(tmp_path):
  out = tmp_path / "rotation"
  out.mkdir()
  results = {"linear": 60.25, "baselines": {"random_init": {"linear": 46.7}}}
  (out / "results.json").write_text(json.dumps(results))
  timing = {"wall_s": 250.0, "commit": "abc1234", "date": "2026-03-04"}
  (out / "first_run.json").write_text(json.dumps(timing))
  rows = first_runs.main(
    ["--workdir", str(tmp_path), "--only=rotation", "--keep_other_rows", "--no_docs"]
  )
  kept = first_runs.rows_in(first_runs.current_block(first_runs.REPO / "docs" / "results.md"))
  assert [r["name"] for r in rows] == first_runs.experiments()
  by_name = {r["name"]: r for r in rows}
  assert by_name["rotation"]["trained"] == 60.25 and by_name["rotation"]["commit"] == "abc1234"
  assert [r for r in rows if r["name"] != "rotation"] == [
    r for r in kept if r["name"] != "rotation"
  ]
  assert "| rotation | 4 min 10 s | linear | 60.25 |" in (tmp_path / "first_runs.md").read_text()


def test_a_docs_table_without_a_stamp_is_refused():
  with pytest.raises(ValueError, match="no 'Measured"):
    first_runs.rows_in("| simclr | 1 min 00 s | knn@20 | 50.00 | 41.20 | 38.80 | +8.80 | yes |")
