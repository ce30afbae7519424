"""MAE reconstructions as a PNG grid: original / masked input / reconstruction.

    python -m sslx visualize reconstruction --config=experiments/mae.py \
        --workdir=/tmp/mae-cpu --out=recon.png [--num_images=8]

Restores the latest checkpoint in --workdir with `train.restore_latest` (same config ⇒
same method and model, checked), takes the first `num_images` test images (no augmentation),
masks them with the method's own masking (a fixed key, so the figure is reproducible) and
writes one column per image, three rows: the original, the masked input (masked patches grey),
and the reconstruction with the visible patches pasted back (MAE Fig. 2's layout). With the
norm-pix loss the predicted patches are de-normalised with each true patch's mean and variance.
Any method with `reconstruct(params, images, rng) -> (masked, recon)` works (MAE has it).
"""

import jax
import numpy as np
from PIL import Image

from sslx import data, paths, train


def grid_image(rows, pad: int = 2):
  """[R][C] lists of [H, W, 3] float arrays in [0, 1] → one uint8 [H', W', 3] grid."""
  r, c = len(rows), len(rows[0])
  h, w = rows[0][0].shape[:2]
  out = np.ones((r * (h + pad) + pad, c * (w + pad) + pad, 3), np.float32)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      out[y : y + h, x : x + w] = np.clip(np.asarray(img), 0.0, 1.0)
  return (out * 255).round().astype(np.uint8)


def render(config, workdir: str, out: str, num_images: int = 8, scale: int = 4) -> str:
  """Writes the grid PNG to `out` and returns its path."""
  setup, state, _ = train.restore_latest(config, workdir)
  method = setup.method
  if not hasattr(method, "reconstruct"):
    raise ValueError(
      f"method {config.method.name!r} has no reconstruct(); reconstructions are drawn for MAE"
    )
  # the eval split's first images, and only those decoded
  source = data.build_source(config.dataset, config.dataset.eval_split)
  images = data.decode_all(source, indices=np.arange(min(num_images, len(source))))[0]
  params = jax.device_get(state.params["model"])
  masked, recon = jax.jit(method.reconstruct)(params, images, jax.random.PRNGKey(0))
  original = images.astype(np.float32) / 255.0
  grid = grid_image([list(original), list(np.asarray(masked)), list(np.asarray(recon))])
  img = Image.fromarray(grid)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  paths.save(out, lambda f: img.save(f, format=paths.file_format(out).upper()))
  return out
