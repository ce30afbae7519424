"""Encoders and heads for sslx.

Every model is a ``flax.linen`` module taking float32 images ``[B, H, W, 3]`` (NHWC) and
``train: bool``, and returning a dict of named outputs that always contains ``"pre_logits"``
``[B, D]`` -- the representation used for evaluation (k-NN, linear probe).

``create_model(name, **kwargs)`` builds a model from its registered name. Each model file
registers its names with ``registry.register_model``; this module only imports those files, so
adding a model is a matter of decorating one factory function.

Names: ``resnet18``, ``resnet34``, ``resnet50``, ``vit_tiny``, ``vit_small``, ``vit_base``,
``vit_large``, ``vit_huge``, ``convnet``. The kwargs each accepts are those of the factory
(see ``resnet.py``, ``vit.py``, ``convnet.py``); an unknown kwarg raises ``TypeError`` naming it.
"""

from __future__ import annotations

# Importing the model files fills the registry (sslx/models/registry.py).
from sslx.models import convnet, cpc_nets, heads, resnet, vit  # noqa: F401
from sslx.models.convnet import ConvNet
from sslx.models.heads import MLPHead
from sslx.models.registry import available_models, create_model, register_model
from sslx.models.resnet import ResNet
from sslx.models.vit import ViT

__all__ = [
  "create_model",
  "register_model",
  "available_models",
  "ResNet",
  "ViT",
  "ConvNet",
  "MLPHead",
]
