"""gs:// workdirs against a real GCS JSON API on loopback (the gcp-storage-emulator package):
a run killed with SIGKILL resumes from the bucket and ends as an uninterrupted local run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, tiny_simclr
from tests.test_preemption import assert_same_state, start_worker, wait_for_line

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("gcsfs")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def gcs_env(url: str) -> dict:
  """The environment of a process that talks to the emulator at `url` and nowhere else."""
  return dict(
    os.environ,
    STORAGE_EMULATOR_HOST=url,
    # Google's auth libraries probe the GCE metadata server when no credentials are found:
    # point them at a closed loopback port so nothing leaves this machine.
    GCE_METADATA_HOST="127.0.0.1:9",
    GCE_METADATA_IP="127.0.0.1:9",
    GCE_METADATA_ROOT="127.0.0.1:9",
    NO_GCE_CHECK="true",
    PYTHONPATH=REPO,
  )


@pytest.fixture(scope="module")
def gcs():
  """The emulator on a free loopback port with one bucket, "bucket"; yields its URL."""
  port = free_port()
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "tests.gcs_emulator",
      "start",
      "--host",
      "127.0.0.1",
      "--port",
      str(port),
      "--default-bucket",
      "bucket",
    ]
    + ["--in-memory", "--quiet"],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  t0 = time.monotonic()
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert proc.poll() is None and time.monotonic() - t0 < 60, "emulator did not start"
      time.sleep(0.2)
  yield f"http://127.0.0.1:{port}"
  proc.send_signal(signal.SIGTERM)
  try:
    proc.wait(timeout=10)
  except subprocess.TimeoutExpired:
    proc.kill()


def in_subprocess(env, code: str) -> str:
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_workdir_url_with_unreachable_bucket_fails_at_start_naming_it(gcs, tmp_path):
  code = (
    "from sslx import paths\n"
    "try:\n"
    "  paths.check_writable('gs://no-such-bucket/run')\n"
    "except paths.StorageError as e:\n"
    "  print(e)\n"
  )
  out = in_subprocess(gcs_env(gcs), code)
  assert "gs://no-such-bucket/run" in out and "cannot write to the workdir" in out


@pytest.mark.slow
def test_gs_workdir_killed_mid_run_resumes_from_bucket_and_equals_local_run(gcs, tmp_path):
  env = gcs_env(gcs)
  settings = {"steps": 24, "log_every_steps": 1, "checkpoint_every_steps": 4}
  local = start_worker(tmp_path / "local", settings)
  _, err = local.communicate(timeout=600)
  assert local.returncode == 0, err[-3000:]

  url = "gs://bucket/run"
  proc = start_worker(url, settings, env=env)
  wait_for_line(proc, "step 14/")  # checkpoints at 4, 8, 12 exist or are being written
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL

  listing = in_subprocess(
    env,
    "from sslx import checkpointing\n"
    f"print(checkpointing.manager({url!r}, async_save=False).latest_step())\n",
  )
  killed_at = int(listing.strip().splitlines()[-1])
  assert killed_at in (8, 12)  # 12 unless the kill landed inside its upload

  resumed = start_worker(url, settings, env=env)
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-3000:]
  assert f"resumed from gs://bucket/run/checkpoints at step {killed_at}" in out

  # Everything ended in the bucket: results, config, checkpoints, TensorBoard events.
  dump = tmp_path / "from_bucket"
  in_subprocess(
    env,
    "import os\nfrom sslx import paths\n"
    f"for rel in paths.walk_files({url!r}):\n"
    f"  dst = os.path.join({str(dump)!r}, rel)\n"
    "  os.makedirs(os.path.dirname(dst), exist_ok=True)\n"
    f"  open(dst, 'wb').write(paths.read_bytes({url!r} + '/' + rel))\n",
  )
  assert (dump / "config.json").exists()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(dump / "tensorboard"))
  assert "24" in os.listdir(dump / "checkpoints")

  a = json.load(open(tmp_path / "local" / "results.json"))
  b = json.load(open(dump / "results.json"))
  # Timings differ, and the first logged loss is the first one this process saw.
  for k in ("train_images_per_sec", "compile_s", "train_loss_first"):
    a.pop(k), b.pop(k)
  assert a == b and a["steps"] == 24 and "knn@5" in a

  # The final states are equal bit for bit (the bucket's read from its downloaded copy).
  assert_same_state(tiny_simclr(**settings), tmp_path / "local", dump)


def test_dataset_folder_and_files_on_gs(gcs, tmp_path):
  code = (
    "import io, numpy as np\n"
    "from PIL import Image\n"
    "from sslx import paths\n"
    "from sslx.data import sources\n"
    "for split, n in (('train', 3), ('test', 2)):\n"
    "  for c in ('cat', 'dog'):\n"
    "    for i in range(n):\n"
    "      buf = io.BytesIO()\n"
    "      Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buf, 'PNG')\n"
    "      paths.write_bytes(f'gs://bucket/ds/{split}/{c}/{i}.png', buf.getvalue())\n"
    "src = sources.ImageFolderSource('gs://bucket/ds', 'test')\n"
    "print(len(src), src.num_classes, src[3]['label'], int(src[3]['image'].mean()))\n"
    "try:\n"
    "  sources.ImageFolderSource('gs://bucket/ds', 'val')\n"
    "except ValueError as e:\n"
    "  print('ERR', e)\n"
  )
  out = in_subprocess(gcs_env(gcs), code).splitlines()
  assert out[0] == "4 2 1 40"
  assert out[1].startswith("ERR gs://bucket/ds: no images") and "'val'" in out[1]
