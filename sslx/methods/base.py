"""The contract between a method and the rest of sslx: :class:`Method`.

A method is a frozen dataclass deriving from :class:`Method`, built from config *outside* jitted
code by its module's ``create(config, total_steps)`` (hyperparameters become Python constants of
the traced step, never a config object inside it; ``total_steps`` lets it build schedules such as
EMA momentum or teacher temperature as functions of the step). The trainer, evaluation,
fine-tuning and export call only what :class:`Method` declares; the optional hooks have working
defaults, so nothing asks ``hasattr``.

``images`` are the raw uint8 [B, H, W, 3] batch; each method applies its own augmentations on
device. All non-gradient state (queues, centers, EMA teachers) lives in ``method_state``.

Beside the class, a method module defines ``DEFAULTS`` (every ``config.method`` setting it reads,
at the paper's values; ``config_lib.method`` applies an experiment's overrides to it) and may
define ``PICTURES`` (``python -m sslx visualize`` subcommands that show what it learned; the
training command draws them from the final checkpoint).
"""

from __future__ import annotations

import abc
import dataclasses
import typing
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sslx import augment, masking, models, multicrop


class Variables(NamedTuple):
  params: Any
  batch_stats: Any
  method_state: Any


class LossAux(NamedTuple):
  batch_stats: Any  # updated BatchNorm statistics
  method_state: Any  # updated non-gradient state
  metrics: dict  # scalars to log
  features: jax.Array  # [B, D] encoder features of one view, for the online probe


class Method(abc.ABC):
  """What every method provides. Subclasses are frozen dataclasses; `preprocess` (a
  :class:`Preprocess`) is expected as a field by the default :meth:`encoder_apply`."""

  @abc.abstractmethod
  def init(self, rng: jax.Array, images: jax.Array) -> Variables:
    """Initial (params, batch_stats, method_state) for a sample batch of uint8 images."""

  @abc.abstractmethod
  def loss(
    self, params, batch_stats, method_state, images: jax.Array, rng: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, LossAux]:
    """The scalar training loss of one global batch and everything else the step returns."""

  def encode(self, params, batch_stats, images: jax.Array) -> jax.Array:
    """[B, D] frozen features for evaluation (eval mode: no dropout, running statistics).
    Default: :meth:`encoder_apply` with `train=False`."""
    return self.encoder_apply(params, batch_stats, images, train=False)[0]

  def encoder_input(self, images: jax.Array) -> jax.Array:
    """What the encoder is given for whole images (evaluation, fine-tuning, export): by
    default `preprocess(images)`. A method whose encoder trains on inputs of another scale or
    normalisation (jigsaw's tiles) returns whole images as its encoder saw its inputs."""
    return self.preprocess(images)

  def encoder_apply(self, params, batch_stats, images, train: bool, rng=None):
    """(features [B, D], updated batch_stats) of the encoder alone, in training mode when
    `train` (fine-tuning trains it). Default: a ``self.net`` with an ``encode(x, train)``
    method, as the joint-embedding methods have; methods shaped otherwise override it."""
    net = getattr(self, "net", None)
    if net is None or not hasattr(type(net), "encode"):
      raise NotImplementedError(
        f"{type(self).__name__} has no `net` with encode(x, train): override "
        "Method.encoder_apply to fine-tune its encoder"
      )
    variables = {"params": params, "batch_stats": batch_stats}
    x = self.encoder_input(images)
    rngs = {"dropout": rng} if rng is not None else {}
    if train:
      feats, updates = net.apply(
        variables, x, train=True, method=type(net).encode, mutable=["batch_stats"], rngs=rngs
      )
      return feats, updates.get("batch_stats", batch_stats)
    return net.apply(variables, x, train=False, method=type(net).encode), batch_stats

  def finetune_params(self, params):
    """The part of the parameters fine-tuning trains (default: all; heads get no gradient)."""
    return params

  # The network evaluation (k-NN, linear probe, fine-tuning, embeddings) encodes with, by name
  # (written to results.json); a method with a teacher may choose it by `method.eval_encoder`.
  eval_encoder = "online"

  def eval_variables(self, params, batch_stats, method_state):
    """(params, batch_stats) evaluation applies :meth:`encode` to. Default: the trained params;
    DINO/DINOv2 return their EMA teacher's, as the papers evaluate it."""
    del method_state
    return params, batch_stats

  def after_update(self, params, method_state, step):
    """Called inside the jitted step after the optimizer update, with the updated params
    (EMA teachers: MoCo's key encoder, BYOL's target, DINO's teacher). Default: no change."""
    del params, step
    return method_state

  def wrap_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The trainer's optimizer for params["model"], wrapped (DINO/DINOv2 pause their heads'
    last layers, optimizer state included, during the first steps). Default: `tx`."""
    return tx

  def collapse_warning(self, metrics: dict) -> str | None:
    """Called on the host at every log step with the averaged metrics; a message is printed
    as a warning (e.g. embedding std or teacher entropy falling toward collapse)."""
    del metrics
    return None


class MaskedImageMethod(Method):
  """Masked image modeling (MAE, data2vec, BEiT): a ViT in `self.encoder` whose parameters are
  params["encoder"]; after pretraining only the encoder is kept (decoders, mask tokens and
  prediction heads are dropped, as the papers do)."""

  def encoder_apply(self, params, batch_stats, images, train: bool, rng=None):
    rngs = {"dropout": rng} if rng is not None else {}
    out = self.encoder.apply(
      {"params": params["encoder"]}, self.encoder_input(images), train=train, rngs=rngs
    )
    return out["pre_logits"], batch_stats

  def finetune_params(self, params):
    return {"encoder": params["encoder"]}


class MaskTokenMethod(MaskedImageMethod):
  """BEiT and data2vec: the ViT in `self.encoder` sees every patch, the masked ones replaced
  by a learned mask token e[M] (BEiT §2.3), and a linear `self.head` on its final patch tokens
  predicts the targets. Parameters: {"encoder", "mask_token" [1, 1, D], "head"}. Subclasses
  have the fields `encoder` (a ViT), `head`, `view` and `mask_ratio`."""

  min_block = 16  # the smallest block `mask` draws, in patches (BEiT Algorithm 1)

  def init_params(self, rng, images) -> dict:
    """Initial {"encoder", "mask_token", "head"} for the side the encoder will see."""
    s = self.view.crop_size if self.view is not None else images.shape[1]
    x = jnp.zeros((2, s, s, 3), jnp.float32)
    enc_rng, tok_rng, head_rng = jax.random.split(rng, 3)
    d = self.encoder.dim
    return {
      "encoder": self.encoder.init(enc_rng, x, train=False)["params"],
      "mask_token": jax.random.normal(tok_rng, (1, 1, d)) * 0.02,
      "head": self.head.init(head_rng, jnp.zeros((1, d)))["params"],
    }

  def mask(self, rng, x):
    """[B, N] bool (True = masked): BEiT's blockwise masking of `mask_ratio` of x's patches."""
    p = self.encoder.patch_size
    grid = (x.shape[1] // p, x.shape[2] // p)
    return masking.blockwise_masking(rng, x.shape[0], grid, self.mask_ratio, self.min_block)

  def predict(self, params, x, mask, rng=None):
    """([B, N, ·] head outputs per patch, [B, D] pre_logits) for normalised x [B, S, S, 3]
    and mask [B, N] (True = masked). With `rng` the encoder runs in training mode (stochastic
    depth), else in eval mode."""
    out = self.encoder.apply(
      {"params": params["encoder"]},
      x,
      train=rng is not None,
      token_mask=mask,
      mask_embedding=params["mask_token"],
      rngs=None if rng is None else {"dropout": rng},
    )
    return self.head.apply({"params": params["head"]}, out["tokens"][:, 1:]), out["pre_logits"]


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


def read_settings(cls: type, m, names: str) -> dict:
  """`config.method`'s values of the whitespace-separated `names`, each converted to the type
  its field in the method dataclass `cls` declares (float, int, bool, str, a tuple of them):
  what create() passes on as `name=float(m.name)`, written once."""
  hints = typing.get_type_hints(cls)
  out = {}
  for name in names.split():
    hint, value = hints[name], m[name]
    if typing.get_origin(hint) is tuple:
      out[name] = tuple(typing.get_args(hint)[0](v) for v in value)
    else:
      out[name] = hint(value)
  return out


def check_choice(key: str, value, choices):
  """`config.method.<key>` = `value`, checked against `choices` (listed as given)."""
  if value not in choices:
    raise ValueError(f"method.{key}={value!r}; valid choices: {choices}")
  return value


def check_eval_encoder(value: str, choices: tuple[str, ...]) -> str:
  """`method.eval_encoder` checked against the method's `choices`."""
  if value not in choices:
    raise ValueError(f"method.eval_encoder={value!r}; valid: {list(choices)}")
  return value


