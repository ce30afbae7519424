"""Entry points: benchmark, evaluate, experiment presets."""

import json
import os
import re

import pytest

from sslx import benchmark, train, xla
from sslx.cli import evaluate
from tests.helpers import experiment, override, run_benchmark, run_module, tiny_simclr


def test_preset_arguments_and_bad_preset():
  assert experiment("simclr", "cpu,steps=7").total_steps == 7
  with pytest.raises(ValueError, match="unknown preset"):
    experiment("simclr", "tpu")
  with pytest.raises(ValueError, match="config argument 'stepz' is unknown"):
    experiment("simclr", "cpu,stepz=7")


def test_benchmark_peer_workload_matches_the_torch_peer():
  c = benchmark.peer_workload(experiment("simclr"))
  assert c.method.temperature == 0.5 and c.method.projector_hidden == (2048,)
  assert c.optimizer.name == "sgd" and c.optimizer.base_lr == 0.3
  assert c.optimizer.weight_decay == 1e-6 and not c.augment.enabled
  assert not c.online_probe.enabled
  assert c.model.to_dict() == {"name": "convnet"}  # the demo's widths are not carried over


def test_benchmark_times_the_step_and_prints_json():
  result = run_benchmark(
    "--config=experiments/simclr.py",
    "--config.model.widths=(8,16)",
    "--config.batch_size=16",
    "--steps=2",
    "--workload=config",
    "--input_pipeline",
    "--peak_tflops=0.05",
  )
  for key in ("images_per_sec", "step_time_s", "compile_s", "peak_memory_mb"):
    assert result[key] > 0, key
  # An sslx command on the CPU keeps a preloaded allocator, else restarts itself with tcmalloc
  # where it is installed.
  expected = xla.allocator() or xla.fast_malloc({**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result["allocator"] == expected, result
  assert result["images_per_sec"] == pytest.approx(32 / result["step_time_s"], rel=1e-2)
  # MFU from the model's matmul FLOPs, hardware utilisation from XLA's count of the compiled
  # step, both over the given peak; the input pipeline's own rate.
  assert result["flops_per_step"] > 0
  peak = 0.05e12 * result["num_devices"] * result["step_time_s"]
  assert result["mfu"] == pytest.approx(result["model_flops_per_step"] / peak, rel=1e-6)
  assert result["hfu"] == pytest.approx(result["flops_per_step"] / peak, rel=1e-6)
  # the convnet's convolutions and projector matmuls, forward and backward: most of what the
  # compiled step computes, but neither the augmentation nor the elementwise work
  assert 0.3 * result["flops_per_step"] < result["model_flops_per_step"]
  assert result["input_images_per_sec"] > 0 and isinstance(result["input_bound"], bool)


def test_benchmark_reports_mae_encoder_asymmetry():
  result = run_benchmark(
    "--config=experiments/mae.py",
    "--config.model.dim=32",
    "--config.model.depth=2",
    "--config.model.num_heads=2",
    "--config.batch_size=8",
    "--steps=1",
    "--mae_mask_ratios=0,0.75",
  )
  # 32 px / patch 4: 64 patches; at 0.75 the encoder sees 16 of them plus CLS.
  assert result["ratios"]["0"]["seq_len"] == 65 and result["ratios"]["0.75"]["seq_len"] == 17
  assert result["flops_reduction"] > 3.0 and result["ratios"]["0.75"]["step_s"] > 0
  assert result["speedup"] > 0


def test_mfu_table_and_unknown_devices():
  assert benchmark.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert benchmark.peak_flops("cpu") is None
  assert benchmark.mfu(1e12, 1.0, "cpu", 1) is None
  assert benchmark.mfu(989e12 / 2, 1.0, "NVIDIA H100 80GB HBM3", 1) == pytest.approx(0.5)


def test_evaluate_reruns_evals_on_a_checkpoint(tmp_path):
  config = tiny_simclr(steps=3)
  trained = train.train_and_evaluate(config, str(tmp_path))
  again = evaluate.evaluate_checkpoint(config, str(tmp_path))
  assert again["knn@5"] == pytest.approx(trained["knn@5"])
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["evaluate"]["step"] == 3


def test_evaluate_without_checkpoint_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    evaluate.evaluate_checkpoint(tiny_simclr(), str(tmp_path))


def test_cifar10_preset_reads_the_shared_archives_per_split(shared_cifar):
  from sslx import data

  c = experiment("simclr", "cifar10")
  c.dataset.path = shared_cifar + "/cifar10-{split}.tar.gz"
  train_source = data.build_source(c.dataset, c.dataset.train_split)
  test_source = data.build_source(c.dataset, c.dataset.eval_split)
  assert (len(train_source), len(test_source)) == (50_000, 10_000)
  assert train_source.class_names == test_source.class_names
  assert train_source[0]["image"].shape == (32, 32, 3)


def test_sslx_command_dispatcher_lists_commands_and_refuses_unknown_ones():
  def run(*args):
    return run_module("sslx", *args, timeout=120)

  listing = run()
  assert listing.returncode != 0 and "usage: python -m sslx COMMAND" in listing.stderr
  for command in ("train", "evaluate", "embed", "visualize", "report", "sweep", "simulate"):
    assert command in listing.stderr
  wrong = run("trian")
  assert wrong.returncode != 0 and "unknown command 'trian'" in wrong.stderr
  helped = run("report", "--help")  # the command's docstring and its own flags
  assert "python -m sslx report --workdirs" in helped.stdout and "--[no]chart" in helped.stdout


def test_a_refused_input_prints_its_message_not_a_traceback(tmp_path):
  """sslx's own checks end a command with their one-line message and where they were raised;
  SSLX_TRACEBACK=1 (or --verbosity) shows the traceback; errors from other code keep theirs."""
  import numpy as np

  from sslx import cli, config_lib

  def run(*args, **env):
    return run_module("sslx", *args, timeout=120, **env)

  missing = ["prepare", f"--src={tmp_path / 'nowhere'}", f"--out={tmp_path / 'out'}"]
  short = run(*missing)
  assert short.returncode == 1 and "Traceback" not in short.stderr
  assert re.fullmatch(
    r"error: dataset path does not exist: \S+/nowhere\n"
    r"\(raised at sslx/paths\.py:\d+; SSLX_TRACEBACK=1 shows the whole traceback\)",
    short.stderr.strip(),
  ), short.stderr
  whole = run(*missing, SSLX_TRACEBACK="1")
  assert whole.returncode == 1 and "Traceback (most recent call last)" in whole.stderr
  assert whole.stderr.strip().endswith(f"dataset path does not exist: {tmp_path / 'nowhere'}")
  with pytest.raises(ValueError) as numpy_error:
    np.zeros(-1)
  assert cli.raised_at(numpy_error.value) is None  # numpy's own error: its traceback is kept
  import jax
  import jax.numpy as jnp

  from sslx import losses

  with pytest.raises(ValueError) as jax_error:  # raised in jax under sslx's frames
    jax.jit(losses.softmax_cross_entropy)(jnp.zeros((4, 3)), jnp.zeros((5,), jnp.int32))
  assert cli.raised_at(jax_error.value) is None
  with pytest.raises(ValueError, match="batch_size=0 must be positive") as check:
    config_lib.validate(override(tiny_simclr(), batch_size=0))
  assert re.fullmatch(r"raised at sslx/config_lib\.py:\d+", cli.raised_at(check.value))
