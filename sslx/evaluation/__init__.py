"""Evaluation protocols on frozen features, chosen by `config.evals`.

Each protocol is a module here with `run(cfg, feats) -> {name: value}`; `config.evals` maps a
module name to its settings, e.g. `{"knn": {"ks": (20, 200)}, "linear": {"epochs": 100}}`.
Features are extracted once per encoder and shared by every protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pkgutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sslx import data, paths, preemption, progress, sharding
from sslx.evaluation import reading
from sslx.evaluation.reading import Split, SplitImages

_NOT_PROTOCOLS = {"features", "reading", "resumable"}
# protocols that run the encoder on raw images (fine-tuning, the augmented linear probe)
_NEED_IMAGES = ("finetune", "linear_aug")
# Protocols that are not frozen-feature evaluations are still run through config.evals:
# finetune (trains the encoder; needs Features.context).


def available() -> list[str]:
  return sorted(
    m.name
    for m in pkgutil.iter_modules(__path__)
    if m.name not in _NOT_PROTOCOLS and not m.name.startswith("_")
  )


@dataclasses.dataclass
class Features:
  train: np.ndarray  # [N, D]
  train_labels: np.ndarray  # [N]
  test: np.ndarray  # [M, D]
  test_labels: np.ndarray  # [M]
  num_classes: int
  # Protocols that train the encoder (fine-tuning) need more than features: the method, its
  # pretrained variables and the raw images. None for the raw-pixel baseline.
  context: object = None
  encoder: str = ""  # whose features: "pretrained", "random_init", ... (for progress lines)
  mesh: Any = None  # the devices protocols may spread the features over (None: one device)

  def what(self, protocol: str) -> str:
    """`protocol`'s name in progress lines, with the encoder's when there is one."""
    return f"{self.encoder}: {protocol}" if self.encoder else protocol


@dataclasses.dataclass
class Context:
  """What fine-tuning needs beyond frozen features: the method, its pretrained variables and
  the raw uint8 images [N, H, W, 3] with labels."""

  method: Any
  params: Any
  batch_stats: Any
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mesh: Any = None  # the mesh protocols shard over (all devices when None)
  workdir: str | None = None  # where label-subset image lists are written


def extract(
  encode_fn, images: np.ndarray, mesh, batch_size: int = 512, what: str = "features"
) -> np.ndarray:
  """`encode_fn(images[B]) -> [B, D]` over every row of the decoded `images` [N, H, W, 3], in
  order: `extract_split` without labels (fixed-size batches sharded over the mesh, the last
  one padded so it compiles once; every process gets all the features)."""
  return extract_split(encode_fn, images, mesh, batch_size, what, np.zeros(len(images)))[0]


def eval_splits(config, train=None) -> tuple[Split, Split, int] | None:
  """(train split, test split, num_classes) of `config.dataset` (`train`: its train source,
  when already built), nothing decoded; None when the dataset has no labels.

  With ``eval_train_limit = L`` the train split is a class-balanced subset of L records
  (``data.balanced_subset``, chosen from the labels alone where the source lists them)."""
  if train is None:
    train = data.build_source(config.dataset, config.dataset.train_split)
  if not getattr(train, "num_classes", 0):
    return None
  test = data.build_source(config.dataset, config.dataset.eval_split)
  limit = int(config.get("eval_train_limit", 0) or 0)
  try:
    labels = train.labels
  except NotImplementedError:  # tfds reads labels with the records
    labels = None
  if labels is not None:
    train_split = Split(train, data.balanced_subset(labels, limit), "train")
  else:
    train_split = Split(train, np.arange(len(train)), "train", limit=limit)
  return train_split, Split(test, np.arange(len(test)), "test"), train.num_classes


def load_eval_data(config):
  """(train images, train labels, test images, test labels, num_classes) or None: both
  `eval_splits` decoded into memory (bounded by ``eval_train_limit`` on the train side).
  Protocols that need only features read the splits in batches instead (`extract_split`)."""
  splits = eval_splits(config)
  if splits is None:
    return None
  train, test, num_classes = splits
  return (*train.decode(), *test.decode(), num_classes)


def eval_images(
  config, train: Split, test: Split, num_classes: int, image_protocols: bool | None = None
) -> tuple:
  """(train images, train labels, test images, test labels, num_classes) as `run_all` and the
  image protocols take them: decoded arrays when raw pixels need them (`eval_baselines`) or
  when a protocol trains on the images and both splits take at most `config.eval_decode_gb`
  decoded (or their labels are only known once read: tfds); otherwise `SplitImages`, read
  batch by batch, with the labels the sources list (None where they list none: then taken
  from the records). `image_protocols`: whether a protocol trains on the images (None: one
  in `config.evals` does)."""
  labels = train.labels(), test.labels()
  if decode_in_memory(config, train, test, image_protocols):
    return (*train.decode(), *test.decode(), num_classes)
  return SplitImages(train), labels[0], SplitImages(test), labels[1], num_classes


def decode_in_memory(
  config, train: Split, test: Split, image_protocols: bool | None = None
) -> bool:
  """Whether `eval_images` decodes both splits into memory (see there). Raises, before any
  work, where that is needed but would pass `eval_decode_gb`: the raw-pixel and untrained
  baselines (`eval_baselines`) on a large dataset, or a protocol that trains on the images of
  a source that lists no labels up front (tfds) and so is decoded whole (ImageNet's train
  split: 180 GiB at 224 px)."""
  evals = config.get("evals", {})
  if image_protocols is None:
    image_protocols = any(name in evals for name in _NEED_IMAGES)
  size = int(train.source.image_size)
  decoded = (len(train) + len(test)) * size * size * 3
  limit_gb = float(config.get("eval_decode_gb", 4.0))
  unknown = train.labels() is None or test.labels() is None
  small = decoded <= limit_gb * 2**30
  baselines = bool(config.get("eval_baselines"))
  needed = baselines or (image_protocols and (unknown or small))
  if small or not needed:
    return needed
  images = (
    f"{len(train):,} train and {len(test):,} test images of {train.source!r} take "
    f"{decoded / 2**30:,.1f} GiB decoded at {size} px, past eval_decode_gb={limit_gb:g}"
  )
  if baselines:
    raise ValueError(
      f"eval_baselines: raw pixels and the untrained encoder need both splits in memory, and "
      f"the {images}. Set --config.eval_baselines=False (the imagenet presets do), a smaller "
      "--config.eval_train_limit, or a larger --config.eval_decode_gb where the host has the "
      "memory"
    )
  which = ", ".join(name for name in _NEED_IMAGES if name in evals) or "fine-tuning"
  raise ValueError(
    f"evals {which}: the {images}, and a source that lists no labels up front (tfds) can "
    "only be decoded whole for them. Prepare the dataset as ArrayRecord (python -m sslx "
    "prepare, then dataset.name=array_record: read batch by batch), raise "
    "--config.eval_decode_gb where the host has the memory, or leave these protocols out of "
    "config.evals"
  )


def extract_split(
  encode_fn,
  images,
  mesh,
  batch_size: int = 512,
  what: str = "features",
  labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], labels [N]) of `images`: a `Split` or `SplitImages` read batch by batch
  (labels from its records, unreadable ones left out), or a decoded array with its `labels`.

  Host memory holds the features and two batches of images, not the split: ImageNet's 1.28M
  train images are 193 GB decoded at 224 px, their ViT-S features 2 GB. Each process decodes
  only the rows its own devices encode, the next batch while the devices encode the current
  one (`reading.device_batches`); each batch's features come back replicated and are copied
  to the host one batch behind, so device memory holds a batch, and every process ends with
  all the features."""
  if isinstance(images, Split):
    images = SplitImages(images)
  batch_size = max(batch_size - batch_size % mesh.size, mesh.size)
  data_sharding = sharding.batch_sharding(mesh)
  n = len(images)
  index_batches = (
    np.concatenate([np.arange(s, min(s + batch_size, n)), np.full(max(s + batch_size - n, 0), -1)])
    for s in range(0, n, batch_size)
  )
  fn = jax.jit(
    lambda x, y: (encode_fn(x).astype(jnp.float32), y),
    in_shardings=(data_sharding, data_sharding),
    out_shardings=sharding.replicated(mesh),
  )
  feats, kept = [], []
  ticker = progress.Ticker(what, n, "images")

  def fetch(out):
    f, y = (np.asarray(a.addressable_data(0)) for a in out)
    feats.append(f)
    kept.append(y)
    if ticker.due():
      ticker.update(min(len(feats) * batch_size, n))

  previous = None
  for x, y in reading.device_batches(images, labels, index_batches, data_sharding):
    out = fn(x, y)
    if previous is not None:
      fetch(previous)
    previous = out
    preemption.evaluation_sync_point()  # several processes: stop together on SIGTERM
  if previous is None:
    return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32)
  fetch(previous)
  ticker.finish()
  f, y = np.concatenate(feats), np.concatenate(kept)
  keep = np.flatnonzero(y >= 0)  # padding and unreadable records
  f, y = f[keep], y[keep]
  limit = images.split.limit if isinstance(images, SplitImages) else 0
  if limit and limit < len(y):
    idx = data.balanced_subset(y, limit)
    f, y = f[idx], y[idx]
  return f, y


