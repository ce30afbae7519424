"""Helpers for experiment configs: argument parsing, durations and up-front validation.

Everything here runs before any data is read or any array is built, so a typo or an unknown
name costs the user nothing but a clear message.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from sslx import data, evaluation, methods, models, optim


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


def base_config(**settings) -> ml_collections.ConfigDict:
  """What every experiment file shares before it names its method, model, augmentations,
  optimizer and schedule: one data-parallel mesh axis with replicated parameters, the
  embedded dataset, logging/checkpoint cadence, the online probe, and the end-of-run
  evaluations (k-NN@20/200 and a linear probe, with the untrained-encoder and raw-pixel
  baselines); the CPU demos' encoder (the 4-conv CNN), optimizer (AdamW 2e-3, weight decay
  1e-4, 0.2 warm-up epochs) and batch (64). `settings` (method=..., model=..., augment=...,
  optimizer=..., batch_size=..., num_epochs=... and any top-level key) are set on top;
  experiment files override the rest."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # tuples, not lists: ml_collections can override tuples from the command line
  # (--config.mesh='(("data", -1), ("fsdp", 8))')
  c.mesh = (("data", -1),)
  c.sharding_rules = ((".*", "replicate"),)
  c.dataset = dataset("embedded")
  c.model = model("convnet", widths=(32, 64, 128, 256))
  c.optimizer = optimizer("adamw", 2e-3, weight_decay=1e-4, warmup_epochs=0.2)
  c.batch_size = 64
  c.total_steps = 0
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  # Wall-clock cadence beside the step cadence (0: off); a save happens when either is due.
  c.checkpoint_every_minutes = 0.0
  c.keep_checkpoints = 2
  # Steps that are multiples of this are kept forever beside the latest ones (0: none).
  c.keep_every_steps = 0
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
  # protocols that train on images (finetune, linear_aug) decode both splits up front when
  # their images take at most this many GB decoded, and read them batch by batch otherwise;
  # what can only be decoded whole (the baselines, tfds images for those protocols) and
  # would take more is refused at start-up
  c.eval_decode_gb = 4.0
  # k-NN on a fixed subset every N steps, to TensorBoard (eval/knn@k); 0: off
  c.eval_every_steps = 0
  c.eval_every_subset = 1000  # training images in that subset (test images: half as many)
  # encoder weights to start from: timm:<model>, torchvision:<model> or file:<path>
  c.init_from = ""
  c.peer_python = ""  # a Python with torch (+ timm/torchvision) for init_from's torch side
  for key, value in settings.items():
    c[key] = value
  return c


# ---------------------------------------------------------------------------------------------
# Fragments experiment files compose (flax's configs/ and big_vision's config helpers in spirit):
# each returns a fresh ConfigDict holding every key its consumer reads, so any of them can be
# overridden from the command line.


