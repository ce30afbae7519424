"""Exports the encoder of a run's latest checkpoint in timm / torchvision / safetensors layout
(`python -m sslx export`; the mapping itself is in `sslx.weights`).

The exported encoder is the one `method.encode` evaluates (the same network the k-NN and linear
probe figures describe): found in the checkpoint's parameters by shape and checked to give
`method.encode`'s features on a batch of training images before anything is written.
"""

from __future__ import annotations

import numpy as np

from sslx import config_lib, data, train, weights
from sslx.models import vit


def export_checkpoint(
  config, workdir: str, fmt: str, out: str, peer_python: str | None = None, verify: bool = False
) -> dict:
  """Writes `out` (+ `out.json`); with `verify`, reloads it in the target library through
  `peer_python` and returns {"max_abs_diff", "library", "model", "kwargs", ...}."""
  config_lib.validate(config)
  encoder = weights.encoder_module(config)
  weights.check_format(encoder, fmt, config.model.name)  # fail before loading anything
  if verify and fmt == "safetensors":
    raise ValueError(
      "--verify reloads the file in timm or torchvision: use --format=timm|torchvision"
    )
  setup, state, step = train.restore_latest(config, workdir)
  source = data.build_source(config.dataset, config.dataset.train_split)
  records = [source[i] for i in range(min(16, len(source)))]
  images = np.stack([r["image"] for r in records if r is not None][:8])
  params, stats = weights.find_encoder(
    setup.method, encoder, state.params["model"], state.batch_stats, images
  )
  # The side the method's encode resizes whole images to (jigsaw: its tile scale), else the
  # source's.
  size = int(setup.method.encoder_input(images[:1]).shape[1])
  # A ViT trained on crops smaller or larger than that stores a position embedding for the
  # crop's grid and resamples it in every forward pass at `size`; the exported model is built
  # for `size`, so it gets that resampled embedding once (the same features, a plain model).
  params = vit.pos_embed_for_images(params, (size, size))
  meta = weights.export(
    encoder, config.model.name, fmt, params, stats, setup.method.preprocess, size, out
  )
  result = {"out": out, "step": step, **{k: meta[k] for k in ("library", "model", "kwargs")}}
  if verify:
    ours = weights.encoder_features(encoder, params, stats, images, meta["mean"], meta["std"])
    result.update(weights.verify(weights.find_peer_python(peer_python), out, meta, images, ours))
  return result
