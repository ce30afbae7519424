"""The reconstruction visualizer on a 2-step MAE checkpoint."""

import numpy as np
from PIL import Image

from sslx import train
from sslx.visualizers import reconstruction
from tests.test_mae import tiny_config


def test_render_writes_a_three_row_grid(tmp_path):
  config = tiny_config(steps=2)
  config.evals = {}
  train.train_and_evaluate(config, str(tmp_path / "run"))
  out = reconstruction.render(
    config, str(tmp_path / "run"), str(tmp_path / "recon.png"), num_images=3, scale=1
  )
  img = np.asarray(Image.open(out))
  pad = 2
  assert img.shape == (3 * (32 + pad) + pad, 3 * (32 + pad) + pad, 3)
  # Row 2 (masked input) has grey masked patches: 75% of its pixels are 0.5 grey.
  row = img[pad + 34 : pad + 34 + 32, pad : pad + 32]
  grey = np.all(np.abs(row.astype(int) - 128) <= 1, axis=-1).mean()
  assert 0.6 < grey < 0.9


def test_a_training_run_ends_with_its_pictures(tmp_path, capsys):
  """`python -m sslx.main` draws the method's PICTURES from the final checkpoint (MAE: its
  reconstructions) into the workdir and names them in the last lines of output."""
  from sslx.cli import train as train_command

  config = tiny_config(steps=2)
  config.evals = {}
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  paths = train_command.draw_pictures(config, workdir)
  assert paths == [f"{workdir}/reconstruction.png"]
  assert Image.open(paths[0]).size[0] > 0
  assert capsys.readouterr().out.strip().splitlines()[-1].endswith("reconstruction.png")


def test_a_cnn_dino_run_skips_attention_maps_saying_why(capsys):
  """DINO's default encoder is a CNN: it has no attention to draw, so the run names the
  reason instead of failing after training (the vit preset draws them)."""
  from sslx.cli import train as train_command
  from tests.helpers import experiment

  config = experiment("dino")
  assert config.model.name == "convnet"
  assert train_command.draw_pictures(config, "/nonexistent-workdir") == []
  assert "not a ViT" in capsys.readouterr().out
  assert experiment("dino", "vit").model.name.startswith("vit")
