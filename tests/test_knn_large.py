"""k-NN over CIFAR-sized feature sets stays within bounded memory (chunked search).

The test runs 20k × 20k (the time budget); the 50k × 50k figure is measured by hand with
`python tests/test_knn_large.py 50000` (see the module's __main__)."""

import resource
import sys
import threading
import time

import numpy as np

from sslx.evaluation import knn


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024.0
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(n: int, dim: int = 128, classes: int = 10, chunk: int = 1024) -> dict:
  """Random [n, dim] train and test features through knn_accuracy; peak RSS growth sampled
  every 10 ms above the RSS after the features exist."""
  rng = np.random.default_rng(0)
  train = rng.standard_normal((n, dim), dtype=np.float32)
  test = rng.standard_normal((n, dim), dtype=np.float32)
  ytr = rng.integers(0, classes, n)
  yte = rng.integers(0, classes, n)
  base = _rss_mb()
  peak = [base]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss_mb())
      time.sleep(0.01)

  t = threading.Thread(target=sample, daemon=True)
  t.start()
  t0 = time.perf_counter()
  acc = knn.knn_accuracy(train, ytr, test, yte, classes, ks=(20, 200), chunk=chunk)
  seconds = time.perf_counter() - t0
  done.set()
  t.join()
  return {
    "n": n,
    "seconds": seconds,
    "rss_growth_mb": peak[0] - base,
    "acc": acc,
    "features_mb": 2 * train.nbytes / 2**20,
  }


def test_20k_by_20k_knn_memory_stays_bounded():
  m = measure(20_000)
  # The full similarity matrix would be 20k × 20k × 4 B = 1.6 GB; the chunked search needs
  # chunk × N similarities (80 MB) plus copies of the features.
  assert m["rss_growth_mb"] < 1000, m
  for k in (20, 200):
    assert 5.0 < m["acc"][f"knn@{k}"] < 15.0  # random labels: chance (10%)


if __name__ == "__main__":
  print(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
