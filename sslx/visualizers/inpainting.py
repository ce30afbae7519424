"""PNG of context-encoder inpaintings from the latest checkpoint in --workdir:

    python -m sslx.visualizers.inpainting --config=experiments/context_encoder.py \
        --workdir=/tmp/ce-cpu --out=/tmp/inpaint.png

Rows: masked inputs (holes white), completions, originals; one column per test image.
"""

from sslx import paths, xla

xla.configure_xla_for_cpu()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def restore(config, workdir: str):
  """(method, state, test images uint8) from the latest checkpoint (as sslx.evaluate)."""
  import numpy as np

  from sslx import checkpointing, config_lib, data, train

  config_lib.validate(config)
  mngr = checkpointing.manager(workdir, async_save=False)
  step = checkpointing.check_compatible(mngr, config)
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}: train first")
  source = data.build_source(config.dataset, config.dataset.train_split)
  sample = np.zeros((2, source.image_size, source.image_size, 3), np.uint8)
  setup = train.build(config, sample, len(source), getattr(source, "num_classes", 0))
  state, _ = checkpointing.restore(mngr, step, train.create_state(setup, config.seed, sample))
  test, _ = data.decode_all(data.build_source(config.dataset, config.dataset.eval_split))
  return setup.method, state, test


def save_grid(rows, out: str, scale: int = 4):
  """rows: list of [N, H, W, 3] float arrays in [0, 1] -> one PNG, 2 px white separators."""
  import numpy as np
  from PIL import Image

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
  import jax

  method, state, test = restore(config, workdir)
  images = jax.numpy.asarray(test[:num_images])
  masked, completed = method.inpaint(
    state.params["model"], state.batch_stats, images, jax.random.PRNGKey(0)
  )
  return save_grid([masked, completed, images / 255.0], out)


def main(argv):
  del argv
  print(render(FLAGS.config, FLAGS.workdir, FLAGS.out, FLAGS.num_images))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory holding checkpoints/")
  flags.DEFINE_string("out", "inpainting.png", "PNG to write")
  flags.DEFINE_integer("num_images", 8, "test images to show")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
