r"""Runs an experiment's sweep points one after another, locally.

    python -m sslx sweep --config=experiments/simclr.py --workdir=/tmp/sweep

`experiments/<name>.py` may define `sweep() -> list[dict]`, each dict mapping dotted config keys
to values (e.g. {"method.temperature": 0.1, "batch_size": 128}). Point i trains in
<workdir>/<i> (resuming there if it holds a checkpoint) with its overrides applied on top of
the preset; then `python -m sslx report --workdirs=<workdir>/0,<workdir>/1,...` compares them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os

from sslx import config_lib, paths, train


def load_sweep(config_path: str) -> list[dict]:
  """The list of override dicts from `sweep()` in the experiment file (path[:arg])."""
  path = config_path.partition(":")[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config={config_path}: experiment file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location("_sslx_sweep_experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} defines no sweep(): add `def sweep(): return [{{...}}, ...]`")
  points = list(module.sweep())
  for i, p in enumerate(points):
    if not isinstance(p, dict):
      raise ValueError(f"{path}: sweep() point {i} is {type(p).__name__}, not a dict")
  return points


def apply_overrides(config, overrides: dict):
  """A copy of `config` with dotted keys set; an unknown key is an error naming it."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for i, p in enumerate(parents):
      if p not in node:
        raise KeyError(
          f"sweep override {key!r}: unknown key {p!r} in "
          f"{'.'.join(parents[:i]) or '<top level>'}; valid: {sorted(node.keys())}"
        )
      node = node[p]
    if leaf not in node:
      raise KeyError(f"sweep override {key!r}: unknown key {leaf!r}; valid: {sorted(node.keys())}")
    node[leaf] = value
  return config


def run_sweep(config_spec: str, workdir: str, train_fn=None) -> list[dict]:
  """Trains each sweep point in workdir/<i>; returns their results (in order). `train_fn`
  (config, workdir) -> results defaults to sslx.train.train_and_evaluate."""
  train_fn = train_fn or train.train_and_evaluate
  base = config_lib.load_experiment(config_spec)
  points = load_sweep(config_spec)
  configs = [apply_overrides(base, p) for p in points]  # every typo surfaces before any run
  for c in configs:
    config_lib.validate(c)
  paths.write_text(
    paths.join(workdir, "sweep.json"),
    json.dumps({"config": config_spec, "points": points}, indent=2, default=str),
  )
  results = []
  for i, (c, p) in enumerate(zip(configs, points)):
    print(f"sweep point {i + 1}/{len(points)}: {p}", flush=True)
    results.append(train_fn(c, os.path.join(workdir, str(i))))
  return results
