"""Helpers for experiment configs: argument parsing, durations and up-front validation.

Everything here runs before any data is read or any array is built, so a typo or an unknown
name costs the user nothing but a clear message.
"""

from __future__ import annotations

import ml_collections

from sslx import methods, optim


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
  """Parses "cpu,variant=S/16,steps=10" into a ConfigDict over `defaults`.

  A bare word sets a boolean flag to True; key=value parses value with the type of the
  default. Unknown keys are an error naming the valid ones.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is unknown; valid: {sorted(defaults)}")
    if not eq:
      out[key] = True
      continue
    typ = type(defaults[key])
    if typ is bool:
      out[key] = value.lower() in ("1", "true", "yes", "on")
    else:
      out[key] = typ(value) if defaults[key] is not None else value
  return out


def split_arg(arg: str, **defaults) -> tuple[str, ml_collections.ConfigDict]:
  """ "cifar10,steps=50" -> ("cifar10", parse_arg("steps=50", **defaults)); "" -> "cpu"."""
  words = (arg or "cpu").split(",")
  return words[0] or "cpu", parse_arg(",".join(words[1:]), **defaults)


def base_config() -> ml_collections.ConfigDict:
  """What every experiment file shares before it names its method, model, augmentations,
  optimizer and schedule: one data-parallel mesh axis with replicated parameters, the
  embedded dataset, logging/checkpoint cadence, the online probe, and the end-of-run
  evaluations (k-NN@20/200 and a linear probe, with the untrained-encoder and raw-pixel
  baselines). Experiment files override any of it."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # tuples, not lists: ml_collections can override tuples from the command line
  # (--config.mesh='(("data", -1), ("fsdp", 8))')
  c.mesh = (("data", -1),)
  c.sharding_rules = ((".*", "replicate"),)
  c.dataset = ml_collections.ConfigDict(
    dict(
      name="embedded",
      path="",
      train_split="train",
      eval_split="test",
      image_size=32,
      num_workers=0,
      normalization="cifar10",
    )
  )
  c.total_steps = 0
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.tensorboard = True
  c.online_probe = ml_collections.ConfigDict(dict(enabled=True, lr=1e-3))
  c.evals = ml_collections.ConfigDict(
    dict(
      knn=dict(ks=(20, 200), temperature=0.07),
      linear=dict(epochs=100, batch_size=256, lr=0.1, weight_decay=0.0),
    )
  )
  c.eval_baselines = True
  c.eval_batch_size = 500
  c.eval_train_limit = 0
  # k-NN on a fixed subset every N steps, to TensorBoard (eval/knn@k); 0: off
  c.eval_every_steps = 0
  c.eval_every_subset = 1000  # training images in that subset (test images: half as many)
  # encoder weights to start from: timm:<model>, torchvision:<model> or file:<path>
  c.init_from = ""
  c.peer_python = ""  # a Python with torch (+ timm/torchvision) for init_from's torch side
  return c


def with_duration(c: ml_collections.ConfigDict, opts) -> ml_collections.ConfigDict:
  """Applies a preset's `epochs=` / `steps=` words (when given) and returns `c`. `epochs=`
  replaces a preset's fixed step count; `steps=` wins over both."""
  if opts.get("epochs"):
    c.num_epochs = opts.epochs
    c.total_steps = 0
  if opts.get("steps"):
    c.total_steps = opts.steps
  return c


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return max(num_examples // batch_size, 1)


def total_steps(config, num_examples: int) -> int:
  """`config.total_steps` if set (> 0), else `num_epochs` epochs of `batch_size`."""
  if config.get("total_steps", 0):
    return int(config.total_steps)
  if not config.get("num_epochs", 0):
    raise ValueError("set config.num_epochs or config.total_steps")
  return int(round(config.num_epochs * steps_per_epoch(num_examples, config.batch_size)))


def _check_choice(key: str, value, choices):
  if value not in choices:
    raise ValueError(f"{key}={value!r} is not valid; valid choices: {sorted(choices)}")


def validate(config, num_devices: int | None = None) -> None:
  """Fails fast on unknown names and inconsistent sizes, naming the key."""
  from sslx import data, evaluation, models  # local: keeps config files light to import

  _check_choice("method.name", config.method.name, methods.available())
  _check_choice("model.name", config.model.name, models.available_models())
  _check_choice("dataset.name", config.dataset.name, data.DATASETS)
  _check_choice("optimizer.name", config.optimizer.name, optim.OPTIMIZERS)
  _check_choice(
    "optimizer.lr_scaling", config.optimizer.get("lr_scaling", "linear"), optim.LR_SCALINGS
  )
  for name in config.get("evals", {}):
    _check_choice("evals", name, evaluation.available())
  if config.batch_size <= 0:
    raise ValueError(f"batch_size={config.batch_size} must be positive")
  if num_devices and config.batch_size % num_devices:
    raise ValueError(
      f"batch_size={config.batch_size} (global, in images) must be divisible "
      f"by the number of devices in the mesh ({num_devices})"
    )
  if config.get("total_steps", 0) < 0 or config.get("num_epochs", 0) < 0:
    raise ValueError("total_steps and num_epochs must be >= 0")


def load_experiment(spec: str) -> ml_collections.ConfigDict:
  """Loads "path/to/experiment.py[:arg]" the way --config does."""
  import importlib.util
  import os

  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config={spec}: experiment file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("_sslx_experiment", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def check_override_keys(argv: list[str]) -> str | None:
  """Returns a clear message for the first `--config.a.b=v` whose key path does not exist in
  the experiment's config (None if all exist). ml_collections would also refuse the key, but
  with a bare AttributeError; this names the flag, the key and the valid keys."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  try:
    config = load_experiment(spec)
  except Exception as e:  # reported by the normal flag parsing, with its own message
    del e
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config.") :].split("=", 1)[0]
    node = config
    parts = path.split(".")
    for i, key in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        where = ".".join(parts[:i]) or "<top level>"
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return (
          f"{arg.split('=', 1)[0]}: unknown config key {key!r} in {where} of {spec}; "
          f"valid keys there: {valid}"
        )
      node = node[key]
  return None
