"""sslx.visualize: the subcommand dispatcher, the 60%-mass masks and the attention PNG from a
tiny trained DINO checkpoint (CLI and in-process, matplotlib and PIL)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sslx import train, visualize
from tests.helpers import REPO
from tests.test_dino import tiny_dino

TINY_FLAGS = [
  "--config.model.patch_size=8",
  "--config.model.dim=16",
  "--config.model.depth=2",
  "--config.model.num_heads=2",
  "--config.method.out_dim=64",
  "--config.method.hidden_dim=32",
  "--config.method.bottleneck_dim=16",
  "--config.augment.num_local_crops=2",
]


def test_mass_mask_keeps_the_smallest_set_with_that_mass():
  rng = np.random.default_rng(0)
  attn = rng.dirichlet(np.ones(20) * 0.3, size=6)
  masks = visualize.mass_mask(attn, 0.6)
  for a, m in zip(attn, masks):
    assert a[m].sum() >= 0.6 - 1e-12
    assert a[m].min() >= a[~m].max()  # the largest entries
    assert a[m].sum() - a[m].min() < 0.6  # minimal: drop one and it falls short
  np.testing.assert_array_equal(
    visualize.mass_mask(np.array([0.5, 0.3, 0.2]), 0.6), [True, True, False]
  )
  assert visualize.mass_mask(np.array([0.7, 0.2, 0.1]), 0.6).tolist() == [True, False, False]


def test_dispatcher_registers_and_refuses_unknown():
  assert "attention" in visualize.SUBCOMMANDS
  with pytest.raises(ValueError, match="unknown visualize subcommand 'inpaint'"):
    visualize.run("inpaint", None, "/tmp")
  with pytest.raises(TypeError, match="unknown argument"):
    visualize.run("attention", None, "/tmp", imagee="x.png")
  seen = {}

  @visualize.register("_probe", "test-only", flags=(visualize.Flag("level", 3, "n", int),))
  def _probe(config, workdir, args):
    seen.update(args, workdir=workdir)
    return "done.png"

  try:
    assert visualize.run("_probe", None, "/w", out="o.png") == "done.png"
    assert seen == {"level": 3, "out": "o.png", "workdir": "/w"}
    with pytest.raises(ValueError, match="registered twice"):
      visualize.register("_probe", "again")(_probe)
  finally:
    visualize.SUBCOMMANDS.pop("_probe")
  from absl import app

  from sslx.cli import visualize as visualize_command

  with pytest.raises(app.UsageError, match="attention"):
    visualize_command.main(["visualize"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step tiny DINO checkpoint and a 40x30 test image."""
  workdir = tmp_path_factory.mktemp("dino")
  config = tiny_dino(steps=2, batch=16)
  config.evals = {}
  train.train_and_evaluate(config, str(workdir))
  image = workdir / "img.png"
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(image)
  return config, workdir, image


def test_attention_cli_writes_png_of_expected_size(trained, tmp_path):
  _, workdir, image = trained
  out = tmp_path / "attn.png"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslx",
      "visualize",
      "attention",
      "--config=experiments/dino.py:vit",
      *TINY_FLAGS,
      f"--workdir={workdir}",
      f"--image={image}",
      f"--out={out}",
      "--panel=64",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"wrote {out}" in proc.stdout
  assert out.stat().st_size > 0
  with Image.open(out) as png:
    assert png.format == "PNG"
    assert png.size == visualize.figure_size(num_heads=2, panel=64) == (192, 128)
    assert np.asarray(png.convert("RGB")).std() > 0  # not a blank canvas


@pytest.mark.parametrize("backend", ["pil", "matplotlib"])
def test_attention_in_process_both_backends(trained, tmp_path, backend):
  config, workdir, image = trained
  out = visualize.run(
    "attention",
    config,
    str(workdir),
    image=str(image),
    out=str(tmp_path / f"{backend}.png"),
    panel=48,
    backend=backend,
    which="student",
  )
  with Image.open(out) as png:
    assert png.size == visualize.figure_size(2, 48)
    assert np.asarray(png.convert("RGB")).std() > 0


def test_attention_rows_are_cls_to_patch_weights(trained):
  config, workdir, image = trained
  setup, state, step = train.restore_latest(config, str(workdir))
  assert step == 2
  img = visualize.load_image(str(image), 32)
  attn = visualize.cls_attention(setup.method, state, img)
  assert attn.shape == (2, 4, 4)  # heads, 32/8 × 32/8
  assert np.all(attn >= 0) and np.all(attn.reshape(2, -1).sum(1) <= 1 + 1e-5)


def test_attention_of_a_vit_encoder_without_a_teacher():
  """Methods without attention_maps (BYOL, VICReg, SimCLR with a ViT) use their encoder."""
  import jax

  from sslx.methods import byol
  from tests.test_byol import tiny_byol

  config = tiny_byol()
  config.model = {"name": "vit_tiny", "patch_size": 8, "dim": 16, "depth": 2, "num_heads": 2}
  method = byol.create(config, total_steps=3)
  images = np.zeros((2, 32, 32, 3), np.uint8)
  v = method.init(jax.random.PRNGKey(0), images)
  attn = visualize._vit_attention_fn(method, "teacher")(
    v.params, v.batch_stats, v.method_state, images
  )
  assert attn.shape == (2, 2, 17, 17)
  np.testing.assert_allclose(np.asarray(attn).sum(-1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="no ViT encoder"):
    visualize._vit_attention_fn(byol.create(tiny_byol(), total_steps=3), "teacher")


def test_visualizer_modules_become_subcommands(monkeypatch):
  import importlib
  import pkgutil

  try:
    package = importlib.import_module("sslx.visualizers")
  except ImportError:
    pytest.skip("no sslx/visualizers package")
  names = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
  assert names and all(n in visualize.SUBCOMMANDS for n in names)
  module = importlib.import_module(f"sslx.visualizers.{names[0]}")
  calls = []
  monkeypatch.setattr(
    module,
    "render",
    lambda config, workdir, out, num_images=8: (
      calls.append((config, workdir, out, num_images)) or out
    ),
  )
  assert visualize.run(names[0], "cfg", "/w", out="x.png", num_images=3) == "x.png"
  assert calls == [("cfg", "/w", "x.png", 3)]
