"""gs:// workdirs against a real GCS JSON API on loopback (the gcp-storage-emulator package):
a run killed with SIGKILL resumes from the bucket and ends as an uninterrupted local run."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sslx.data import array_records
from tests.helpers import REPO, tiny_simclr
from tests.test_preemption import assert_same_state, start_worker, wait_for_line
from tests.test_prepare import image_bytes

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

  # The evaluation commands read the encoder's side straight from the bucket.
  digest = (
    "import hashlib, jax, numpy as np\n"
    "from sslx import train\nfrom tests.helpers import tiny_simclr\n"
    "def digest(workdir):\n"
    f"  _, state, step = train.restore_latest(tiny_simclr(**{settings!r}), workdir)\n"
    "  leaves = jax.tree.leaves(state.params['model'])\n"
    "  return step, hashlib.sha256(b''.join(np.asarray(x).tobytes() for x in leaves)).hexdigest()\n"
  )
  from_bucket = in_subprocess(env, digest + f"print(*digest({url!r}))")
  from_disk = in_subprocess(env, digest + f"print(*digest({str(tmp_path / 'local')!r}))")
  assert from_bucket.split()[-2:] == from_disk.split()[-2:] and from_disk.split()[-2] == "24"


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


def test_prepare_writes_its_shards_to_a_bucket_as_to_a_folder(gcs, tmp_path):
  """`sslx prepare --out=gs://...` stages the shards and uploads them: the bucket ends with the
  files of a local prepare, byte for byte; reading shards from a URL fails naming the path."""
  folder = tmp_path / "src"
  for split, n in (("train", 8), ("test", 4)):
    for k in range(n):
      (folder / split / f"class{k % 2}").mkdir(parents=True, exist_ok=True)
      (folder / split / f"class{k % 2}" / f"{k}.jpg").write_bytes(image_bytes(10 * n + k))
  env = gcs_env(gcs)
  url = "gs://bucket/prepared"
  for out in (url, str(tmp_path / "local")):
    proc = subprocess.run(
      [sys.executable, "-m", "sslx", "prepare", f"--src={folder}", f"--out={out}"],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
  in_bucket, on_disk = bucket_hashes(env, url), folder_hashes(tmp_path / "local")
  assert in_bucket == on_disk and any(r.endswith(".array_record") for r in on_disk)
  with pytest.raises(ValueError, match="gs://bucket/prepared.*read from a local disk.*gcsfuse"):
    array_records.read_metadata(url, "train")


def two_class_train_folder(tmp_path, n: int):
  """`tmp_path/src/train/class{0,1}/` with n small JPEGs, alternating classes."""
  folder = tmp_path / "src"
  for k in range(n):
    (folder / "train" / f"class{k % 2}").mkdir(parents=True, exist_ok=True)
    (folder / "train" / f"class{k % 2}" / f"{k:02d}.jpg").write_bytes(image_bytes(k))
  return folder


def staging_env(gcs, tmp_path) -> dict:
  """The emulator's environment with TMPDIR at `tmp_path/tmp` (where `prepare` stages)."""
  os.makedirs(tmp_path / "tmp")
  return dict(gcs_env(gcs), TMPDIR=str(tmp_path / "tmp"))


def test_prepare_to_a_bucket_uploads_each_shard_as_it_closes(gcs, tmp_path):
  """Every shard goes to the bucket as soon as it is closed, while the next ones are written:
  the staging folder never holds more than three shards, whatever the dataset's size."""
  folder, env = two_class_train_folder(tmp_path, 16), staging_env(gcs, tmp_path)
  url = "gs://bucket/streamed"
  code = (
    "import json, os\nfrom sslx.data import array_records\n"
    "counts, upload = [], array_records._upload\n"
    "def counting(fs, file, remote):\n"
    f"  staged = array_records.staging_dir({url!r})\n"
    "  counts.append(sum(n.endswith('.array_record') for _, _, ns in os.walk(staged) for n in ns))\n"
    "  upload(fs, file, remote)\n"
    "array_records._upload = counting\n"
    f"array_records.prepare({str(folder)!r}, {url!r}, shard_bytes=2000)\n"
    "print(json.dumps(counts))\n"
  )
  counts = json.loads(in_subprocess(env, code).strip().splitlines()[-1])
  array_records.prepare(str(folder), str(tmp_path / "local"), shard_bytes=2000)
  on_disk = folder_hashes(tmp_path / "local")
  assert bucket_hashes(env, url) == on_disk
  shards = sum(r.endswith(".array_record") for r in on_disk)
  assert shards >= 8 and len(counts) == shards + 2  # every shard, then labels and metadata
  assert 1 <= max(counts) <= 3 and os.listdir(tmp_path / "tmp") == []


