r"""2-D pictures of a checkpoint's test features: t-SNE (scikit-learn) or UMAP (umap-learn).

    python -m sslx embed --config=experiments/simclr.py --workdir=/tmp/sslx-demo \
        --method=tsne --out=/tmp/sslx-demo/tsne.png

Restores the latest checkpoint in --workdir (the config must describe the same method and
model, as for evaluate), encodes the test split with the frozen encoder (`method.encode`,
sharded over the mesh), reduces the features to 2-D and writes a scatter plot coloured by class
with a legend. scikit-learn, umap-learn and matplotlib are optional: pip install 'sslx[plots]'.
"""

from __future__ import annotations

import os

import numpy as np

from sslx import data, evaluation, paths, train

METHODS = ("tsne", "umap")
_EXTRA = "pip install 'sslx[plots]'"


def reduce_2d(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
  """features [N, D] → [N, 2] by t-SNE or UMAP (cosine geometry: features are L2-normalised
  first, as k-NN compares them)."""
  if method not in METHODS:
    raise ValueError(f"embed method={method!r} is not valid; valid choices: {list(METHODS)}")
  x = np.asarray(features, np.float32)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  if method == "tsne":
    try:
      from sklearn.manifold import TSNE
    except ImportError as e:
      raise ImportError(f"t-SNE needs scikit-learn, which is not installed: {_EXTRA}") from e
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
      x
    )
  try:
    import umap
  except ImportError as e:
    raise ImportError(f"UMAP needs umap-learn, which is not installed: {_EXTRA}") from e
  return umap.UMAP(
    n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed
  ).fit_transform(x)


def plot_2d(
  points: np.ndarray, labels: np.ndarray, out: str, title: str = "", class_names=None
) -> str:
  """Scatter of points [N, 2] coloured by labels [N], one legend entry per class; PNG."""
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError(f"plotting needs matplotlib, which is not installed: {_EXTRA}") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels = np.asarray(labels)
  classes = np.unique(labels)
  cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
  fig, ax = plt.subplots(figsize=(7, 6))
  for i, c in enumerate(classes):
    sel = labels == c
    name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
    ax.scatter(points[sel, 0], points[sel, 1], s=6, color=cmap(i % cmap.N), label=name)
  ax.legend(markerscale=3, fontsize=8, loc="best", title="class")
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title)
  fig.tight_layout()
  paths.save(out, lambda f: fig.savefig(f, format=paths.file_format(out), dpi=100))
  plt.close(fig)
  return out


def checkpoint_features(config, workdir: str, split: str | None = None, limit: int = 0):
  """(features [M, D], labels [M], class names, step) of the `split` (default: the eval
  split) encoded by the latest checkpoint's frozen encoder; the first `limit` images of a
  fixed random order when limit > 0."""
  setup, state, step = train.restore_latest(config, workdir)
  test = data.build_source(config.dataset, split or config.dataset.eval_split)
  images, labels = data.decode_all(test)
  if limit and limit < len(images):
    idx = np.random.default_rng(0).permutation(len(images))[:limit]
    images, labels = images[idx], labels[idx]

  def encode(x):
    return setup.method.encode(state.params["model"], state.batch_stats, x)

  feats = evaluation.extract(encode, images, setup.mesh, config.get("eval_batch_size", 512))
  return feats, labels, getattr(test, "class_names", None), step


def embed_plot(
  config, workdir: str, method: str = "umap", out: str | None = None, limit: int = 5000
) -> str:
  """Writes the 2-D `method` picture of the latest checkpoint's test features to `out`
  (default workdir/<method>.png) and returns its path."""
  if method not in METHODS:  # before any work
    raise ValueError(f"embed method={method!r} is not valid; valid choices: {list(METHODS)}")
  feats, labels, names, step = checkpoint_features(config, workdir, limit=limit)
  points = reduce_2d(feats, method, seed=config.get("seed", 0))
  out = out or os.path.join(workdir, f"{method}.png")
  title = (
    f"{config.method.name} / {config.model.name}, step {step}: {method.upper()} of "
    f"{len(feats)} test features"
  )
  return plot_2d(points, labels, out, title, names)
