"""Self-supervised methods: one module per method, each defining `create(config, ...)`.

A method is found by its module name (`method.name = "simclr"` → `sslx/methods/simclr.py`);
adding one means adding a file, never editing a table.
"""

from __future__ import annotations

import importlib
import pkgutil

_NOT_METHODS = {"base", "common"}


def available() -> list[str]:
  return sorted(
    m.name
    for m in pkgutil.iter_modules(__path__)
    if m.name not in _NOT_METHODS and not m.name.startswith("_")
  )


def get(name: str):
  """Returns the module implementing `name`, or raises naming the valid choices."""
  if name not in available():
    raise ValueError(f"method.name={name!r} is not a known method; valid choices: {available()}")
  return importlib.import_module(f"{__name__}.{name}")
