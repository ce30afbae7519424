"""PNG of colorizations from the latest checkpoint in --workdir:

    python -m sslx.visualizers.colorization --config=experiments/colorization.py \
        --workdir=/tmp/color-cpu --out=/tmp/color.png

Rows: grayscale input (the L channel the network sees), prediction (annealed mean, T=0.38,
on the input's L), original; one column per test image.
"""

from sslx import xla

xla.configure_xla_for_cpu()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def render(config, workdir: str, out: str, num_images: int = 8) -> str:
  import jax.numpy as jnp

  from sslx import color
  from sslx.visualizers.inpainting import restore, save_grid

  method, state, test = restore(config, workdir)
  images = jnp.asarray(test[:num_images])
  rgb = images.astype(jnp.float32) / 255.0
  lab = color.srgb_to_lab(rgb)
  gray = color.lab_to_srgb(jnp.concatenate([lab[..., :1], jnp.zeros_like(lab[..., 1:])], -1))
  pred = method.colorize(state.params["model"], state.batch_stats, images)
  return save_grid([gray, pred, rgb], out)


def main(argv):
  del argv
  print(render(FLAGS.config, FLAGS.workdir, FLAGS.out, FLAGS.num_images))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory holding checkpoints/")
  flags.DEFINE_string("out", "colorization.png", "PNG to write")
  flags.DEFINE_integer("num_images", 8, "test images to show")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
