#!/usr/bin/env bash
# Runs one experiment locally, resuming from the latest checkpoint in the workdir if the run
# was interrupted (Ctrl-C saves one; a crash loses at most checkpoint_every_steps steps).
#
#   launch/local.sh experiments/simclr.py:cpu /tmp/sslx-demo [--config.key=value ...]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 EXPERIMENT[:PRESET] WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
python=${PYTHON:-python}
exec "$python" -m sslx.main --config="$config" --workdir="$workdir" "$@"
