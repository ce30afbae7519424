"""Weighted k-NN classification on frozen features (Wu et al. 2018; DINO's recipe).

Cosine similarity; the k nearest training features vote for their class with weight
exp(s / T). Every (k, T) of the sweep is read off ONE top-k of the similarities per chunk of
queries: votes are scatter-added into [Q, C] per setting. The training features are sharded
by rows over every device of the mesh: each device scores a chunk of queries against its own
rows and keeps its k best, the k best of those candidates are the chunk's neighbours. A device
holds N / devices features and chunk × N / devices similarities: ResNet-50's 2048-d features
of ImageNet's 1.28M train images are 10.5 GB, 1.3 GB per device on 8; the similarities of a
1024-query chunk 5.2 GB, 0.66 GB per device. The training features are all of them
(`eval_train_limit=0`, the default), extracted by every device of every process
(`evaluation.extract_split`).

Settings (`config.evals.knn`): ks ((20, 200)), temperature (0.07; reported as knn@k),
temperatures (extra temperatures, reported as knn@k_T<t>), chunk (1024).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from sslx import losses, preemption, progress, sharding
from sslx.evaluation import eval_splits, extract


def _neighbours(query, feats, labels, rows, k: int, axes: tuple):
  """Per device (under shard_map): the k most similar of this device's rows to every query,
  then the k best of every device's candidates: ([Q, k] similarities, [Q, k] labels), sorted
  descending. `rows` are the rows' global positions, -1 for padding (never a neighbour)."""
  sims = jnp.where(rows[None, :] >= 0, query @ feats.T, -jnp.inf)  # [Q, N_local]
  top_sims, top_idx = jax.lax.top_k(sims, min(k, feats.shape[0]))
  # Device order is row order, so among equal similarities the lower row still comes first.
  top_sims = jax.lax.all_gather(top_sims, axes, axis=1, tiled=True)  # [Q, devices · k]
  top_labels = jax.lax.all_gather(labels[top_idx], axes, axis=1, tiled=True)
  best_sims, best = jax.lax.top_k(top_sims, k)
  return best_sims, jnp.take_along_axis(top_labels, best, axis=1)


@functools.partial(jax.jit, static_argnames=("mesh", "ks", "num_classes"))
def _chunk_predictions(
  query, train_feats, train_labels, rows, temperatures, mesh: Mesh, ks: tuple, num_classes: int
):
  """[len(ks), len(temperatures), Q] predicted classes of the queries [Q, D] (replicated;
  l2-normalised here), against the normalised training features sharded by rows."""
  axes = tuple(mesh.axis_names)
  top_sims, labels = jax.shard_map(
    functools.partial(_neighbours, k=ks[-1], axes=axes),
    mesh=mesh,
    in_specs=(P(), P(axes), P(axes), P(axes)),
    out_specs=(P(), P()),
    check_vma=False,
  )(losses.l2_normalize(query), train_feats, train_labels, rows)
  q = jnp.arange(query.shape[0])[:, None]
  rank = jnp.arange(ks[-1])[None, :]
  preds = []
  for k in ks:
    per_t = []
    for t in range(temperatures.shape[0]):
      w = jnp.where(rank < k, jnp.exp(top_sims / temperatures[t]), 0.0)
      votes = jnp.zeros((query.shape[0], num_classes)).at[q, labels].add(w)
      per_t.append(jnp.argmax(votes, -1))
    preds.append(jnp.stack(per_t))
  return jnp.stack(preds)


