"""Relative patch location (Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation
Learning by Context Prediction", ICCV).

Per image (on device, pure functions of the step's rng, static shapes):
  1. resize to `image_size` and lay a 3×3 grid of `patch_size` patches separated by `gap`
     pixels at a random position (the paper: 96 px patches, 48 px gaps);
  2. jitter every patch independently by up to `jitter` px on each axis (the paper: "up to 7
     pixels"), so that the layout never lines up exactly;
  3. take the centre patch and one of its 8 neighbours, chosen uniformly: the label (0..7,
     row-major over the grid without its centre); with `all_neighbours` every image gives
     all 8 pairs instead, its 9 patches encoded once (`make_grid`, `GRID_PAIRS`): 8 labels
     for 9 patches encoded rather than 1 for 2, each pair still classified on its own;
  4. optionally remove chromatic aberration (`color_guard`, paper §3.1): "project" shifts
     green and magenta toward grey (projects every pixel off the green–magenta axis
     (−1, 2, −1)/√6), "drop" keeps one random channel per patch and replaces the other two
     with Gaussian noise of 1/100 the kept channel's std.
A siamese encoder embeds both patches (one pass, shared weights), the two embeddings are
concatenated and an MLP predicts the 8-way position (`pretext_nets.TileSetClassifier`, K=2).

Config (`config.method`):
  image_size, patch_size, gap, jitter: geometry above (3·patch + 2·gap + 2·jitter <= image)
  color_guard: "none" | "project" | "drop"
  all_neighbours: False (the paper: one random pair per image) | True (all 8 pairs)
  tile_dim, head_hidden: per-patch fc width, classifier hidden widths (paper: fc6 4096, fc7
                         4096 then fc8 8)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sslx import augment, losses
from sslx.methods import base
from sslx.models import pretext_nets

NUM_POSITIONS = 8
COLOR_GUARDS = ("none", "project", "drop")
# Grid cells of the 8 neighbours, row-major, centre (1, 1) left out: label k -> cell.
NEIGHBOURS = tuple((r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1))
GREEN_MAGENTA = np.array([-1.0, 2.0, -1.0], np.float32) / np.sqrt(6.0)


def patch_corners(rng, image_size: int, patch_size: int, gap: int, jitter: int) -> jax.Array:
  """Top-left corners of the 3×3 grid, [3, 3, 2] int32 (row, col).

  The grid (3·patch + 2·gap wide) is placed at a random offset that leaves `jitter` px of
  margin, then each patch moves by an independent integer in [−jitter, jitter] per axis."""
  span = 3 * patch_size + 2 * gap
  room = image_size - span - 2 * jitter
  if room < 0:
    raise ValueError(
      f"3·patch_size + 2·gap + 2·jitter = {span + 2 * jitter} exceeds image_size={image_size}"
    )
  k_pos, k_jit = jax.random.split(rng)
  origin = jitter + jax.random.randint(k_pos, (2,), 0, room + 1, dtype=jnp.int32)
  step = patch_size + gap
  grid = jnp.asarray(
    np.stack(np.meshgrid(np.arange(3), np.arange(3), indexing="ij"), -1) * step, jnp.int32
  )
  shake = jax.random.randint(k_jit, (3, 3, 2), -jitter, jitter + 1, dtype=jnp.int32)
  return origin + grid + shake


def remove_chromatic_aberration(rng, patch: jax.Array, guard: str) -> jax.Array:
  """Applies `guard` to one [P, P, 3] patch in [0, 1] (see module docstring)."""
  if guard == "none":
    return patch
  if guard == "project":
    a = jnp.asarray(GREEN_MAGENTA)
    return patch - (patch @ a)[..., None] * a
  if guard == "drop":
    k_keep, k_noise = jax.random.split(rng)
    keep = jax.random.randint(k_keep, (), 0, 3)
    kept = jnp.take(patch, keep, axis=-1)
    noise = jnp.mean(kept) + 0.01 * jnp.std(kept) * jax.random.normal(
      k_noise, patch.shape, patch.dtype
    )
    return jnp.where(jnp.arange(3) == keep, patch, noise)
  raise ValueError(f"method.color_guard={guard!r}; valid choices: {COLOR_GUARDS}")


def patch_cutter(image, image_size: int, patch_size: int):
  """Resizes one [H, W, 3] image to `image_size` (if needed) and returns corner (row, col) ->
  its [P, P, 3] patch there."""
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = jax.image.resize(image, (image_size, image_size, 3), "bilinear")
  return lambda o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (patch_size, patch_size, 3))


def make_pair(rng, image, image_size: int, patch_size: int, gap: int, jitter: int, guard: str):
  """One example: [H, W, 3] float image -> (patches [2, P, P, 3] (centre, neighbour),
  label int32 in 0..7)."""
  k_grid, k_lab, k_c0, k_c1 = jax.random.split(rng, 4)
  cut = patch_cutter(image, image_size, patch_size)
  corners = patch_corners(k_grid, image_size, patch_size, gap, jitter)
  label = jax.random.randint(k_lab, (), 0, NUM_POSITIONS, dtype=jnp.int32)
  cells = jnp.asarray(NEIGHBOURS, jnp.int32)[label]
  centre = remove_chromatic_aberration(k_c0, cut(corners[1, 1]), guard)
  other = remove_chromatic_aberration(k_c1, cut(corners[cells[0], cells[1]]), guard)
  return jnp.stack([centre, other]), label


def make_grid(rng, image, image_size: int, patch_size: int, gap: int, jitter: int, guard: str):
  """All nine patches of one image: [H, W, 3] float image -> [9, P, P, 3], row-major (the
  centre is index 4), each with its own jitter and chromatic-aberration guard."""
  k_grid, k_guard = jax.random.split(rng)
  cut = patch_cutter(image, image_size, patch_size)
  corners = patch_corners(k_grid, image_size, patch_size, gap, jitter).reshape(9, 2)
  guard_one = lambda k, o: remove_chromatic_aberration(k, cut(o), guard)
  return jax.vmap(guard_one)(jax.random.split(k_guard, 9), corners)


# (centre, neighbour) tile indices of the row-major 3×3 grid, in label order (NEIGHBOURS).
GRID_PAIRS = tuple((4, 3 * r + c) for r, c in NEIGHBOURS)


@dataclasses.dataclass(frozen=True)
class RelativePatch(base.Method):
  net: pretext_nets.TileSetClassifier
  preprocess: base.Preprocess
  view: augment.ViewParams | None
  image_size: int
  patch_size: int
  gap: int
  jitter: int
  color_guard: str
  all_neighbours: bool = False

  def init(self, rng, images) -> base.Variables:
    pairs = jnp.zeros((2, 2, self.patch_size, self.patch_size, 3), jnp.float32)
    variables = self.net.init(rng, pairs, train=False)
    return base.Variables(variables["params"], variables.get("batch_stats", {}), {})

  def pairs(self, rng, images):
    """uint8 [B, H, W, 3] -> (normalised patches [B, 2, P, P, 3], labels [B])."""
    k_view, k_pair = jax.random.split(rng)
    x = base.view_pixels(k_view, images, self.view)
    keys = jax.random.split(k_pair, images.shape[0])
    patches, labels = jax.vmap(
      lambda k, im: make_pair(
        k, im, self.image_size, self.patch_size, self.gap, self.jitter, self.color_guard
      )
    )(keys, x)
    return self.preprocess(patches), labels

  def grids(self, rng, images):
    """uint8 [B, H, W, 3] -> normalised patches [B, 9, P, P, 3] (row-major 3×3 grids)."""
    k_view, k_grid = jax.random.split(rng)
    x = base.view_pixels(k_view, images, self.view)
    keys = jax.random.split(k_grid, images.shape[0])
    grids = jax.vmap(
      lambda k, im: make_grid(
        k, im, self.image_size, self.patch_size, self.gap, self.jitter, self.color_guard
      )
    )(keys, x)
    return self.preprocess(grids)

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    variables = {"params": params, "batch_stats": batch_stats}
    if self.all_neighbours:
      # Every image gives all 8 (centre, neighbour) pairs; its 9 patches are encoded once.
      tiles, groups = self.grids(rng, images), GRID_PAIRS
      labels = jnp.tile(jnp.arange(NUM_POSITIONS, dtype=jnp.int32), images.shape[0])
    else:
      (tiles, labels), groups = self.pairs(rng, images), None
    (_, logits), updates = self.net.apply(
      variables, tiles, train=True, groups=groups, mutable=["batch_stats"]
    )
    loss, acc = losses.softmax_cross_entropy(logits, labels)
    # Online probe: whole-image features (eval-mode BN, no gradient), what `encode` returns.
    features = jax.lax.stop_gradient(self.encode(params, updates["batch_stats"], images))
    metrics = {"loss": loss, "position_acc": acc}
    return loss, base.LossAux(updates["batch_stats"], method_state, metrics, features)


# Settings for 32 px sources upsampled to 48 px (the cifar10 preset uses 96 px).
# fmt: off
DEFAULTS = dict(
  image_size=48, patch_size=12, gap=4, jitter=1, color_guard="project", tile_dim=256,
  head_hidden=(512,), all_neighbours=False,
)
# fmt: on


def create(config, total_steps: int) -> RelativePatch:
  del total_steps
  m = config.method
  guard = base.check_choice("color_guard", str(m.color_guard), COLOR_GUARDS)
  encoder = base.encoder_from_config(config)
  net = pretext_nets.TileSetClassifier(
    encoder,
    num_classes=NUM_POSITIONS,
    tile_dim=int(m.tile_dim),
    hidden=tuple(m.head_hidden),
  )
  method = RelativePatch(
    net=net,
    preprocess=base.Preprocess.from_config(config.dataset),
    view=base.view_params(config.augment),
    image_size=int(m.image_size),
    patch_size=int(m.patch_size),
    gap=int(m.gap),
    jitter=int(m.jitter),
    color_guard=guard,
    all_neighbours=bool(m.all_neighbours),
  )
  if 3 * method.patch_size + 2 * method.gap + 2 * method.jitter > method.image_size:
    raise ValueError("method: 3·patch_size + 2·gap + 2·jitter must be <= image_size")
  return method