def method(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.method`: the method's module name (sslx/methods/<name>.py) and every setting it
  reads, from the module's `DEFAULTS` (the paper's values: the one place they are written),
  then its `VERSIONS[version]` where it has versions, with `overrides` applied; an unknown setting is an error naming the valid ones."""
  defaults = getattr(methods.get(name), "DEFAULTS", None)
  if defaults is None:  # a method module without DEFAULTS takes its settings as given
    return ml_collections.ConfigDict(dict(name=name, **overrides))
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise ValueError(
      f"method {name!r} has no setting(s) {unknown}; valid: {sorted(defaults)} "
      f"(sslx/methods/{name}.py DEFAULTS)"
    )
  # A module with VERSIONS (MoCo v1/v2) fills the chosen version's values before the
  # explicit overrides, so `method("moco", version="v1")` is MoCo v1 as published.
  versions = getattr(methods.get(name), "VERSIONS", {})
  version = overrides.get("version", defaults.get("version"))
  if versions and version not in versions:
    raise ValueError(f"method {name!r}: version={version!r}; valid: {sorted(versions)}")
  chosen = versions.get(version, {}) if versions else {}
  return ml_collections.ConfigDict(dict(name=name, **{**defaults, **chosen, **overrides}))


def model(name: str, **kwargs) -> ml_collections.ConfigDict:
  """`config.model`: a registered model name (sslx/models) and its constructor's kwargs.

  A CNN that picks its convolution by backend (`conv_impl="auto"`: the CPU-fast one on CPU,
  XLA's own elsewhere) shows the choice, so `--config.model.conv_impl=xla` can pin it."""
  if models.registry.takes_option(name, "conv_impl"):
    kwargs.setdefault("conv_impl", "auto")
  return ml_collections.ConfigDict(dict(name=name, **kwargs))


def dataset(kind: str = "embedded") -> ml_collections.ConfigDict:
  """`embedded`: the CIFAR-10 subset shipped in the package (32 px); `cifar10`: an ImageFolder
  directory or archive of CIFAR-10 (`dataset.path`); `imagenet`: ImageNet-1k through tfds
  (`imagenet2012`, 224 px, the validation split for evaluation)."""
  small = dict(
    path="",
    train_split="train",
    eval_split="test",
    image_size=32,
    num_workers=0,
    normalization="cifar10",
    # Random-resized crops made on the host from the full image (sslx.data.crops); the device
    # then only flips and colours. For large photos (imagenet_run turns it on where the method
    # takes host views); 32 px data keeps the device crop.
    host_crops=False,
  )
  # fmt: off
  imagenet = dict(
    small, name="tfds", tfds_name="imagenet2012", data_dir="", eval_split="validation",
    image_size=224, num_workers=8, normalization="imagenet",
  )
  # fmt: on
  kinds = {
    "embedded": dict(small, name="embedded"),
    "cifar10": dict(small, name="image_folder"),
    "imagenet": imagenet,
  }
  if kind not in kinds:
    raise ValueError(f"dataset kind {kind!r}; valid: {sorted(kinds)}")
  return ml_collections.ConfigDict(kinds[kind])


def two_views(
  size: int = 32,
  scale: tuple[float, float] = (0.2, 1.0),
  *,
  jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
  jitter_prob: float = 0.8,
  grayscale_prob: float = 0.2,
  blur_prob: float = 0.0,
  flip_prob: float = 0.5,
  solarize_prob: float = 0.0,
) -> ml_collections.ConfigDict:
  """`config.augment` for methods whose views all share one recipe (augment.ViewParams):
  SimCLR's random-resized crop, flip, colour jitter (brightness, contrast, saturation, hue),
  grayscale, blur and solarize. Blur defaults off: at 32 px it destroys the image."""
  return ml_collections.ConfigDict(
    dict(
      crop_size=size,
      crop_scale=tuple(scale),
      **colour(jitter, jitter_prob, grayscale_prob, flip_prob),
      blur_prob=blur_prob,
      solarize_prob=solarize_prob,
    )
  )


def colour(jitter=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8, grayscale_prob=0.2, flip_prob=0.5) -> dict:
  """The colour and flip keys of augment.ViewParams: jitter strengths (brightness, contrast,
  saturation, hue) applied with probability `jitter_prob`, grayscale and flip probabilities."""
  strengths = dict(zip(("brightness", "contrast", "saturation", "hue"), jitter, strict=True))
  return dict(
    strengths, jitter_prob=jitter_prob, grayscale_prob=grayscale_prob, flip_prob=flip_prob
  )


def crop_only(size: int = 32, scale: tuple[float, float] = (0.2, 1.0)) -> ml_collections.ConfigDict:
  """Random-resized crop and flip, nothing else (MAE's augmentation, App. A.1)."""
  return two_views(size, scale, jitter=(0.0, 0.0, 0.0, 0.0), jitter_prob=0.0, grayscale_prob=0.0)


def multi_crop(
  global_size: int = 32,
  global_scale: tuple[float, float] = (0.2, 1.0),
  *,
  num_local: int = 0,
  local_size: int = 16,
  local_scale: tuple[float, float] = (0.05, 0.3),
  global_blur: tuple[float, float] = (0.0, 0.0),
  global_solarize: tuple[float, float] = (0.0, 0.2),
  local_blur: float = 0.0,
) -> ml_collections.ConfigDict:
  """`config.augment` for BYOL's asymmetric two views (blur 1.0 / 0.1 and solarize 0 / 0.2 at
  224 px, BYOL Table 6) and DINO's multi-crop (2 global + `num_local` local crops, §3.1):
  colour jitter 0.4/0.4/0.2/0.1 at p = 0.8, grayscale 0.2, flip 0.5 on every view."""
  c = dict(
    global_crop_size=global_size,
    global_crop_scale=tuple(global_scale),
    global_blur_prob=tuple(global_blur),
    global_solarize_prob=tuple(global_solarize),
    num_local_crops=num_local,
  )
  if num_local:
    c.update(
      local_crop_size=local_size,
      local_crop_scale=tuple(local_scale),
      local_blur_prob=local_blur,
      local_solarize_prob=0.0,
    )
  c.update(colour(jitter=(0.4, 0.4, 0.2, 0.1)))
  return ml_collections.ConfigDict(c)


def optimizer(
  name: str,
  base_lr: float,
  *,
  lr_scaling: str = "none",
  weight_decay: float = 0.0,
  warmup_epochs: float = 0.0,
  final_lr_fraction: float = 0.0,
  **extra,
) -> ml_collections.ConfigDict:
  """`config.optimizer` (sslx/optim.py): `name` is adamw | lars | sgd; the learning rate is
  `base_lr` scaled by the batch size as `lr_scaling` says (none | linear: ×B/256 | sqrt), with
  linear warm-up and a cosine decay to `final_lr_fraction` of the peak. Every optimizer's knobs
  are present (momentum and trust coefficient for LARS/SGD, b1/b2 for AdamW, grad_clip_norm:
  0 = off, no_decay: parameter names kept out of weight decay) so any can be set from the
  command line; `extra` overrides them (and may add
  weight_decay_end: a cosine weight-decay schedule, see sslx/optim.py)."""
  c = dict(
    name=name,
    base_lr=base_lr,
    lr_scaling=lr_scaling,
    weight_decay=weight_decay,
    warmup_epochs=warmup_epochs,
    final_lr_fraction=final_lr_fraction,
    momentum=0.9,
    trust_coefficient=0.001,
    b1=0.9,
    b2=0.999,
    grad_clip_norm=0.0,
    no_decay=(),
  )
  optional = {"nesterov", "eps", "decay_all", "warmup_steps", "weight_decay_end"}
  unknown = sorted(set(extra) - set(c) - optional)
  if unknown:
    raise ValueError(f"optimizer: unknown keys {unknown}; valid: {sorted(c)}")
  c.update(extra)
  return ml_collections.ConfigDict(c)


# Methods whose accelerator-length presets compute in bf16 (their heads follow model.dtype).
BF16_METHODS = ("simclr", "byol", "moco", "vicreg", "dino", "dinov2", "mae", "beit", "data2vec")


def long_run(
  c: ml_collections.ConfigDict,
  *,
  batch_size: int,
  epochs: float,
  checkpoint_every_steps: int = 2000,
) -> ml_collections.ConfigDict:
  """The settings every accelerator-length preset shares: epochs (not steps), logs every 100
  steps, a checkpoint every `checkpoint_every_steps`, no baselines at the end (an untrained
  ResNet-50 evaluated on ImageNet costs an hour and says little)."""
  c.batch_size = batch_size
  c.total_steps = 0
  c.num_epochs = float(epochs)
  if c.method.name in BF16_METHODS and c.model.name.startswith(("vit", "resnet", "convnet")):
    # bf16 matmuls/convolutions (encoder, heads, MAE's decoder); parameters, normalisation
    # statistics, softmax and losses stay float32 (sslx/models/precision.py)
    c.model.dtype = "bfloat16"
  c.checkpoint_every_steps = checkpoint_every_steps
  c.log_every_steps = 100
  c.eval_baselines = False
  return c


def imagenet_run(
  c: ml_collections.ConfigDict, *, batch_size: int, epochs: float
) -> ml_collections.ConfigDict:
  """`long_run` on ImageNet: the tfds dataset, a checkpoint every 5000 steps, and the frozen
  evaluations on a 100k-image class-balanced subset of the train split. Their images are read
  batch by batch (`evaluation.extract_split`), so `eval_train_limit=0`, the whole split as the
  papers' k-NN uses it, costs host memory for its features only (1.28M x D x 4 bytes: 2 GB
  for ViT-S/16, 10 GB for ResNet-50), which k-NN and the frozen probe split over the devices."""
  c.dataset = dataset("imagenet")
  c.dataset.host_crops = c.method.name in data.HOST_CROP_METHODS
  # Planned for TPU slices, where the TPU cost model counts more memory traffic for the
  # compacted blur's row gathers than the blur they save (set True on GPUs).
  c.augment.compact_blur = False
  c.eval_train_limit = 100_000
  return long_run(c, batch_size=batch_size, epochs=epochs, checkpoint_every_steps=5000)


def cifar10_run(
  c: ml_collections.ConfigDict, *, batch_size: int, epochs: float
) -> ml_collections.ConfigDict:
  """`long_run` on full CIFAR-10 read from `dataset.path` (an ImageFolder directory/archive)."""
  c.dataset.name = "image_folder"
  return long_run(c, batch_size=batch_size, epochs=epochs)


def sibling(file: str, name: str):
  """The experiment module `name` next to experiment file `file`, for a variant that is a small
  override of another experiment (MoCo v2 of MoCo v1)."""
  path = os.path.join(os.path.dirname(os.path.abspath(file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_sslx_experiment_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny(c: ml_collections.ConfigDict, opts) -> ml_collections.ConfigDict:
  """Every experiment's `tiny` preset: its cpu preset shrunk to seconds for smoke tests and the
  test-suite (`experiments/<name>.py:tiny`): the model's widths cut by 8 (same number of stages,
  ViTs at width 32, depth 2, 2 heads), batch 16, 4 steps (or `steps=`), no periodic
  checkpoint, and k-NN@5 on 500 train images as the only evaluation."""
  del opts
  m = c.model
  if "widths" in m:
    m.widths = tuple(max(w // 8, 4) for w in m.widths)
  if m.name.startswith("vit"):
    m.update(dim=32, depth=2, num_heads=2)
    if "top_k" in c.method:  # data2vec's target layers: at most the ViT's depth
      c.method.top_k = min(int(c.method.top_k), m.depth)
  c.update(batch_size=16, num_epochs=0.0, total_steps=4, log_every_steps=2)
  c.update(checkpoint_every_steps=0, eval_baselines=False, eval_train_limit=500)
  c.evals = ml_collections.ConfigDict(dict(knn=dict(ks=(5,), temperature=0.07)))
  return c


def presets(arg: str, cpu, file: str, **others):
  """The experiment-file protocol: `get_config(arg)` = `presets(arg, cpu, __file__,
  cifar10=..., imagenet=...)`. `cpu(opts)` builds the default preset; each other preset is a
  function `(c, opts)` that overrides the cpu config in place (presets are small overrides).

  `arg` is "preset[,word=value...]": `experiments/dino.py:cpu,steps=50` or
  `experiments/simclr.py:cifar10,epochs=100` (`steps=` and `epochs=` for every experiment,
  plus any words declared as defaults in a `cpu.OPTS` dict). Any key can then be overridden
  with --config.<key>=value; an unknown key fails at once, naming the valid ones."""
  name, opts = split_arg(arg, steps=0, epochs=0.0, **getattr(cpu, "OPTS", {}))
  others = dict(others, tiny=tiny)
  if name != "cpu" and name not in others:
    valid = ", ".join(["cpu", *others])
    raise ValueError(
      f"unknown preset {name!r} for experiments/{os.path.basename(file)}; valid: {valid}"
    )
  c = cpu(opts)
  if name != "cpu":
    others[name](c, opts)
  return with_duration(c, opts)


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
