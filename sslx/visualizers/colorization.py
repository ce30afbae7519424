"""PNG of colorizations from the latest checkpoint in --workdir:

    python -m sslx visualize colorization --config=experiments/colorization.py \
        --workdir=/tmp/color-cpu --out=/tmp/color.png

Rows: grayscale input (the L channel the network sees), prediction (annealed mean, T=0.38,
on the input's L), original; one column per test image.
"""

import jax.numpy as jnp

from sslx import color
from sslx.visualizers.inpainting import restore, save_grid


def render(config, workdir: str, out: str, num_images: int = 8) -> str:
  method, state, test = restore(config, workdir)
  images = jnp.asarray(test[:num_images])
  rgb = images.astype(jnp.float32) / 255.0
  lab = color.srgb_to_lab(rgb)
  gray = color.lab_to_srgb(jnp.concatenate([lab[..., :1], jnp.zeros_like(lab[..., 1:])], -1))
  pred = method.colorize(state.params["model"], state.batch_stats, images)
  return save_grid([gray, pred, rgb], out)