def run_protocols(evals_cfg, feats: Features) -> dict:
  results = {}
  for name in sorted(evals_cfg):
    if name in _NEED_IMAGES and feats.context is None:
      continue  # no encoder (raw pixels)
    results.update(importlib.import_module(f"{__name__}.{name}").run(evals_cfg[name], feats))
  return results


# What makes an evaluation one of the run's own: the same images at the same size.
_DATASET_IDENTITY = ("name", "path", "train_split", "eval_split", "image_size")


def transfer_label(config, workdir: str) -> str | None:
  """None when `config` evaluates on the dataset the run in `workdir` trained on (its
  config.json; a workdir without one, e.g. one evaluating `init_from` weights, has no dataset of
  its own); otherwise a label naming the other dataset, e.g. "image_folder /data/stl10 (test,
  96 px)", under which its results are kept apart from the run's own (`progress.write_results`)."""
  path = paths.join(workdir, "config.json")
  if not paths.exists(path):
    return None
  ran = paths.read_json(path).get("dataset", {})
  d = config.dataset

  def same(key):
    a, b = str(ran.get(key, "")), str(d.get(key, ""))
    if key == "path" and a and b and not (paths.is_remote(a) or paths.is_remote(b)):
      # A local folder given relative here and absolute there, with "~" or a trailing "/", is
      # one dataset (relative paths resolve against this process's directory).
      a, b = (os.path.realpath(os.path.expanduser(x)) for x in (a, b))
    return a == b

  if all(same(k) for k in _DATASET_IDENTITY):
    return None
  where = f" {d.path}" if d.get("path") else ""
  return f"{d.name}{where} ({d.get('eval_split', 'test')}, {d.get('image_size')} px)"


