"""A training run in its own process, for the signal, kill-and-resume and multi-host tests.

    python -m tests.train_worker WORKDIR '{"total_steps": 40, ...}'

Trains `tests.helpers.tiny_simclr` with the JSON overrides (dotted keys) on a one-device mesh,
or with "mesh": "all" on every device of every process; "tick_seconds" sets how often progress
lines of evaluation print (so that a test can signal in the middle of one). On SIGTERM/SIGINT
it prints one JSON line {"process", "stopped_at"} and exits with the trainer's status (75).
"""

import json
import sys

from sslx import distributed

distributed.maybe_initialize()

import jax  # noqa: E402

from sslx import preemption, progress, train  # noqa: E402
from tests.helpers import tiny_simclr  # noqa: E402


def main(workdir: str, overrides: str) -> int:
  settings = json.loads(overrides)
  mesh = settings.pop("mesh", None)
  progress.TICK_SECONDS = settings.pop("tick_seconds", progress.TICK_SECONDS)
  config = tiny_simclr(**settings)
  if mesh == "all":
    config.mesh = (("data", -1),)
  try:
    train.train_and_evaluate(config, workdir)
  except preemption.Preempted as e:
    print(json.dumps({"process": jax.process_index(), "stopped_at": e.step}), flush=True)
    raise
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"))
