import numpy as np
import pytest

from sslx.evaluation import knn, linear


def brute_force_knn(train, ytr, test, k, temperature, num_classes):
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  preds = []
  for q in test:
    sims = train @ q
    idx = np.argsort(-sims, kind="stable")[:k]
    votes = np.zeros(num_classes)
    for i in idx:
      votes[ytr[i]] += np.exp(sims[i] / temperature)
    preds.append(votes.argmax())
  return np.array(preds)


def test_knn_matches_brute_force_and_chunking_is_invisible():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 8))
  ytr = rng.integers(0, 4, 300)
  yte = rng.integers(0, 4, 77)
  train = centers[ytr] + 0.9 * rng.normal(size=(300, 8))
  test = centers[yte] + 0.9 * rng.normal(size=(77, 8))
  for k in (1, 5, 20):
    expected = 100.0 * (brute_force_knn(train, ytr, test, k, 0.07, 4) == yte).mean()
    got = knn.knn_accuracy(train, ytr, test, yte, 4, ks=(k,), chunk=16)[f"knn@{k}"]
    assert got == pytest.approx(expected)
  whole = knn.knn_accuracy(train, ytr, test, yte, 4, ks=(5, 20), chunk=1000)
  chunked = knn.knn_accuracy(train, ytr, test, yte, 4, ks=(5, 20), chunk=10)
  assert whole == chunked


def test_knn_k_larger_than_train_set_uses_all():
  train = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
  out = knn.knn_accuracy(
    train, np.array([0, 1, 0]), np.array([[1.0, 0.05]]), np.array([0]), 2, ks=(200,)
  )
  assert out["knn@200"] == 100.0


def test_linear_probe_separates_separable_data_and_not_noise():
  rng = np.random.default_rng(1)
  ytr, yte = rng.integers(0, 3, 600), rng.integers(0, 3, 200)
  w = rng.normal(size=(3, 16)) * 3
  xtr = w[ytr] + rng.normal(size=(600, 16))
  xte = w[yte] + rng.normal(size=(200, 16))
  acc = linear.linear_probe_accuracy(xtr, ytr, xte, yte, 3, epochs=20, batch_size=64)
  assert acc > 95.0
  noise = linear.linear_probe_accuracy(
    rng.normal(size=(600, 16)), ytr, rng.normal(size=(200, 16)), yte, 3, epochs=20, batch_size=64
  )
  assert noise < 50.0


def test_results_on_another_dataset_are_kept_apart_by_its_label(tmp_path, monkeypatch):
  import json

  from sslx import evaluation, progress
  from tests.helpers import tiny_simclr

  run = tiny_simclr()
  (tmp_path / "config.json").write_text(run.to_json_best_effort())
  assert evaluation.transfer_label(run, str(tmp_path)) is None  # the run's own dataset
  assert evaluation.transfer_label(run, str(tmp_path / "no_run")) is None  # nothing trained
  other = tiny_simclr(**{"dataset.name": "image_folder", "dataset.image_size": 48})
  other.dataset.path = "/data/stl10"
  label = evaluation.transfer_label(other, str(tmp_path))
  assert label == "image_folder /data/stl10 (test, 48 px)"
  folder = tmp_path / "stl10"
  folder.mkdir()
  there = tiny_simclr(**{"dataset.name": "image_folder"})
  there.dataset.path = str(folder)
  (tmp_path / "config.json").write_text(there.to_json_best_effort())
  monkeypatch.chdir(tmp_path)
  for spelled in ("stl10", "./stl10/", str(folder) + "/"):  # one folder, spelled three ways
    here = tiny_simclr(**{"dataset.name": "image_folder"})
    here.dataset.path = spelled
    assert evaluation.transfer_label(here, str(tmp_path)) is None, spelled
  (tmp_path / "config.json").write_text(run.to_json_best_effort())
  bigger = tiny_simclr(**{"dataset.image_size": 64})  # the same images at another size
  assert evaluation.transfer_label(bigger, str(tmp_path)) == "embedded (test, 64 px)"

  progress.write_results(str(tmp_path), {"knn@20": 40.0, "evaluate": {"knn@20": 41.0}})
  progress.write_results(str(tmp_path), {"evaluate": {"knn@20": 30.0, "step": 3}}, label)
  progress.write_results(str(tmp_path), {"finetune": 55.0}, label)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["knn@20"] == 40.0 and saved["evaluate"] == {"knn@20": 41.0}
  assert saved["transfer"] == {label: {"evaluate": {"knn@20": 30.0, "step": 3}, "finetune": 55.0}}


