r"""Compile the real train step for a TPU slice or a GPU host and say whether it fits.

    python -m sslx plan --config=experiments/dino.py:imagenet --topology=v4:2x2x2
    python -m sslx plan --config=experiments/mae.py:imagenet --topology=v5e-16 --mfu=0.5
    python -m sslx plan --config=experiments/simclr.py:imagenet --topology=8xH100

Prints per device: parameter, optimizer-state and batch bytes, the compiler's temporary
memory and FLOPs per step; then step time, epoch time and total hours at --mfu of the chip's
peak. When the step does not fit the chip's memory it compiles each knob that could help
(model.dtype, model.remat, an fsdp axis, method.grad_cache_chunk, a smaller batch) and says
which bring it under (--nosuggest skips that). TPU slices need libtpu, not a TPU (see
sslx/planning.py); GPU figures are an estimate from fake CPU devices, labelled as such.
Any --config.<key>=value override applies, as in training. --json=PATH also writes the
figures as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import jax
from absl import flags
from ml_collections import config_flags

# Importing jax (through these) does not start a backend: XLA_FLAGS set below still apply.
from sslx import planning

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file("config", None, "experiment file[:preset]", lock_config=True)
  flags.DEFINE_string("topology", None, "v4:2x2x2, v4-32, v5e:4x4, v5e-16, 8xH100, ...")
  flags.DEFINE_float("mfu", 0.4, "model FLOPs utilisation assumed for the time estimates")
  flags.DEFINE_integer("num_examples", 0, "training-set size (default: known dataset sizes)")
  flags.DEFINE_bool("suggest", True, "when it does not fit, compile each memory knob alone")
  flags.DEFINE_string("json", None, "also write the figures to this JSON file")
  flags.mark_flags_as_required(["config", "topology"])


def prepare_environment(topology: str, env=os.environ) -> None:
  """Before jax starts: compile-only TPU devices need no TPU backend, so the process keeps the
  CPU as its backend (and never opens a local accelerator that a run may be using); a GPU
  estimate needs as many fake CPU devices as GPUs."""
  t = planning.target(topology)
  if not env.get("JAX_PLATFORMS"):
    # jax read the variable when it was imported: set its option, which it reads at start-up
    jax.config.update("jax_platforms", "cpu")
  if t.estimate:
    flag = f"--xla_force_host_platform_device_count={t.num_devices}"
    current = env.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in current:
      env["XLA_FLAGS"] = (current + " " + flag).strip()


def main(argv):
  del argv
  try:
    t = planning.target(FLAGS.topology)
  except ValueError as e:
    sys.exit(f"error: {e}")
  prepare_environment(FLAGS.topology)  # before anything starts a jax backend
  config = FLAGS.config
  num_examples = FLAGS.num_examples or None
  p = planning.plan(config, t, num_examples)
  suggestions = None
  if not p.fits and FLAGS.suggest:
    suggestions = planning.suggest(config, t, num_examples=num_examples)
  print(planning.report(p, FLAGS.mfu, suggestions), flush=True)
  if FLAGS.json:
    out = planning.as_dict(p, FLAGS.mfu)
    out["suggestions"] = [
      {"flag": f, **(planning.as_dict(r, FLAGS.mfu) if isinstance(r, planning.Plan) else {})}
      for f, r in suggestions or []
    ]
    with open(FLAGS.json, "w") as f:
      json.dump(out, f, indent=1)
