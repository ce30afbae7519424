"""What the trainer needs from a method.

A method is a frozen dataclass built from config *outside* jitted code (its hyperparameters
become Python constants of the traced step, never a config object inside it), with three pure
functions:

  init(rng, images)                 -> Variables
  loss(variables, images, rng, step) -> (loss, LossAux)
  encode(params, batch_stats, images) -> [B, D] features for evaluation (train=False)

and optionally

  after_update(params, method_state, step) -> method_state
      called inside the jitted step after the optimizer update, with the updated params
      (EMA teachers: MoCo's key encoder, BYOL's target, DINO's teacher).

  eval_variables(params, batch_stats, method_state) -> (params, batch_stats)
      the variables evaluation (k-NN, linear probe, fine-tuning, embeddings) applies `encode`
      to, when they are not the trained params: DINO/DINOv2 evaluate the EMA teacher, as the
      papers do. The method names its choice in an `eval_encoder` attribute (written to
      results.json); without the hook the trained ("online") params are evaluated.

  collapse_warning(metrics: dict[str, float]) -> str | None
      called on the host at every log step with the averaged metrics; a message is printed
      as a warning (e.g. embedding std or teacher entropy falling toward collapse).

Each method module exposes `create(config, total_steps) -> method`; `total_steps` lets a
method build its schedules (EMA momentum, teacher temperature) as functions of the step.

`images` are the raw uint8 [B, H, W, 3] batch; each method applies its own augmentations on
device. All non-gradient state (queues, centers, EMA teachers) lives in `method_state`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sslx import augment


class Variables(NamedTuple):
  params: Any
  batch_stats: Any
  method_state: Any


class LossAux(NamedTuple):
  batch_stats: Any  # updated BatchNorm statistics
  method_state: Any  # updated non-gradient state
  metrics: dict  # scalars to log
  features: jax.Array  # [B, D] encoder features of one view, for the online probe


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Eval-time input transform: uint8 → float, mean/std normalised (no augmentation)."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def __call__(self, images: jax.Array) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
    return augment.normalize(x, self.mean, self.std)

  @classmethod
  def from_config(cls, dataset_cfg):
    name = dataset_cfg.get("normalization", "cifar10")
    stats = {
      "cifar10": (augment.CIFAR10_MEAN, augment.CIFAR10_STD),
      "imagenet": (augment.IMAGENET_MEAN, augment.IMAGENET_STD),
      "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    }
    if name not in stats:
      raise ValueError(f"dataset.normalization={name!r}; valid choices: {sorted(stats)}")
    mean, std = stats[name]
    return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def eval_variables(method, params, batch_stats, method_state):
  """(params, batch_stats) that evaluation applies `method.encode` to (see the module
  docstring): the method's `eval_variables` hook, else the trained params."""
  hook = getattr(method, "eval_variables", None)
  if hook is None:
    return params, batch_stats
  return hook(params, batch_stats, method_state)


def eval_encoder(method) -> str:
  """The name of the network evaluation uses (results.json's `eval_encoder`)."""
  return getattr(method, "eval_encoder", "online")


def check_eval_encoder(value: str, choices: tuple[str, ...]) -> str:
  if value not in choices:
    raise ValueError(f"method.eval_encoder={value!r}; valid: {list(choices)}")
  return value


def model_kwargs(model_cfg) -> dict:
  """Everything in `config.model` except its name is passed to the model's constructor."""
  return {
    k: (tuple(v) if isinstance(v, list) else v)
    for k, v in model_cfg.to_dict().items()
    if k != "name"
  }


def view_params(augment_cfg) -> augment.ViewParams | None:
  """ViewParams from `config.augment`, or None when `augment.enabled` is False (inputs are
  then used as given: benchmarks time the step on pre-augmented views, as the peer does)."""
  cfg = augment_cfg.to_dict()
  if not cfg.pop("enabled", True):
    return None
  import ml_collections

  return augment.ViewParams.from_config(ml_collections.ConfigDict(cfg))


def two_views(rng, images, view, preprocess):
  """[2B, S, S, 3] normalised views: rows i and i + B come from image i."""
  if view is None:
    x = preprocess(images)
    return jnp.concatenate([x, x], axis=0)
  # One vmapped pipeline over the doubled batch, not two calls: the same maths with half
  # the augmentation graph to compile.
  return preprocess(augment.augment_views(rng, images, (view, view)))
