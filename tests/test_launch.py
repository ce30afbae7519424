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


def test_tpu_vm_dry_run_prints_create_copy_install_and_train_on_all_workers():
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
  assert len(lines) == 4
  assert lines[0].startswith("gcloud compute tpus tpu-vm create sslx-t")
  assert "--accelerator-type v4-16" in lines[0] and "--spot" in lines[0]
  assert "tpu-vm scp" in lines[1] and "--worker=all" in lines[1]
  assert "pip" in lines[2] and "--worker=all" in lines[2]
  assert "sslx.main" in lines[3] and "gs://bkt/run" in lines[3] and "--worker=all" in lines[3]
  assert "seq" not in lines[3]  # no resume loop unless asked


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
  last = out.stdout.strip().splitlines()[-1]
  assert "seq" in last and "break" in last and "batch_size=1024" in last
  assert "--spot" not in out.stdout


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
