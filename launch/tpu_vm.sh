#!/usr/bin/env bash
# Launches an sslx experiment on a Cloud TPU VM slice: create the VM (optionally spot), copy
# this checkout to every worker, install, and run `python -m sslx.main` on all workers at once.
# JAX's own multi-host runtime connects the workers (jax.distributed.initialize() is called by
# sslx.main when it detects a TPU pod). With --resume-loop the run is restarted after a
# preemption until results.json appears; each restart resumes from the latest checkpoint in the
# (GCS) workdir.
#
#   launch/tpu_vm.sh --name sslx-v4 --zone us-central2-b --type v4-32 --spot \
#       --config experiments/simclr.py:imagenet --workdir gs://BUCKET/simclr-r50 \
#       [--resume-loop] [--dry-run] [-- --config.batch_size=4096 ...]
#
# --dry-run prints every gcloud command instead of running it (tests/test_launch.py checks it).
set -euo pipefail

name="" zone="" type="" config="" workdir="" spot=0 dry=0 resume=0
runtime="tpu-ubuntu2204-base" project="${CLOUDSDK_CORE_PROJECT:-}"
extra=()
usage() { sed -n '2,16p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2;;
    --zone) zone=$2; shift 2;;
    --type) type=$2; shift 2;;
    --config) config=$2; shift 2;;
    --workdir) workdir=$2; shift 2;;
    --runtime) runtime=$2; shift 2;;
    --project) project=$2; shift 2;;
    --spot) spot=1; shift;;
    --resume-loop) resume=1; shift;;
    --dry-run) dry=1; shift;;
    --) shift; extra=("$@"); break;;
    -h|--help) usage;;
    *) echo "unknown option: $1" >&2; usage;;
  esac
done
for v in name zone type config workdir; do
  if [ -z "${!v}" ]; then echo "missing --$v" >&2; usage; fi
done

run() {
  if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
proj=()
[ -n "$project" ] && proj=(--project "$project")

create=(gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$type"
        --version "$runtime" "${proj[@]}")
[ "$spot" = 1 ] && create+=(--spot)
run "${create[@]}"

repo=$(cd "$(dirname "$0")/.." && pwd)
run gcloud compute tpus tpu-vm scp --recurse "$repo" "$name":~/sslx --zone "$zone" --worker=all "${proj[@]}"
run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all "${proj[@]}" \
    --command "cd ~/sslx && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'"

train_cmd="cd ~/sslx && .venv/bin/python -m sslx.main --config=$config --workdir=$workdir"
for e in "${extra[@]}"; do train_cmd+=" $(printf '%q' "$e")"; done
if [ "$resume" = 1 ]; then
  # Preempted spot VMs come back (or are recreated) and the run resumes from its checkpoint.
  loop="for i in \$(seq 1 50); do $train_cmd && break; echo 'run stopped; resuming in 60 s'; sleep 60; done"
  run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all "${proj[@]}" --command "$loop"
else
  run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all "${proj[@]}" --command "$train_cmd"
fi