def test_prepare_to_a_bucket_interrupted_resumes_from_its_staging_folder(gcs, tmp_path):
  """Killed while preparing or uploading, `prepare --out=gs://...` run again on the same
  machine goes on from the shards it had closed, and the bucket ends with one run's files."""
  folder, env = two_class_train_folder(tmp_path, 12), staging_env(gcs, tmp_path)
  url = "gs://bucket/resumed"
  run = (
    "import json\nfrom sslx.data import array_records, sources\n"
    "SHARD = globals().get('SHARD', 4000)\n"
    "reads, read = [], sources.ImageFolderSource.read_encoded\n"
    "def counted(self, i):\n"
    "  if i >= STOP:\n    raise KeyboardInterrupt\n"
    "  reads.append(i)\n  return read(self, i)\n"
    "sources.ImageFolderSource.read_encoded = counted\n"
    "uploads, upload = [], array_records._upload\n"
    "def killed_upload(*args):\n"
    "  if len(uploads) == KILL_UPLOAD - 1:\n    raise KeyboardInterrupt\n"
    "  uploads.append(args[1])\n  upload(*args)\n"
    "if KILL_UPLOAD:\n  array_records._upload = killed_upload\n"
    "try:\n"
    f"  array_records.prepare({str(folder)!r}, OUT, shard_bytes=SHARD, threads=1)\n"
    "except KeyboardInterrupt:\n  print('interrupted')\n"
    "print(json.dumps(reads))\n"
  )
  first = in_subprocess(env, f"STOP, OUT, KILL_UPLOAD = 9, {url!r}, 0\n" + run).splitlines()
  assert first[-2] == "interrupted"
  staged = array_records_staging(env, url)
  journal = (tmp_path / "tmp" / staged / "train" / "prepare.journal.jsonl").read_text()
  resume_at = json.loads(journal.splitlines()[-1])["next"]
  assert 0 < resume_at <= 9
  second = in_subprocess(env, f"STOP, OUT, KILL_UPLOAD = 10**9, {url!r}, 0\n" + run).splitlines()
  assert json.loads(second[-1]) == list(range(resume_at, 12))  # nothing read twice
  assert not (tmp_path / "tmp" / staged).exists()  # removed once uploaded
  in_subprocess(env, f"STOP, OUT, KILL_UPLOAD = 10**9, {str(tmp_path / 'local')!r}, 0\n" + run)
  # Killed in an upload (the first, or the third: KILL_UPLOAD = n dies in upload n): the rerun
  # reads only the images after the journal's shards, uploads the staged ones, and does not
  # send again what was uploaded.
  for kill_at in (1, 3):
    url_k = f"gs://bucket/upload-killed-{kill_at}"
    killed = in_subprocess(env, f"STOP, OUT, KILL_UPLOAD = 10**9, {url_k!r}, {kill_at}\n" + run)
    assert killed.splitlines()[-2] == "interrupted"
    staged_k = tmp_path / "tmp" / array_records_staging(env, url_k) / "train"
    entries = [json.loads(x) for x in (staged_k / "prepare.journal.jsonl").read_text().splitlines()]
    before = bucket_generations(env, url_k)
    assert len(before) == kill_at - 1  # shards only: no labels or metadata yet
    rerun = in_subprocess(env, f"STOP, OUT, KILL_UPLOAD = 10**9, {url_k!r}, 0\n" + run)
    assert json.loads(rerun.splitlines()[-1]) == list(range(entries[-1]["next"], 12))
    after = bucket_generations(env, url_k)
    assert {k: after[k] for k in before} == before and len(after) > len(before)
    assert bucket_hashes(env, url_k) == bucket_hashes(env, url)
  # Finished in the bucket, the same prepare again reads nothing and stages nothing.
  fifth = in_subprocess(env, f"STOP, OUT, KILL_UPLOAD = 10**9, {url!r}, 0\n" + run)
  assert json.loads(fifth.splitlines()[-1]) == [] and not (tmp_path / "tmp" / staged).exists()
  in_bucket, on_disk = bucket_hashes(env, url), folder_hashes(tmp_path / "local")
  assert in_bucket == on_disk and len([r for r in on_disk if r.endswith(".array_record")]) > 2
  # Prepared again with larger shards: the bucket holds that conversion alone (no shard of the
  # first one left beside it).
  # A file of the user's in that folder is not touched.
  in_subprocess(env, f"from sslx import paths\npaths.write_text({url!r} + '/train/notes.txt', 'x')")
  bigger = "SHARD = 9000\nSTOP, OUT, KILL_UPLOAD = 10**9, {!r}, 0\n"
  in_subprocess(env, bigger.format(url) + run)
  in_subprocess(env, bigger.format(str(tmp_path / "local9000")) + run)
  in_bucket = bucket_hashes(env, url)
  assert in_bucket.pop("train/notes.txt") == hashlib.sha256(b"x").hexdigest()
  shards = [r for r in in_bucket if r.endswith(".array_record")]
  assert in_bucket == folder_hashes(tmp_path / "local9000") and 1 < len(shards) < 4


def bucket_generations(env, url: str) -> dict:
  """{object name: generation} of every object under `url` (a rewrite gives a new one)."""
  code = (
    "import fsspec, json\nfrom sslx import paths\n"
    f"fs, root = fsspec.core.url_to_fs({url!r})\n"
    "print(json.dumps({k: v['generation'] for k, v in fs.find(root, detail=True).items()}))\n"
  )
  return json.loads(in_subprocess(env, code).strip().splitlines()[-1])


def bucket_hashes(env, url: str) -> dict:
  """{relative path: sha256} of every object under `url`, read in a process talking to env's
  emulator."""
  listing = in_subprocess(
    env,
    "import hashlib, json\nfrom sslx import paths\n"
    f"print(json.dumps({{r: hashlib.sha256(paths.read_bytes({url!r} + '/' + r)).hexdigest()"
    f" for r in paths.walk_files({url!r})}}))\n",
  )
  return json.loads(listing.strip().splitlines()[-1])


def folder_hashes(root) -> dict:
  """{relative path: sha256} of every file under `root`."""
  return {
    os.path.relpath(os.path.join(d, f), root): hashlib.sha256(
      open(os.path.join(d, f), "rb").read()
    ).hexdigest()
    for d, _, files in os.walk(root)
    for f in files
  }


def array_records_staging(env, url: str) -> str:
  """The name of the staging folder `prepare` uses for `url` under env's TMPDIR."""
  code = f"import os\nfrom sslx.data import array_records\nprint(os.path.basename(array_records.staging_dir({url!r})))\n"
  return in_subprocess(env, code).strip().splitlines()[-1]
