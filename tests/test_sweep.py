"""sslx.sweep: an experiment's sweep() points run one after another in workdir/<i>."""

import json

import pytest

from sslx import sweep
from tests.helpers import REPO


def _experiment(tmp_path, body):
  p = tmp_path / "exp.py"
  p.write_text(
    f"import sys\nsys.path.insert(0, {REPO!r})\n"
    "from tests.helpers import tiny_simclr\n"
    "def get_config(arg='cpu'):\n  return tiny_simclr()\n" + body
  )
  return str(p)


def test_points_run_in_numbered_workdirs_with_overrides(tmp_path):
  exp = _experiment(
    tmp_path,
    "def sweep():\n"
    "  return [{'method.temperature': 0.1}, {'method.temperature': 0.5,"
    " 'batch_size': 16}]\n",
  )
  seen = []
  results = sweep.run_sweep(
    exp, str(tmp_path / "w"), train_fn=lambda c, w: seen.append((c, w)) or {"w": w}
  )
  assert [w for _, w in seen] == [str(tmp_path / "w" / "0"), str(tmp_path / "w" / "1")]
  assert [c.method.temperature for c, _ in seen] == [0.1, 0.5]
  assert seen[1][0].batch_size == 16 and seen[0][0].batch_size == 32
  assert len(results) == 2
  assert json.load(open(tmp_path / "w" / "sweep.json"))["points"][1]["batch_size"] == 16


def test_unknown_override_key_fails_before_any_run(tmp_path):
  exp = _experiment(tmp_path, "def sweep():\n  return [{'method.temperatur': 0.1}]\n")
  with pytest.raises(KeyError, match="unknown key 'temperatur'"):
    sweep.run_sweep(exp, str(tmp_path / "w"), train_fn=lambda c, w: pytest.fail("ran"))


def test_experiment_without_sweep_says_so(tmp_path):
  with pytest.raises(ValueError, match="defines no sweep"):
    sweep.load_sweep(_experiment(tmp_path, ""))
