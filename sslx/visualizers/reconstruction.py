"""MAE reconstructions as a PNG grid: original / masked input / reconstruction.

    python -m sslx.visualizers.reconstruction --config=experiments/mae.py \
        --workdir=/tmp/mae-cpu --out=recon.png [--num_images=8]

Restores the latest checkpoint in --workdir exactly as `sslx.evaluate` does (same config ⇒
same method and model, checked), takes the first `num_images` test images (no augmentation),
masks them with the method's own masking (a fixed key, so the figure is reproducible) and
writes one column per image, three rows: the original, the masked input (masked patches grey),
and the reconstruction with the visible patches pasted back (MAE Fig. 2's layout). With the
norm-pix loss the predicted patches are de-normalised with each true patch's mean and variance.
Any method with `reconstruct(params, images, rng) -> (masked, recon)` works (MAE has it).
"""

from sslx import paths, xla

xla.configure_xla_for_cpu()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS


def grid_image(rows, pad: int = 2):
  """[R][C] lists of [H, W, 3] float arrays in [0, 1] → one uint8 [H', W', 3] grid."""
  import numpy as np

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
  import jax
  import numpy as np
  from PIL import Image

  from sslx import checkpointing, config_lib, data, evaluation, train

  config_lib.validate(config)
  mngr = checkpointing.manager(workdir, async_save=False)
  step = checkpointing.check_compatible(mngr, config)
  if step is None:
    raise FileNotFoundError(
      f"no checkpoint in {mngr.directory}: train first with "
      f"python -m sslx.main --config=... --workdir={workdir}"
    )
  source = data.build_source(config.dataset, config.dataset.train_split)
  sample = np.zeros((2, source.image_size, source.image_size, 3), np.uint8)
  setup = train.build(config, sample, len(source), getattr(source, "num_classes", 0))
  method = setup.method
  if not hasattr(method, "reconstruct"):
    raise ValueError(
      f"method {config.method.name!r} has no reconstruct(); reconstructions are drawn for MAE"
    )
  state, _ = checkpointing.restore(mngr, step, train.create_state(setup, config.seed, sample))
  eval_data = evaluation.load_eval_data(config)
  if eval_data is not None:
    images = eval_data[2][:num_images]
  else:
    images = data.decode_all(data.build_source(config.dataset, config.dataset.eval_split))[0]
    images = images[:num_images]
  params = jax.device_get(state.params["model"])
  masked, recon = jax.jit(method.reconstruct)(params, images, jax.random.PRNGKey(0))
  original = images.astype(np.float32) / 255.0
  grid = grid_image([list(original), list(np.asarray(masked)), list(np.asarray(recon))])
  img = Image.fromarray(grid)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  paths.save(out, lambda f: img.save(f, format=paths.file_format(out).upper()))
  return out


def main(argv):
  del argv
  print(render(FLAGS.config, FLAGS.workdir, FLAGS.out, FLAGS.num_images))


if __name__ == "__main__":
  import sys

  from sslx import config_lib

  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory holding checkpoints/")
  flags.DEFINE_string("out", "recon.png", "output PNG")
  flags.DEFINE_integer("num_images", 8, "test images to show")
  flags.mark_flags_as_required(["config", "workdir"])
  problem = config_lib.check_override_keys(sys.argv[1:])
  if problem:
    sys.exit(f"error: {problem}")
  app.run(main)
