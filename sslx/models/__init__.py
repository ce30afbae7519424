"""Encoders and heads for sslx.

Every model is a ``flax.linen`` module taking float32 images ``[B, H, W, 3]`` (NHWC) and
``train: bool``, and returning a dict of named outputs that always contains ``"pre_logits"``
``[B, D]`` -- the representation used for evaluation (k-NN, linear probe).

``create_model(name, **kwargs)`` builds a model from its registered name. Each model file
registers its names with :func:`register_model`; this module only imports those files, so
adding a model is a matter of decorating one factory function.

Names: ``resnet18``, ``resnet34``, ``resnet50``, ``vit_tiny``, ``vit_small``, ``vit_base``,
``vit_large``, ``vit_huge``, ``convnet``. The kwargs each accepts are those of the factory
(see ``resnet.py``, ``vit.py``, ``convnet.py``); an unknown kwarg raises ``TypeError`` naming it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
  """Decorator: register a factory ``fn(**kwargs) -> nn.Module`` under ``name``."""

  def deco(fn):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn

  return deco


def available_models() -> list:
  """Sorted list of registered model names."""
  return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
  """Build the model registered as ``name`` with the given keyword overrides.

  Raises ``ValueError`` for an unknown name (listing the valid choices) and ``TypeError``
  for a keyword the model does not accept (naming it and listing the accepted ones).
  """
  if name not in _REGISTRY:
    raise ValueError(
      f"model.name: unknown model {name!r}; valid choices: {', '.join(available_models())}"
    )
  fn = _REGISTRY[name]
  params = inspect.signature(fn).parameters
  if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
    bad = sorted(k for k in kwargs if k not in params)
    if bad:
      raise TypeError(
        f"model {name!r} got unknown option(s) {', '.join(map(repr, bad))}; "
        f"accepted: {', '.join(sorted(params))}"
      )
  return fn(**kwargs)


# Importing the model files fills the registry (they import ``register_model`` from here,
# which is already defined at this point).
from sslx.models import (  # noqa: E402,F401
  convnet,
  cpc_nets,  # noqa: E402,F401
  heads,
  resnet,
  vit,
)
from sslx.models.convnet import ConvNet  # noqa: E402,F401
from sslx.models.heads import MLPHead  # noqa: E402,F401
from sslx.models.resnet import ResNet  # noqa: E402,F401
from sslx.models.vit import ViT  # noqa: E402,F401

__all__ = [
  "create_model",
  "register_model",
  "available_models",
  "ResNet",
  "ViT",
  "ConvNet",
  "MLPHead",
]
