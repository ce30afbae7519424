"""PNG of context-encoder inpaintings from the latest checkpoint in --workdir:

    python -m sslx visualize inpainting --config=experiments/context_encoder.py \
        --workdir=/tmp/ce-cpu --out=/tmp/inpaint.png

Rows: masked inputs (holes white), completions, originals; one column per test image.
"""

import jax
import numpy as np
from PIL import Image

from sslx import data, paths, train


def restore(config, workdir: str):
  """(method, state, test images uint8) from the latest checkpoint ."""
  setup, state, _ = train.restore_latest(config, workdir)
  test, _ = data.decode_all(data.build_source(config.dataset, config.dataset.eval_split))
  return setup.method, state, test


def save_grid(rows, out: str, scale: int = 4):
  """rows: list of [N, H, W, 3] float arrays in [0, 1] -> one PNG, 2 px white separators."""

  rows = [np.asarray(r, np.float32) for r in rows]
  n, h, w, _ = rows[0].shape
  pad = 2
  grid = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), np.float32)
  for i, r in enumerate(rows):
    for j in range(n):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y : y + h, x : x + w] = r[j]
  img = Image.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8))
  img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  paths.save(out, lambda f: img.save(f, format=paths.file_format(out).upper()))
  return out


def render(config, workdir: str, out: str, num_images: int = 8) -> str:

  method, state, test = restore(config, workdir)
  images = jax.numpy.asarray(test[:num_images])
  masked, completed = method.inpaint(
    state.params["model"], state.batch_stats, images, jax.random.PRNGKey(0)
  )
  return save_grid([masked, completed, images / 255.0], out)
