#!/usr/bin/env bash
# Launches an sslx experiment on a Cloud TPU VM slice from YOUR machine (or Cloud Shell): create
# the VM (optionally spot), copy this checkout's tracked files to every worker, install, and run
# `python -m sslx.main` on all workers at once (JAX's multi-host runtime joins them).
#
# With --resume-loop this script stays in charge until the run is finished: after the training
# command returns without results.json in the (gs://) workdir, it looks at the VM; a preempted,
# stopped or deleted VM is deleted and created again, the code re-copied and re-installed, and
# the run resumes from the workdir's latest checkpoint. The loop runs here, not on the VM, so a
# preemption cannot kill it. (Plain re-creation, not queued resources: one gcloud command set.)
#
#   launch/tpu_vm.sh --name sslx-v4 --zone us-central2-b --type v4-32 --spot \
#       --config experiments/simclr.py:imagenet --workdir gs://BUCKET/simclr-r50 \
#       [--mount-bucket DATA_BUCKET] [--resume-loop] [--max-restarts 50] [--poll 60] \
#       [--dry-run] [-- --config.batch_size=4096]
#
# --mount-bucket B (repeatable) mounts gs://B read-only at /mnt/B on every worker with gcsfuse
# (installed from Google's apt repository), e.g. for ArrayRecord shards that `python -m sslx
# prepare --out=gs://B/imagenet-ar` wrote: -- --config.dataset.path=/mnt/B/imagenet-ar
# (the reader opens files; a worker's boot disk is too small to copy ImageNet onto).
#
# --dry-run prints every gcloud command instead of running it (as if the VM did not exist and
# the run finished at the first try); tests/test_launch.py checks it, and runs the loop against
# a stand-in gcloud that preempts the first VM.
set -euo pipefail

name="" zone="" type="" config="" workdir="" spot=0 dry=0 resume=0 max_restarts=50 poll=60
runtime="tpu-ubuntu2204-base" project="${CLOUDSDK_CORE_PROJECT:-}"
extra=() buckets=()
usage() { sed -n '2,25p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2;;
    --zone) zone=$2; shift 2;;
    --type) type=$2; shift 2;;
    --config) config=$2; shift 2;;
    --workdir) workdir=$2; shift 2;;
    --runtime) runtime=$2; shift 2;;
    --mount-bucket) buckets+=("${2#gs://}"); shift 2;;
    --project) project=$2; shift 2;;
    --max-restarts) max_restarts=$2; shift 2;;
    --poll) poll=$2; shift 2;;
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
for b in "${buckets[@]}"; do
  if [[ "$b" == */* ]]; then
    echo "--mount-bucket takes a bucket (B or gs://B), not a folder in it: $b" >&2
    exit 2
  elif [[ ! "$b" =~ ^[a-z0-9][a-z0-9._-]*$ ]]; then
    echo "--mount-bucket $b: not a bucket name (lowercase letters, digits, - _ .)" >&2
    exit 2
  fi
done
if [ "$resume" = 1 ] && [[ "$workdir" != gs://* ]]; then
  echo "--resume-loop needs a gs:// workdir (a VM's local disk goes with the VM)" >&2
  exit 2
fi

run() {
  if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
proj=()
[ -n "$project" ] && proj=(--project "$project")
where=(--zone "$zone" "${proj[@]}")

repo=$(cd "$(dirname "$0")/.." && pwd)
bundle=$(mktemp -d)/sslx.tgz
trap 'rm -rf "$(dirname "$bundle")"' EXIT

# Only tracked files (as they are in the working tree): no .venv/, workdirs or caches.
pack() {
  if [ "$dry" = 1 ]; then
    echo "git -C $(printf '%q' "$repo") ls-files -z | tar --null -czf $bundle -C $(printf '%q' "$repo") -T -"
  else
    git -C "$repo" ls-files -z | tar --null -czf "$bundle" -C "$repo" -T -
  fi
}

vm_state() {  # READY, PREEMPTED, STOPPED, CREATING, ... or MISSING
  if [ "$dry" = 1 ]; then echo MISSING; return; fi
  gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null \
    || echo MISSING
}

create() {
  local cmd=(gcloud compute tpus tpu-vm create "$name" --accelerator-type "$type"
             --version "$runtime" "${where[@]}")
  [ "$spot" = 1 ] && cmd+=(--spot)
  run "${cmd[@]}"
}

install() {
  run gcloud compute tpus tpu-vm scp "$bundle" "$name":sslx.tgz --worker=all "${where[@]}"
  run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" --command \
    "rm -rf ~/sslx && mkdir -p ~/sslx && tar xzf ~/sslx.tgz -C ~/sslx && cd ~/sslx && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
  if [ "${#buckets[@]}" -gt 0 ]; then
    local mount="set -e; if ! command -v gcsfuse >/dev/null; then"
    mount+=" echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null;"
    mount+=" curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null;"
    mount+=" sudo apt-get update -qq && sudo apt-get install -y -qq fuse gcsfuse; fi"
    for b in "${buckets[@]}"; do
      mount+="; sudo mkdir -p /mnt/$b && sudo chown \$USER /mnt/$b"
      mount+=" && (mountpoint -q /mnt/$b || gcsfuse -o ro --implicit-dirs $b /mnt/$b)"
    done
    run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" --command "$mount"
  fi
}

train() {
  local cmd="cd ~/sslx && .venv/bin/python -m sslx.main --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")"
  for e in "${extra[@]}"; do cmd+=" $(printf '%q' "$e")"; done
  run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" --command "$cmd"
}

finished() {  # results.json in the workdir: the run trained and evaluated to the end
  if [ "$dry" = 1 ]; then run gcloud storage ls "$workdir/results.json"; return 0; fi
  gcloud storage ls "$workdir/results.json" >/dev/null 2>&1
}

pack
if [ "$resume" = 0 ]; then
  create
  install
  train
  exit
fi

for attempt in $(seq 0 "$max_restarts"); do
  state=$(vm_state)
  while [ "$state" = CREATING ] || [ "$state" = STARTING ] || [ "$state" = RESTARTING ]; do
    sleep "$poll"; state=$(vm_state)
  done
  if [ "$state" != READY ] && [ "$state" != MISSING ]; then
    echo "VM $name is $state: deleting it to create it again" >&2
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
    state=MISSING
  fi
  if [ "$state" = MISSING ]; then
    create
  fi
  if [ "$state" = MISSING ] || [ "$attempt" = 0 ]; then
    install  # a new VM (or the first try on an existing one) gets this checkout
  fi
  status=0
  train || status=$?
  if finished; then
    echo "run finished: $workdir/results.json" >&2
    exit 0
  fi
  echo "training stopped (status $status, attempt $attempt) without results.json: resuming" >&2
  [ "$dry" = 1 ] || sleep "$poll"
done
echo "gave up after $max_restarts restarts; the run resumes from $workdir when launched again" >&2
exit 1
