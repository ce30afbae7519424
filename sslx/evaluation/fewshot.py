"""Few-shot linear evaluation on frozen features: closed-form ridge regression (the protocol of
big_vision's few-shot evaluator, Kolesnikov et al. 2020 / Dosovitskiy et al. 2021).

For each number of shots s, s training images per class are drawn (a fixed seed per draw), their
features centred by the draw's mean and L2-normalised, and a linear map to ±1 targets
(2·one-hot − 1) is solved in closed form: W = (XᵀX + λI)⁻¹ XᵀY, computed in whichever of the
primal (D × D) or dual (n × n: W = Xᵀ(XXᵀ + λI)⁻¹Y) forms is smaller. Test features get the same
centring and normalisation; the prediction is the argmax of XW. Accuracy is averaged over
`draws` independent draws.

Settings (`config.evals.fewshot`): shots ((1, 5, 10, 25)), l2_reg (0.1), draws (3), seed (0).
Reported as fewshot@<s> (top-1 %).
"""

from __future__ import annotations

import numpy as np

DEFAULTS = dict(shots=(1, 5, 10, 25), l2_reg=0.1, draws=3, seed=0)


def _prep(x, mean):
  x = x - mean
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ridge(x: np.ndarray, targets: np.ndarray, l2_reg: float) -> np.ndarray:
  """argmin_W |XW − T|² + λ|W|², in the primal or dual form (float64)."""
  x, targets = x.astype(np.float64), targets.astype(np.float64)
  n, d = x.shape
  if d <= n:
    return np.linalg.solve(x.T @ x + l2_reg * np.eye(d), x.T @ targets)
  return x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(n), targets)


def sample_shots(labels: np.ndarray, shots: int, num_classes: int, rng) -> np.ndarray:
  """Indices of `shots` random examples of each class (all of a class that has fewer)."""
  idx = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    idx.append(rng.choice(members, size=min(shots, len(members)), replace=False))
  return np.concatenate(idx)


def fewshot_accuracy(
  train_feats,
  train_labels,
  test_feats,
  test_labels,
  num_classes: int,
  shots,
  l2_reg=0.1,
  draws=3,
  seed=0,
) -> dict:
  train_feats = np.asarray(train_feats, np.float64)
  test_feats = np.asarray(test_feats, np.float64)
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  out = {}
  for s in shots:
    accs = []
    for d in range(draws):
      rng = np.random.default_rng([seed, s, d])
      idx = sample_shots(train_labels, int(s), num_classes, rng)
      mean = train_feats[idx].mean(0)
      x = _prep(train_feats[idx], mean)
      targets = 2.0 * np.eye(num_classes)[train_labels[idx]] - 1.0
      w = ridge(x, targets, l2_reg)
      pred = np.argmax(_prep(test_feats, mean) @ w, -1)
      accs.append(100.0 * float((pred == test_labels).mean()))
    out[f"fewshot@{s}"] = float(np.mean(accs))
  return out


def run(cfg, feats) -> dict:
  cfg = dict(DEFAULTS, **(dict(cfg) if cfg else {}))
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"evals.fewshot: unknown setting(s) {unknown}; valid: {sorted(DEFAULTS)}")
  return fewshot_accuracy(
    feats.train,
    feats.train_labels,
    feats.test,
    feats.test_labels,
    feats.num_classes,
    tuple(cfg["shots"]),
    cfg["l2_reg"],
    int(cfg["draws"]),
    int(cfg["seed"]),
  )
