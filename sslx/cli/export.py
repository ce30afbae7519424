"""Writes a run's evaluated encoder for use outside sslx:

    python -m sslx export --config=experiments/dino.py --workdir=/tmp/dino \\
        --format=timm --out=/tmp/dino_vit.safetensors [--verify --peer_python=/path/bin/python]

--format: timm (ViTs as timm's vit_*, ResNets as timm's resnet*), torchvision (resnet*), or
safetensors (sslx's own parameter names, readable back with --config.init_from=file:PATH).
The preprocessing and the target model's name and constructor arguments go into the file's
metadata and OUT.json. --verify reloads the file with strict=True in an environment with torch
and prints one JSON line with the largest feature difference (max_abs_diff).
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from sslx import export as export_lib
from sslx import weights


def define_flags():
  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory holding checkpoints/")
  flags.DEFINE_enum("format", "safetensors", list(weights.FORMATS), "target layout")
  flags.DEFINE_string("out", None, "output file (safetensors; OUT.json beside it)")
  flags.DEFINE_bool("verify", False, "reload in the target library and compare features")
  flags.DEFINE_string("peer_python", None, "python of an environment with torch + timm/torchvision")
  flags.mark_flags_as_required(["config", "workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    result = export_lib.export_checkpoint(
      f.config, f.workdir, f.format, f.out, f.peer_python, f.verify
    )
  except (weights.NoCounterpart, FileNotFoundError) as e:
    sys.exit(f"error: {e}")  # the user's choice of model/format/workdir: no traceback
  print(json.dumps(result))
