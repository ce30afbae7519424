"""The model registry: factories by name, so adding a model is decorating one function."""

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


def takes_option(name: str, option: str) -> bool:
  """Whether the model registered as ``name`` accepts the keyword ``option``."""
  return name in _REGISTRY and option in inspect.signature(_REGISTRY[name]).parameters


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
