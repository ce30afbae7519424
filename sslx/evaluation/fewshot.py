"""Few-shot linear evaluation on frozen features: closed-form ridge regression, the protocol of
big_vision's few-shot evaluator (`evaluators/fewshot_lsr.py`; Kolesnikov et al. 2020,
Dosovitskiy et al. 2021).

Each draw (a seed) shuffles every class's training images once; s shots are the first s of
each class's order, so a draw's 1-shot images are among its 5-shot ones. The shots' features
are standardised per dimension by their own mean and standard deviation (+1e-5), a constant
column of 100 is appended (a bias that λ barely shrinks), and a linear map to ±1 targets
(2·one-hot − 1) is solved in closed form: W = (XᵀX + λI)⁻¹ XᵀY, in whichever of the primal
(D × D) or dual (n × n: W = Xᵀ(XXᵀ + λI)⁻¹Y) forms is smaller. Test features get the shots'
standardisation and the same column; the prediction is the argmax of XW. Accuracy is averaged
over `draws` draws.

Settings (`config.evals.fewshot`): shots ((1, 5, 10, 25)), l2_reg (2¹⁰ = 1024, big_vision's),
draws (3), seed (0). Reported as fewshot@<s> (top-1 %).
"""

from __future__ import annotations

import numpy as np

DEFAULTS = dict(shots=(1, 5, 10, 25), l2_reg=2.0**10, draws=3, seed=0)
BIAS_COLUMN = 100.0


def standardiser(x: np.ndarray):
  """The function that standardises features by `x`'s per-dimension mean and std (+1e-5) and
  appends the bias column."""
  mean, std = x.mean(0), x.std(0) + 1e-5

  def prep(feats):
    z = (np.asarray(feats, np.float64) - mean) / std
    return np.concatenate([z, np.full((len(z), 1), BIAS_COLUMN)], axis=1)

  return prep


def ridge(x: np.ndarray, targets: np.ndarray, l2_reg: float) -> np.ndarray:
  """argmin_W |XW − T|² + λ|W|², in the primal or dual form (float64)."""
  x, targets = x.astype(np.float64), targets.astype(np.float64)
  n, d = x.shape
  if d <= n:
    return np.linalg.solve(x.T @ x + l2_reg * np.eye(d), x.T @ targets)
  return x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(n), targets)


def class_orders(labels: np.ndarray, num_classes: int, rng) -> list[np.ndarray]:
  """One random order of every class's indices; s shots are the first s of each."""
  return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def sample_shots(orders: list[np.ndarray], shots: int) -> np.ndarray:
  """The first `shots` indices of each class's order (all of a class that has fewer)."""
  return np.concatenate([order[:shots] for order in orders])


def fewshot_accuracy(
  train_feats,
  train_labels,
  test_feats,
  test_labels,
  num_classes: int,
  shots,
  l2_reg=DEFAULTS["l2_reg"],
  draws=3,
  seed=0,
) -> dict:
  train_feats = np.asarray(train_feats, np.float64)
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  accs = {s: [] for s in shots}
  for d in range(draws):
    orders = class_orders(train_labels, num_classes, np.random.default_rng([seed, d]))
    for s in shots:
      idx = sample_shots(orders, int(s))
      prep = standardiser(train_feats[idx])
      targets = 2.0 * np.eye(num_classes)[train_labels[idx]] - 1.0
      w = ridge(prep(train_feats[idx]), targets, l2_reg)
      pred = np.argmax(prep(test_feats) @ w, -1)
      accs[s].append(100.0 * float((pred == test_labels).mean()))
  return {f"fewshot@{s}": float(np.mean(accs[s])) for s in shots}


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
