"""Fail before work: a missing evaluation split, an unwritable workdir."""

import json

import numpy as np
import pytest
from PIL import Image

from sslx import checkpointing, paths, train
from tests.helpers import tiny_simclr


@pytest.fixture
def train_only_folder(tmp_path):
  """An ImageFolder dataset with a train split and no test split."""
  root = tmp_path / "data"
  rng = np.random.default_rng(0)
  for c in ("a", "b"):
    (root / "train" / c).mkdir(parents=True)
    for i in range(20):
      Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
        root / "train" / c / f"{i}.png"
      )
  return root


def folder_config(path, **overrides):
  config = tiny_simclr(steps=2, batch=16, **overrides)
  config.dataset.name = "image_folder"
  config.dataset.path = str(path)
  return config


def test_missing_eval_split_fails_at_start_naming_split_and_path(train_only_folder, tmp_path):
  config = folder_config(train_only_folder)
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(e.value)
  assert "evaluation split 'test'" in message and str(train_only_folder) in message
  assert "config.evals" in message  # says how to train without evaluation
  assert checkpointing.manager(str(tmp_path / "run")).latest_step() is None  # no step ran


def test_without_evaluation_the_run_trains_and_says_nothing_was_evaluated(
  train_only_folder, tmp_path
):
  config = folder_config(train_only_folder, evals={})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  results = json.load(open(tmp_path / "run" / "results.json"))
  assert results["steps"] == 2 and results["evaluation"] == "none: config.evals is empty"
  assert not any(k.startswith("knn") for k in results)


def test_unwritable_workdir_fails_at_start_naming_it(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(paths.StorageError, match=f"cannot write to the workdir '{blocker}/run'"):
    train.train_and_evaluate(tiny_simclr(steps=2), str(blocker / "run"))