def raw_pixel_features(images: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
  """Flattened pixels in [0, 1], centred by the training set's mean image (so cosine
  similarity compares patterns, not overall brightness: the stronger baseline)."""
  x = images.reshape(len(images), -1).astype(np.float32) / 255.0
  return x - (x.mean(0) if mean is None else mean)


def run_all(
  config, method, state, mesh, writer=None, step: int = 0, eval_data=None, workdir=None
) -> dict:
  """Runs `config.evals` on the trained encoder (and, with `config.eval_baselines`, on the
  untrained initial encoder and on raw pixels). The encoder is the network the method
  evaluates (`Method.eval_variables`: e.g. DINO's teacher), named in the result's
  `eval_encoder`. Returns flat results for the trained encoder plus {"baselines": {...}}."""
  if not config.get("evals"):
    return {}
  if eval_data is None:
    splits = eval_splits(config)
    if splits is None:
      progress.console("evals skipped: the dataset has no labels")
      return {}
    eval_data = eval_images(config, *splits)
  xtr, ytr, xte, yte, num_classes = eval_data
  batch = config.get("eval_batch_size", 512)
  baselines = (
    " (and of the untrained encoder and raw pixels)" if config.get("eval_baselines") else ""
  )
  how = ", read batch by batch" if isinstance(xtr, SplitImages) else ""
  progress.console(
    f"evaluating: {', '.join(sorted(config.evals))} on {len(xtr):,} train and {len(xte):,} "
    f"test images{how}{baselines}"
  )

  def evaluate(params, batch_stats, encoder: str):
    encode_fn = functools.partial(method.encode, params, batch_stats)
    context = None
    if any(name in config.evals for name in _NEED_IMAGES):
      context = Context(method, params, batch_stats, xtr, ytr, xte, yte, num_classes, mesh, workdir)
    if all(name in _NEED_IMAGES for name in config.evals):  # no protocol reads features
      train = test = (np.zeros((0, 0), np.float32), np.zeros((0,), np.int32))
    else:
      train = extract_split(encode_fn, xtr, mesh, batch, f"{encoder}: train features", ytr)
      test = extract_split(encode_fn, xte, mesh, batch, f"{encoder}: test features", yte)
    return run_protocols(config.evals, Features(*train, *test, num_classes, context, encoder, mesh))

  results = evaluate(
    *method.eval_variables(state.params["model"], state.batch_stats, state.method_state),
    "pretrained",
  )
  table = {"pretrained": results}
  if config.get("eval_baselines", False):
    # The encoder pretraining started from (same key split as train.init_state).
    init_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)[0]
    init = method.init(init_rng, jnp.asarray(xtr[:2]))
    table["random_init"] = evaluate(
      *method.eval_variables(init.params, init.batch_stats, init.method_state), "random_init"
    )
    pixel_mean = xtr.reshape(len(xtr), -1).astype(np.float32).mean(0) / 255.0
    table["raw_pixels"] = run_protocols(
      config.evals,
      Features(
        raw_pixel_features(xtr, pixel_mean),
        ytr,
        raw_pixel_features(xte, pixel_mean),
        yte,
        num_classes,
        encoder="raw_pixels",
        mesh=mesh,
      ),
    )
  if writer is not None:
    writer.scalars(step, results, prefix="eval/")
  progress.console(format_table(table))
  out = dict(results, eval_encoder=method.eval_encoder)
  if len(table) > 1:
    out["baselines"] = {k: v for k, v in table.items() if k != "pretrained"}
  return out


def format_table(table: dict) -> str:
  cols = sorted({k for row in table.values() for k in row})
  lines = ["| encoder | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, row in table.items():
    lines.append(
      f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.2f}" for c in cols) + " |"
    )
  return "\n".join(lines)
