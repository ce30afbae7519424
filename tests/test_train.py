"""The trainer end to end on the embedded dataset with a tiny CNN."""

import json
import os
import re

import jax
import numpy as np
import pytest

from sslx import checkpointing, data, losses, train
from tests.helpers import assert_learns, crash_mid_run, run_module, tiny_simclr


def final_state(config, workdir):
  mngr = checkpointing.manager(workdir, async_save=False)
  step = mngr.latest_step()
  source = data.build_source(config.dataset, "train")
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(config, sample, len(source), source.num_classes)
  state, data_state = checkpointing.restore(mngr, step, train.create_state(setup, 0, sample))
  return step, jax.device_get(state), data_state


def test_short_run_learns_and_writes_everything(tmp_path):
  config = tiny_simclr(steps=24, batch=64, **{"optimizer.base_lr": 3e-3})
  # 24 steps cut the held-out NT-Xent by 0.331 (seed 0); half of it is asked.
  results = assert_learns(config, tmp_path, margin=0.16, measured=0.331)
  assert 10.0 < results["knn@5"] <= 100.0
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["steps"] == 24 and saved["knn@5"] == results["knn@5"]
  assert saved["train_images_per_sec"] > 0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert checkpointing.manager(str(tmp_path)).latest_step() == 24


