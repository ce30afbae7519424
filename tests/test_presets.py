"""Every experiment's presets load, validate and build their method (no training)."""

import os

import pytest

from sslx import config_lib, methods, multicrop
from sslx.methods import base
from tests.helpers import REPO, experiment

NAMES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith(".py"))
# Pretext tasks are CPU/CIFAR-scale recipes: they declare no imagenet preset.
NO_IMAGENET = {"colorization", "context_encoder", "jigsaw", "relative_patch", "rotation"}


@pytest.mark.parametrize("preset", ["cpu", "cifar10", "imagenet", "tiny"])
@pytest.mark.parametrize("name", NAMES)
def test_every_preset_validates_and_builds_its_method(name, preset):
  if preset == "imagenet" and name in NO_IMAGENET:
    with pytest.raises(ValueError, match="unknown preset"):
      experiment(name, preset)
    return
  c = experiment(name, preset)
  config_lib.validate(c)
  if c.method.name == "beit":  # stage two reads a trained tokenizer and says where it looked
    c.method.tokenizer_workdir = "/nonexistent/beit-tok"
    with pytest.raises(FileNotFoundError, match="tokenizer_workdir='/nonexistent/beit-tok'"):
      methods.get("beit").create(c, total_steps=10)
    return
  method = methods.get(c.method.name).create(c, total_steps=10)
  assert isinstance(method, base.Method)
  views = getattr(method, "views", None)
  if isinstance(views, multicrop.MultiCrop):  # BYOL, VICReg, DINO, DINOv2: two global views
    assert views.num_global == 2
  assert experiment(name, f"{preset},steps=7").total_steps == 7


PAPER_PRESETS = [
  (name, preset)
  for name in NAMES
  for preset in ("cifar10", "imagenet")
  if not (preset == "imagenet" and name in NO_IMAGENET)
]


@pytest.mark.parametrize("name,preset", PAPER_PRESETS)
def test_paper_presets_train_their_views_at_the_evaluated_resolution(name, preset):
  # The cpu demos may crop smaller views than the images they are evaluated on (SimCLR's
  # 24 px views of 32 px images); the papers' presets derive from them and must not inherit it.
  c = experiment(name, preset)
  view = c.augment.get("crop_size") or c.augment.get("global_crop_size")
  assert view == c.dataset.image_size, (name, preset, view, c.dataset.image_size)
