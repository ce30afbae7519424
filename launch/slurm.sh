#!/usr/bin/env bash
# Submits an sslx experiment to SLURM: N nodes x G GPUs, one process per GPU (srun), joined by
# JAX's own SLURM detection (jax.distributed.initialize() reads SLURM_* variables). The job
# requeues itself until the run is finished:
#   * time limit: --signal=TERM@<grace> makes SLURM send SIGTERM to the tasks <grace> seconds
#     before the limit; sslx saves the step it is at and exits 75, and the job requeues itself;
#   * preemption (PreemptMode=REQUEUE): SLURM sends SIGTERM, sslx saves and exits 75, SLURM
#     requeues the job (--requeue). Each start resumes from the workdir's latest checkpoint.
#
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 --time 24:00:00 [--partition P] [--account A] \
#       --config experiments/simclr.py:imagenet --workdir /shared/runs/simclr-r50 \
#       [--grace 180] [--dry-run] [-- --config.batch_size=4096 ...]
#
# --dry-run prints the sbatch command and the batch script instead of submitting it
# (tests/test_launch.py checks it and runs the script with stand-ins for srun and scontrol).
# PYTHON (default: python) is the interpreter on the compute nodes, with sslx installed.
set -euo pipefail

nodes="" gpus="" time_limit="24:00:00" partition="" account="" config="" workdir="" dry=0
grace=180 name="sslx"
extra=()
usage() { sed -n '2,18p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2;;
    --gpus-per-node) gpus=$2; shift 2;;
    --time) time_limit=$2; shift 2;;
    --partition) partition=$2; shift 2;;
    --account) account=$2; shift 2;;
    --config) config=$2; shift 2;;
    --workdir) workdir=$2; shift 2;;
    --grace) grace=$2; shift 2;;
    --job-name) name=$2; shift 2;;
    --dry-run) dry=1; shift;;
    --) shift; extra=("$@"); break;;
    -h|--help) usage;;
    *) echo "unknown option: $1" >&2; usage;;
  esac
done
for v in nodes gpus config workdir; do
  if [ -z "${!v}" ]; then echo "missing --${v/gpus/gpus-per-node}" >&2; usage; fi
done

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
train=("$python" -m sslx.main "--config=$config" "--workdir=$workdir" "${extra[@]}")
printf -v train_q '%q ' "${train[@]}"
printf -v workdir_q '%q' "$workdir"

script=$(cat <<EOF
#!/usr/bin/env bash
#SBATCH --job-name=$name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gpus-per-node=$gpus
#SBATCH --time=$time_limit
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=TERM@$grace
${partition:+#SBATCH --partition=$partition}
${account:+#SBATCH --account=$account}
# sslx exits 75 after saving a checkpoint on SIGTERM: requeue and resume from the workdir.
cd $(printf '%q' "$repo")
trap 'echo "SIGTERM: the tasks are saving a checkpoint"' TERM
srun --kill-on-bad-exit=1 $train_q &
pid=\$!
rc=0
while true; do
  wait "\$pid" && rc=0 || rc=\$?
  kill -0 "\$pid" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
done
if [ "\$rc" = 75 ]; then
  echo "sslx stopped at a checkpoint (exit 75): requeueing job \$SLURM_JOB_ID to resume $workdir_q"
  scontrol requeue "\$SLURM_JOB_ID" || true  # SLURM may already be requeueing a preempted job
fi
exit "\$rc"
EOF
)
script=$(printf '%s\n' "$script" | sed '/^$/d')

if [ "$dry" = 1 ]; then
  echo "sbatch"
  printf '%s\n' "$script"
else
  printf '%s\n' "$script" | sbatch
fi