def shard_rows(feats, labels, mesh: Mesh) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(l2-normalised features [N', D], labels [N'], positions [N']) sharded by rows over every
  device of `mesh`, N' = N padded to a multiple of the device count (padding: position -1)."""
  normalise = jax.jit(
    losses.l2_normalize, out_shardings=sharding.batch_sharding(mesh), donate_argnums=0
  )
  return (
    normalise(sharding.rows_over_mesh(np.asarray(feats, np.float32), mesh)),
    sharding.rows_over_mesh(np.asarray(labels, np.int32), mesh),
    sharding.rows_over_mesh(np.arange(len(feats), dtype=np.int32), mesh, fill=-1),
  )


def knn_accuracy(
  train_feats,
  train_labels,
  test_feats,
  test_labels,
  num_classes: int,
  ks=(20, 200),
  temperature: float = 0.07,
  chunk: int = 1024,
  temperatures=(),
  what: str = "k-NN",
  mesh: Mesh | None = None,
) -> dict:
  """Top-1 accuracy (%) of weighted k-NN for each k in `ks` and each temperature.

  Args:
    train_feats: [N, D]; train_labels: [N] int; test_feats: [M, D]; test_labels: [M] (host
      arrays, the same on every process).
    what: the name progress lines give the work (`progress.Ticker`; long runs only).
    mesh: the devices the training features are sharded over (None: this process's first).
  Returns:
    {"knn@k": accuracy at `temperature`, "knn@k_T<t>": at each extra t in `temperatures`}.
  """
  mesh = sharding.local_mesh() if mesh is None else mesh
  n = len(train_feats)
  train, labels, rows = shard_rows(train_feats, train_labels, mesh)
  ks = sorted(int(k) for k in ks)
  eff = tuple(sorted({min(k, n) for k in ks}))
  temps = [float(temperature)] + [float(t) for t in temperatures if float(t) != float(temperature)]
  t_arr = jnp.asarray(temps, jnp.float32)
  correct = np.zeros((len(eff), len(temps)), np.int64)
  test = np.asarray(test_feats, np.float32)
  test_labels = np.asarray(test_labels)
  m = test.shape[0]
  replicated = sharding.replicated(mesh)
  ticker = progress.Ticker(what, m, "test images")
  for start in range(0, m, chunk):
    q = test[start : start + chunk]
    n_real = q.shape[0]
    if n_real < chunk and m > chunk:  # pad to a fixed shape: one compilation
      q = np.pad(q, ((0, chunk - n_real), (0, 0)))
    out = _chunk_predictions(
      sharding.host_to_global(q, replicated), train, labels, rows, t_arr, mesh, eff, num_classes
    )
    pred = np.asarray(out.addressable_data(0))
    correct += (pred[:, :, :n_real] == test_labels[start : start + n_real]).sum(-1)
    ticker.update(start + n_real)
    preemption.evaluation_sync_point()  # several processes: stop together on SIGTERM
  ticker.finish()
  out = {}
  for k in ks:
    i = eff.index(min(k, n))
    for j, t in enumerate(temps):
      key = f"knn@{k}" if j == 0 else f"knn@{k}_T{t:g}"
      out[key] = float(100.0 * correct[i, j] / m)
  return out


def run(cfg, feats) -> dict:
  return knn_accuracy(
    feats.train,
    feats.train_labels,
    feats.test,
    feats.test_labels,
    feats.num_classes,
    ks=tuple(cfg.get("ks", (20, 200))),
    temperature=cfg.get("temperature", 0.07),
    chunk=cfg.get("chunk", 1024),
    temperatures=tuple(cfg.get("temperatures", ())),
    what=feats.what("k-NN"),
    mesh=feats.mesh,
  )


class PeriodicKnn:
  """k-NN on a fixed subset of the labelled data every `config.eval_every_steps` steps,
  written to TensorBoard as eval/knn@k (the final evaluation writes the same tags at the last
  step, on the full data): a run's progress is visible before it ends. The subset (the first
  `eval_every_subset` training images and half as many test images of a fixed permutation) is
  decoded once; features are extracted over the mesh as in the final evaluation."""

  def __init__(self, config, method, mesh, writer):
    self.every = int(config.get("eval_every_steps", 0) or 0)
    self.method, self.mesh, self.writer = method, mesh, writer
    self.data = None
    if self.every <= 0:
      return
    splits = eval_splits(config)
    if splits is None:
      progress.console("eval_every_steps ignored: the dataset has no labels")
      self.every = 0
      return
    train, test, num_classes = splits
    n = int(config.get("eval_every_subset", 1000))
    rng = np.random.default_rng(0)
    itr = np.sort(rng.permutation(len(train))[:n])
    ite = np.sort(rng.permutation(len(test))[: max(n // 2, 1)])
    # only the subset is decoded (not the eval_train_limit images the final evaluation reads)
    xtr, ytr = dataclasses.replace(train, indices=train.indices[itr], limit=0).decode()
    xte, yte = dataclasses.replace(test, indices=test.indices[ite]).decode()
    self.data = (xtr, ytr, xte, yte, num_classes)
    knn_cfg = dict(config.get("evals", {}).get("knn", {}) or {})
    self.ks = tuple(k for k in knn_cfg.get("ks", (20, 200)) if k <= len(itr)) or (len(itr),)
    self.temperature = knn_cfg.get("temperature", 0.07)
    self.batch = config.get("eval_batch_size", 512)

  def __call__(self, step: int, state) -> dict | None:
    if self.every <= 0 or step % self.every:
      return None
    xtr, ytr, xte, yte, num_classes = self.data
    params, batch_stats = self.method.eval_variables(
      state.params["model"], state.batch_stats, state.method_state
    )  # the network the method evaluates (DINO: the teacher)
    fn = functools.partial(self.method.encode, params, batch_stats)
    res = knn_accuracy(
      extract(fn, xtr, self.mesh, self.batch),
      ytr,
      extract(fn, xte, self.mesh, self.batch),
      yte,
      num_classes,
      ks=self.ks,
      temperature=self.temperature,
      mesh=self.mesh,
    )
    if self.writer is not None:
      self.writer.scalars(step, res, prefix="eval/")
    progress.console(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()))
    return res