def test_long_work_reports_progress_with_eta_and_short_work_stays_quiet(capsys, monkeypatch):
  from sslx import progress

  now = [100.0]
  monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
  quick = progress.Ticker("quick", 10, "images", every_s=15.0)
  now[0] += 5.0
  quick.update(10)
  quick.finish()
  assert capsys.readouterr().out == ""

  slow = progress.Ticker("pretrained: k-NN", 50_000, "test images", every_s=15.0)
  now[0] += 20.0  # 12,500 done in 20 s: 37,500 to go at that rate is 60 s
  slow.update(12_500)
  now[0] += 5.0  # within 15 s of the last line: nothing
  slow.update(20_000)
  now[0] += 35.0
  slow.finish()
  assert capsys.readouterr().out.splitlines() == [
    "pretrained: k-NN: 12,500/50,000 test images (25%) | ETA 1m00s",
    "pretrained: k-NN: 50,000 test images in 1m00s",
  ]


@pytest.mark.parametrize("mesh_shape", [(8,), (4, 2)])
def test_knn_sharded_over_devices_finds_the_same_neighbours(mesh_shape):
  """Training features spread by rows over 8 devices (301 rows: the last device holds padding;
  13 rows: fewer per device than k): every query's nearest row is found exactly, and every
  (k, T) gives the one-device accuracies and the brute-force reference's."""
  import jax
  from jax.sharding import Mesh

  mesh = Mesh(
    np.asarray(jax.devices()[:8]).reshape(mesh_shape), ("data", "fsdp")[: len(mesh_shape)]
  )
  rng = np.random.default_rng(3)
  for n in (301, 13):
    train = rng.normal(size=(n, 16)).astype(np.float32)
    test = rng.normal(size=(50, 16)).astype(np.float32)
    # Every training row its own class, each query labelled by its nearest row: 100% only if
    # the nearest row of every query is found across the shards.
    cos = (test / np.linalg.norm(test, axis=1, keepdims=True)) @ (
      train / np.linalg.norm(train, axis=1, keepdims=True)
    ).T
    nearest = cos.argmax(1)
    own = knn.knn_accuracy(train, np.arange(n), test, nearest, n, ks=(1,), chunk=16, mesh=mesh)
    assert own == {"knn@1": 100.0}
    ytr, yte = rng.integers(0, 4, n), rng.integers(0, 4, 50)
    kw = dict(ks=(1, 5, 20), temperatures=(0.5,), chunk=16)
    sharded = knn.knn_accuracy(train, ytr, test, yte, 4, mesh=mesh, **kw)
    assert sharded == knn.knn_accuracy(train, ytr, test, yte, 4, **kw)
    for k in (1, 5, 20):
      expected = 100.0 * (brute_force_knn(train, ytr, test, min(k, n), 0.07, 4) == yte).mean()
      assert sharded[f"knn@{k}"] == pytest.approx(expected)


def test_linear_probe_over_8_devices_equals_one_device_and_gathers_only_batches():
  """The standardised features split by rows over 8 devices (1,003 rows: padded): the same
  accuracy as on one device, and each step moves one [B, D] batch (an all-reduce of masked
  local gathers), never the features (no all-gather)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh

  from sslx import planning, sharding

  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  rng = np.random.default_rng(5)
  w = rng.normal(size=(3, 24))
  ytr, yte = rng.integers(0, 3, 1003), rng.integers(0, 3, 301)
  xtr = w[ytr] + 2.5 * rng.normal(size=(1003, 24))
  xte = w[yte] + 2.5 * rng.normal(size=(301, 24))
  kw = dict(epochs=3, batch_size=64)
  one = linear.linear_probe_accuracy(xtr, ytr, xte, yte, 3, **kw)
  assert 60.0 < one < 100.0  # learnt, and not trivially
  assert linear.linear_probe_accuracy(xtr, ytr, xte, yte, 3, mesh=mesh, **kw) == one

  x = sharding.rows_over_mesh(np.asarray(xtr, np.float32), mesh)
  y = jnp.asarray(ytr, jnp.int32)
  params = {"w": jnp.zeros((24, 3)), "b": jnp.zeros((3,))}
  carry = (params, linear._optimizer(0.1, 0.0, 45).init(params))
  key = jax.random.PRNGKey(0)
  compiled = linear._epoch.lower(
    carry, x, y, key, 0.1, 0.0, num_rows=1003, total_steps=45, batch_size=64
  ).compile()
  moved = planning.collective_bytes(compiled.as_text())
  assert planning.resharding(moved) == 0
  assert moved["all-reduce"] == 64 * 24 * 4  # one batch of features per step