def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch):
  config = tiny_simclr(steps=6, evals={})
  train.train_and_evaluate(config, str(tmp_path / "straight"))

  # Crash after 4 steps (a checkpoint exists at step 3), then run again.
  crash_mid_run(config, str(tmp_path / "resumed"), monkeypatch)
  assert checkpointing.manager(str(tmp_path / "resumed")).latest_step() == 3
  train.train_and_evaluate(config, str(tmp_path / "resumed"))

  step_a, a, data_a = final_state(config, str(tmp_path / "straight"))
  step_b, b, data_b = final_state(config, str(tmp_path / "resumed"))
  assert step_a == step_b == 6
  assert data_a == data_b
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  config = tiny_simclr(steps=3, evals={})
  train.train_and_evaluate(config, str(tmp_path))
  _, good, _ = final_state(config, str(tmp_path))

  real = losses.nt_xent
  monkeypatch.setattr(losses, "nt_xent", lambda z, t: (real(z, t)[0] * np.nan, real(z, t)[1]))
  config.total_steps = 9
  with pytest.raises(train.NonFiniteLoss, match="non-finite loss at step 4"):
    train.train_and_evaluate(config, str(tmp_path))
  step, after, _ = final_state(config, str(tmp_path))
  assert step == 3
  for x, y in zip(jax.tree.leaves(good), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_workdir_of_another_model_is_refused(tmp_path):
  train.train_and_evaluate(tiny_simclr(steps=3, evals={}), str(tmp_path))
  other = tiny_simclr(steps=3, evals={})
  other.model = {"name": "resnet18", "stem": "cifar"}
  with pytest.raises(checkpointing.IncompatibleCheckpoint, match="model='convnet'"):
    train.train_and_evaluate(other, str(tmp_path))


def test_checkpoint_of_another_width_is_refused_naming_the_shapes(tmp_path):
  train.train_and_evaluate(tiny_simclr(steps=3, evals={}), str(tmp_path))
  wider = tiny_simclr(steps=3, evals={}, **{"model.widths": (8, 24)})
  with pytest.raises(checkpointing.IncompatibleCheckpoint, match=r"\(step 3\) does not fit") as e:
    train.restore_latest(wider, str(tmp_path))
  message = str(e.value)
  assert "config.json" in message and "strict" not in message  # not orbax's truncation hint
  # named before any array is read: the last stage's bias, 16 wide there and 24 here
  assert re.search(r"params\.model\.\S*bias is \(16,\) there, \(24,\) here", message), message
  with pytest.raises(checkpointing.IncompatibleCheckpoint, match=r"bias is \(16,\) there"):
    train.train_and_evaluate(wider, str(tmp_path))  # a resume is refused alike


def test_a_vit_evaluates_at_another_crop_size_with_its_position_embedding_resampled(tmp_path):
  """A ViT run evaluated with a config whose crops (and images) are larger than the run's: the
  stored 4x4 position embedding is read as it is, not refused for the 6x6 grid the config
  would initialise, and the ViT resamples it to the 48 px images' grid."""
  from sslx import config_lib
  from sslx.cli import evaluate
  from tests.helpers import experiment

  config = config_lib.tiny(experiment("dino", "vit"), None)
  train.train_and_evaluate(config, str(tmp_path))
  _, trained, _ = train.restore_latest(config, str(tmp_path))
  larger = config_lib.tiny(experiment("dino", "vit"), None)
  larger.augment.global_crop_size = 48
  larger.dataset.image_size = 48
  setup, state, _ = train.restore_latest(larger, str(tmp_path))
  assert setup.abstract_state.params["model"]["backbone"]["pos_embed"].shape == (1, 36, 32)
  for x, y in zip(jax.tree.leaves(trained.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # the run's weights, all of them
  images = data.build_source(larger.dataset, "test")[0]["image"][None]
  assert images.shape == (1, 48, 48, 3)
  params, batch_stats = setup.method.eval_variables(
    state.params["model"], state.batch_stats, state.method_state
  )
  features = setup.method.encode(params, batch_stats, np.repeat(images, 2, 0))
  assert features.shape == (2, 32) and np.isfinite(np.asarray(features)).all()
  assert "knn@5" in evaluate.evaluate_checkpoint(larger, str(tmp_path))
  # Fine-tuned at 48 px, the embedding is resampled once to the 6x6 grid and trained there.
  from sslx.evaluation import finetune
  from sslx.models import vit

  pixels = data.build_source(larger.dataset, "train")
  x = np.stack([pixels[i]["image"] for i in range(32)])
  y = np.asarray(pixels.labels[:32])
  ctx = finetune.Context(setup.method, params, batch_stats, x, y, x[:16], y[:16], 10)
  _, tuned = finetune.finetune(ctx, dict(steps=1, batch_size=16, lr=0.0))
  stored = params["backbone"]["pos_embed"]
  np.testing.assert_allclose(
    tuned["model"]["backbone"]["pos_embed"],
    vit.resize_pos_embed(stored.reshape(4, 4, 32), (6, 6)).reshape(1, 36, 32),
    atol=1e-6,
  )


def test_a_run_evaluates_on_a_dataset_with_other_classes(tmp_path):
  # Pretrained on the embedded 10-class subset, evaluated on a 3-class folder: the online
  # probe (16 x 10 in the checkpoint) and the optimizer's state are not read, the encoder is.
  from PIL import Image

  from sslx.cli import evaluate, finetune

  config = tiny_simclr(steps=3, evals={})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  rng = np.random.default_rng(0)
  for split, n in (("train", 30), ("test", 12)):
    for k in range(n):
      d = tmp_path / "folder" / split / f"c{k % 3}"
      d.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(d / f"{k:02d}.jpg")
  other = tiny_simclr(steps=3, **{"dataset.name": "image_folder"})
  other.dataset.path = str(tmp_path / "folder")
  other.evals = {"knn": {"ks": (5,), "temperature": 0.07}}
  setup, state, step = train.restore_latest(other, str(tmp_path / "run"))
  assert step == 3 and setup.num_classes == 3
  assert set(state.params) == {"model"} and state.opt_state is None
  _, stored, _ = final_state(config, str(tmp_path / "run"))
  for x, y in zip(jax.tree.leaves(stored.params["model"]), jax.tree.leaves(state.params["model"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  results = evaluate.evaluate_checkpoint(other, str(tmp_path / "run"))
  assert 0.0 <= results["knn@5"] <= 100.0
  # Kept apart from the run's own figures (which the report shows), under the folder's label.
  saved = json.load(open(tmp_path / "run" / "results.json"))
  label = f"image_folder {tmp_path / 'folder'} (test, 32 px)"
  assert "evaluate" not in saved and list(saved["transfer"]) == [label]
  assert saved["transfer"][label]["evaluate"] == dict(results, step=3)
  # Fine-tuning on it likewise: a 3-way head, the figures beside the evaluation's.
  tuned = finetune.finetune_checkpoint(
    other, str(tmp_path / "run"), cfg={"steps": 2, "batch_size": 8}
  )
  saved = json.load(open(tmp_path / "run" / "results.json"))
  assert "finetune" not in saved and saved["transfer"][label]["finetune_step"] == 3
  assert saved["transfer"][label]["finetune"] == tuned["finetune"]


@pytest.mark.parametrize(
  "key,value,expected",
  [
    ("method.name", "simclrr", "method.name='simclrr' is not valid; valid choices: \\["),
    ("model.name", "resnet19", "model.name='resnet19' is not valid"),
    ("dataset.name", "imagenette", "dataset.name='imagenette' is not valid"),
    ("optimizer.name", "adam", "optimizer.name='adam' is not valid"),
  ],
)
def test_unknown_names_fail_before_any_work(tmp_path, key, value, expected):
  config = tiny_simclr(**{key: value})
  with pytest.raises(ValueError, match=expected):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def run_main(*args):
  return run_module("sslx.main", *args)


def test_config_typo_on_the_command_line_names_the_key(tmp_path):
  out = run_main(
    "--config=experiments/simclr.py", "--config.optimizr.name=sgd", f"--workdir={tmp_path}"
  )
  assert out.returncode != 0
  assert "unknown config key 'optimizr'" in out.stderr and "optimizer" in out.stderr
  assert not os.listdir(tmp_path)


def test_batch_not_divisible_by_devices_is_refused(tmp_path):
  config = tiny_simclr(batch=30)  # the suite runs on 8 fake devices
  config.mesh = [("data", 8)]
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    train.train_and_evaluate(config, str(tmp_path))
