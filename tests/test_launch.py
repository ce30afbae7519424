"""Launchers: the TPU VM script's dry run prints the gcloud commands it would run."""

import os
import subprocess

import pytest

from tests.helpers import REPO

SCRIPT = os.path.join(REPO, "launch", "tpu_vm.sh")


def dry_run(*args):
  # --dry-run first: everything after "--" is passed through to sslx.main.
  return subprocess.run(
    ["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True, timeout=60
  )


def test_tpu_vm_dry_run_prints_pack_create_copy_install_and_train_on_all_workers():
  out = dry_run(
    "--name",
    "sslx-t",
    "--zone",
    "us-central2-b",
    "--type",
    "v4-16",
    "--spot",
    "--config",
    "experiments/simclr.py:imagenet",
    "--workdir",
    "gs://bkt/run",
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 5
  assert lines[0].startswith("git -C") and "ls-files" in lines[0]  # tracked files only
  assert lines[1].startswith("gcloud compute tpus tpu-vm create sslx-t")
  assert "--accelerator-type v4-16" in lines[1] and "--spot" in lines[1]
  assert "tpu-vm scp" in lines[2] and "sslx.tgz" in lines[2] and "--recurse" not in lines[2]
  assert "pip" in lines[3] and "tpu" in lines[3] and "--worker=all" in lines[3]
  assert "sslx.main" in lines[4] and "gs://bkt/run" in lines[4] and "--worker=all" in lines[4]


def test_tpu_vm_resume_loop_and_extra_overrides():
  out = dry_run(
    "--name",
    "n",
    "--zone",
    "z",
    "--type",
    "v4-8",
    "--config",
    "experiments/simclr.py",
    "--workdir",
    "gs://b/w",
    "--resume-loop",
    "--",
    "--config.batch_size=1024",
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert "sslx.main" in lines[-2] and "batch_size=1024" in lines[-2]
  assert lines[-1] == "gcloud storage ls gs://b/w/results.json"  # checked here, not on the VM
  assert "--spot" not in out.stdout


def test_tpu_vm_mounts_data_buckets_read_only_on_every_worker(tmp_path):
  """--mount-bucket B: after the install, every worker gets gs://B at /mnt/B through gcsfuse;
  the remote command is run here against stand-in commands that log their arguments."""
  import shlex

  args = ("--name", "n", "--zone", "z", "--type", "v4-8", "--config", "c.py", "--workdir")
  out = dry_run(*args, "gs://b/w", "--mount-bucket", "gs://data", "--mount-bucket", "more")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  mount = [x for x in lines if "gcsfuse" in x]
  assert len(mount) == 1 and "--worker=all" in mount[0]
  assert lines.index(mount[0]) == len(lines) - 2  # after the install, before training
  command = shlex.split(mount[0])[-1]
  stubs = tmp_path / "bin"
  stubs.mkdir()
  for tool in ("sudo", "gcsfuse", "mountpoint", "lsb_release", "curl", "apt-get"):
    status = 1 if tool == "mountpoint" else 0  # nothing mounted yet
    (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/log\nexit {status}\n')
    (stubs / tool).chmod(0o755)
  env = dict(os.environ, PATH=f"{stubs}:/usr/bin:/bin", USER="me")
  done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  log = (tmp_path / "log").read_text().splitlines()
  assert "gcsfuse -o ro --implicit-dirs data /mnt/data" in log
  assert "gcsfuse -o ro --implicit-dirs more /mnt/more" in log
  assert "sudo mkdir -p /mnt/data" in log and "sudo chown me /mnt/data" in log
  assert not any(x.startswith("apt-get") or "apt-get" in x for x in log)  # gcsfuse was there
  folder = dry_run(*args, "gs://b/w", "--mount-bucket", "gs://data/imagenet")
  assert folder.returncode == 2 and "not a folder in it: data/imagenet" in folder.stderr
  upper = dry_run(*args, "gs://b/w", "--mount-bucket", "Data")
  assert upper.returncode == 2 and "--mount-bucket Data: not a bucket name" in upper.stderr


def test_tpu_vm_resume_loop_needs_a_bucket():
  out = dry_run(
    *("--name", "n", "--zone", "z", "--type", "v4-8", "--config", "c.py"),
    *("--workdir", "/tmp/w", "--resume-loop"),
  )
  assert out.returncode == 2 and "gs://" in out.stderr


def test_tpu_vm_resume_loop_recreates_a_preempted_vm_until_results_exist(tmp_path):
  """A stand-in gcloud: the VM is missing, then preempted after the first training command;
  results.json appears after the second."""
  log = tmp_path / "calls"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(
    f"""#!/bin/bash
echo "$*" >> {log}
n_train=$(grep -c 'sslx.main' {log})
case "$*" in
  *" describe "*)
    if grep -q ' create ' {log}; then echo PREEMPTED; else exit 1; fi;;
  *"storage ls"*) [ "$n_train" -ge 2 ] || exit 1;;
  *sslx.main*) [ "$n_train" -ge 2 ] || exit 255;;
esac
"""
  )
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
  out = subprocess.run(
    ["bash", SCRIPT, "--name", "n", "--zone", "z", "--type", "v4-8", "--spot"]
    + ["--config", "experiments/simclr.py", "--workdir", "gs://b/w", "--resume-loop"]
    + ["--poll", "0"],
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert out.returncode == 0, out.stderr
  verbs = []
  for line in log.read_text().splitlines():
    words = line.split()
    verbs.append("train" if "sslx.main" in line else words[3] if words[0] == "compute" else "ls")
  assert verbs == [
    *("describe", "create", "scp", "ssh", "train", "ls"),  # first VM, preempted mid-run
    *("describe", "delete", "create", "scp", "ssh", "train", "ls"),  # re-created, resumed
  ]


@pytest.mark.parametrize("missing", ["--name", "--workdir"])
def test_tpu_vm_missing_argument_is_an_error(missing):
  args = {"--name": "n", "--zone": "z", "--type": "v4-8", "--config": "c.py", "--workdir": "w"}
  del args[missing]
  flat = [x for kv in args.items() for x in kv]
  out = dry_run(*flat)
  assert out.returncode == 2 and f"missing {missing}" in out.stderr


def test_colab_notebook_installs_runs_a_preset_and_plots():
  import json

  nb = json.load(open(os.path.join(REPO, "launch", "colab.ipynb")))
  assert nb["nbformat"] == 4
  code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
  assert "pip install" in code and "sslx.main" in code and "results.json" in code
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":  # each cell is valid Python once IPython magics are removed
      src = "".join(cell["source"])
      lines = [
        (l[: len(l) - len(l.lstrip())] + "pass") if l.lstrip().startswith(("!", "%")) else l
        for l in src.splitlines()
      ]
      compile("\n".join(lines), "<cell>", "exec")


SLURM = os.path.join(REPO, "launch", "slurm.sh")


def slurm_dry_run(*args):
  out = subprocess.run(
    ["bash", SLURM, "--dry-run", *args], capture_output=True, text=True, timeout=60
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == "sbatch"
  return "\n".join(lines[1:]) + "\n"


SLURM_ARGS = (
  "--nodes",
  "2",
  "--gpus-per-node",
  "8",
  "--time",
  "04:00:00",
  "--config",
  "experiments/simclr.py:imagenet",
  "--workdir",
  "gs://bkt/run",
)


def test_slurm_dry_run_prints_a_requeueing_batch_script_one_task_per_gpu():
  script = slurm_dry_run(*SLURM_ARGS, "--partition", "gpu", "--", "--config.batch_size=4096")
  for line in (
    "#SBATCH --nodes=2",
    "#SBATCH --ntasks-per-node=8",
    "#SBATCH --gpus-per-node=8",
    "#SBATCH --time=04:00:00",
    "#SBATCH --requeue",
    "#SBATCH --signal=TERM@180",
    "#SBATCH --partition=gpu",
  ):
    assert line + "\n" in script
  assert "--account" not in script
  srun = next(l for l in script.splitlines() if l.startswith("srun"))
  assert "-m sslx.main --config=experiments/simclr.py:imagenet --workdir=gs://bkt/run" in srun
  assert "--config.batch_size=4096" in srun


@pytest.mark.parametrize("status,requeued", [(75, True), (0, False), (1, False)])
def test_slurm_script_requeues_only_when_sslx_stopped_at_a_checkpoint(tmp_path, status, requeued):
  script = tmp_path / "job.sh"
  script.write_text(slurm_dry_run(*SLURM_ARGS))
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls"
  for tool, body in (("srun", f"exit {status}"), ("scontrol", "")):
    (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n{body}\n')
    (bin_dir / tool).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
  out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == status
  calls = log.read_text().splitlines()
  assert calls[0].startswith("srun --kill-on-bad-exit=1 python -m sslx.main")
  assert ("scontrol requeue 4242" in calls) == requeued
