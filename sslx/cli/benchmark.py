r"""Times the jitted train step (or the host input pipeline) and prints one JSON line:

    python -m sslx benchmark --config=experiments/simclr.py --config.model.name=resnet18 \
        --config.batch_size=256 --steps=5 [--peer_python=/tmp/torch-peer/bin/python]

The workloads and every figure are described in sslx/benchmark.py.
"""

import json
import os
import statistics
import sys

from absl import app, flags
from ml_collections import config_flags

from sslx import benchmark


def define_flags():
  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
  flags.DEFINE_integer("steps", 5, "timed steps (median reported)")
  flags.DEFINE_enum("workload", "peer", ["peer", "config"], "see module docstring")
  flags.DEFINE_string("peer_python", None, "python of a venv with torch==2.13.0")
  flags.DEFINE_string("peer_script", benchmark.DEFAULT_PEER_SCRIPT, "path of torch_peer.py")
  flags.DEFINE_integer("rounds", 1, "alternating sslx/peer rounds (with --peer_python)")
  flags.DEFINE_integer("threads", 2, "threads given to the peer")
  flags.DEFINE_float("peak_tflops", None, "peak TFLOP/s per device for MFU (overrides table)")
  flags.DEFINE_bool(
    "input_pipeline", False, "also time the host input pipeline (with --steps=0: only that)"
  )
  flags.DEFINE_integer("input_batches", 20, "batches timed by --input_pipeline")
  flags.DEFINE_integer("input_batch_size", 0, "their size (0: batch_size, capped by the data)")
  flags.DEFINE_bool("input_peer", False, "with --input_pipeline --steps=0: also run input_peer.py")
  flags.DEFINE_string("input_peer_script", benchmark.DEFAULT_INPUT_PEER, "path of input_peer.py")
  flags.DEFINE_string("input_peer_python", None, "python for input_peer.py (default: this one)")
  flags.DEFINE_list(
    "mae_mask_ratios",
    [],
    "instead of the SimCLR step: the MAE encoder's "
    "FLOPs and forward+backward time at each mask ratio (e.g. 0,0.75) for "
    "config.model (a ViT) at config.dataset.image_size, batch_size images",
  )
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  config = FLAGS.config
  if FLAGS.mae_mask_ratios:
    print(
      json.dumps(benchmark.time_mae_encoder(config, FLAGS.mae_mask_ratios, FLAGS.steps)), flush=True
    )
    return
  if FLAGS.input_pipeline and FLAGS.steps == 0:
    result = benchmark.input_benchmark(
      config,
      FLAGS.rounds,
      FLAGS.input_batches,
      FLAGS.input_batch_size,
      FLAGS.input_peer_script if FLAGS.input_peer else None,
      FLAGS.input_peer_python,
    )
    print(json.dumps(result), flush=True)
    return
  if FLAGS.workload == "peer":
    config = benchmark.peer_workload(config)
  result = None
  peer_runs, ours = [], []
  for _ in range(max(FLAGS.rounds, 1)):
    result = benchmark.time_sslx(config, FLAGS.steps)
    ours.append(result["images_per_sec"])
    if FLAGS.peer_python:
      peer_runs.append(
        benchmark.time_peer(
          FLAGS.peer_python,
          os.path.abspath(FLAGS.peer_script),
          config.model.name,
          config.batch_size,
          FLAGS.steps,
          FLAGS.threads,
        )["images_per_sec"]
      )
  result["images_per_sec"] = statistics.median(ours)
  for key, flops in (("mfu", "model_flops_per_step"), ("hfu", "flops_per_step")):
    result[key] = benchmark.mfu(
      result[flops],
      result["step_time_s"],
      result["device"],
      result["num_devices"],
      FLAGS.peak_tflops,
    )
  if FLAGS.input_pipeline:
    result.update(benchmark.time_input_pipeline(config))
    # The step consumes batch_size source images per step (2 views each).
    consumed = result["images_per_sec"] / 2
    result["step_source_images_per_sec"] = round(consumed, 1)
    result["input_bound"] = result["input_images_per_sec"] < consumed
  if peer_runs:
    result["torch_images_per_sec"] = statistics.median(peer_runs)
    result["ratio"] = round(statistics.median(o / p for o, p in zip(ours, peer_runs)), 3)
  print(json.dumps(result), flush=True)
  sys.stdout.flush()