def init_net(net: nn.Module, preprocess, rng, images, size: int | None) -> dict:
  """`net`'s initial variables from two images of the batch, normalised and resized to the
  side the network will see (`size`; None keeps theirs)."""
  x = preprocess(images[:2])
  if size is not None and x.shape[1] != size:
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
  return net.init(rng, x, train=False)


def encoder_from_config(config):
  """The encoder `config.model` names, built with the rest of `config.model` as kwargs."""
  return models.create_model(config.model.name, **model_kwargs(config.model))


def crop_size(view: augment.ViewParams | None, config) -> int:
  """The side of the images the encoder sees: the view's crop, else the dataset's size."""
  return view.crop_size if view is not None else int(config.dataset.image_size)


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
  return augment.ViewParams.from_config(ml_collections.ConfigDict(cfg))


def view_pixels(rng, images, view):
  """[B, S, S, 3] float pixels in [0, 1] of one training view: `view`'s augmentation of the
  uint8 `images`, or the images rescaled as they are when augmentation is off (`view` None).
  Not yet normalised: pretext tasks cut tiles, holes or lightness from it first."""
  if view is None:
    return images.astype(jnp.float32) / 255.0
  return augment.augment_batch(rng, images, view)


def two_views(rng, images, view, preprocess):
  """[B·2, S, S, 3] normalised views, image-major: rows 2i and 2i + 1 come from image i
  (:func:`sslx.multicrop.per_image` splits them without moving rows between devices)."""
  if isinstance(images, multicrop.HostViews):  # cropped on the host (dataset.host_crops)
    x = multicrop.flat_views(images.global_views)
    if view is None:
      return preprocess(x)
    return preprocess(augment.augment_views(rng, x, (view, view), cropped=True))
  if view is None:
    return jnp.repeat(preprocess(images), 2, axis=0)
  # One vmapped pipeline over the doubled batch, not two calls: the same maths with half
  # the augmentation graph to compile.
  return preprocess(augment.augment_views(rng, images, (view, view)))
