"""t-SNE / UMAP pictures of a checkpoint's test features."""

import builtins
import os
import subprocess
import sys

import numpy as np
import pytest

from sslx import embed, train
from tests.helpers import REPO, tiny_simclr


def test_tsne_png_of_a_tiny_checkpoint(tmp_path):
  pytest.importorskip("sklearn")
  pytest.importorskip("matplotlib")
  config = tiny_simclr(steps=2, evals={})
  train.train_and_evaluate(config, str(tmp_path))
  out = embed.embed_plot(config, str(tmp_path), "tsne", str(tmp_path / "t.png"), limit=200)
  assert os.path.getsize(out) > 5000
  from PIL import Image

  img = np.asarray(Image.open(out).convert("RGB"))
  assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # coloured points and a legend


@pytest.mark.skipif(
  not os.environ.get("SSLX_TEST_UMAP"),
  reason="umap-learn's numba compile takes ~1 min; set SSLX_TEST_UMAP=1",
)
def test_umap_reduces_to_2d():
  pytest.importorskip("umap")
  x = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
  assert embed.reduce_2d(x, "umap").shape == (60, 2)


def test_missing_extra_names_the_install_line(monkeypatch):
  real = builtins.__import__

  def no_sklearn(name, *a, **k):
    if name.startswith("sklearn"):
      raise ImportError("No module named 'sklearn'")
    return real(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", no_sklearn)
  with pytest.raises(ImportError, match=r"pip install 'sslx\[plots\]'"):
    embed.reduce_2d(np.zeros((5, 3)), "tsne")


def test_bad_method_and_missing_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="valid choices"):
    embed.reduce_2d(np.zeros((5, 3)), "pca")
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslx",
      "embed",
      "--config=experiments/simclr.py",
      f"--workdir={tmp_path}",
      "--method=tsne",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=200,
  )
  assert out.returncode != 0 and "no checkpoint" in out.stderr
