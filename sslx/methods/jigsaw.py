"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles", ECCV).

Per image (all on device, pure functions of the step's rng, static shapes):
  1. resize to `image_size` (the paper crops 225×225 from a 256 image; at 32 px we upsample
     so that tiles are not tiny) and split into a 3×3 grid of cells of `image_size // 3`;
  2. cut a `tile_size` tile at a random offset inside each cell (the paper's 64 px tiles in
     75 px cells): the random gaps between tiles stop the network from matching edges and
     continuing lines across tile borders (§3.2, "shortcuts");
  3. normalise every tile to zero mean and unit standard deviation on its own (§3.2: "we
     normalize the mean and the standard deviation of each patch independently"), removing
     the low-level statistics shared by neighbouring tiles;
  4. pick a class c uniformly from the permutation set and put tile `perms[c, i]` in slot i.
The siamese "context-free network" (`pretext_nets.TileSetClassifier`) encodes each tile
alone, concatenates the nine per-tile vectors and classifies c among `num_permutations`.

The permutation set is the paper's greedy maximal-average-Hamming set (`sslx.permutations`),
computed deterministically from `permutation_seed`; it is also kept in `method_state`
("permutations", [N, 9] int32), so every checkpoint of the run carries the set it was trained
with, and `permutations.fingerprint` names it (logged at creation).

Config (`config.method`):
  num_permutations: N classes (100 in the paper's ablation, 1000 in the main run)
  permutation_seed: seed of the greedy set's first (random) permutation
  image_size:       side the image is resized to before tiling (multiple of 3 not required)
  tile_size:        side of each tile, <= image_size // 3
  tile_dim:         per-tile fc width (the paper's fc6: 512)
  head_hidden:      hidden widths of the classifier on the concatenation (fc7: 4096)
  whole_image:      what `encode` (evaluation, fine-tuning, the online probe, export) gives
                    the encoder for a whole image: "tile_scale" resizes it to `image_size`,
                    so objects have the size they had in the training tiles (the paper's
                    transfer applies the conv layers to images at the resolution its tiles
                    were cut from); "as_given" keeps the source resolution
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sslx import augment, losses, permutations, progress
from sslx.methods import base
from sslx.models import pretext_nets

GRID = 3
WHOLE_IMAGE = ("tile_scale", "as_given")  # `method.whole_image` choices (module docstring)


def tile_offsets(rng, image_size: int, tile_size: int) -> jax.Array:
  """Random top-left corners of the 9 tiles, [9, 2] int32 (row, col), row-major cells.

  Tile k = (r, c) lies inside cell (r, c) of side `image_size // 3`; its offset inside the
  cell is uniform in [0, cell − tile] on each axis, independently per tile (random gaps)."""
  cell = image_size // GRID
  slack = cell - tile_size
  if slack < 0:
    raise ValueError(f"tile_size={tile_size} exceeds the cell size {cell}")
  r, c = np.divmod(np.arange(GRID * GRID), GRID)
  base_pos = jnp.asarray(np.stack([r, c], -1) * cell, jnp.int32)
  jitter = jax.random.randint(rng, (GRID * GRID, 2), 0, slack + 1, dtype=jnp.int32)
  return base_pos + jitter


def cut_tiles(image: jax.Array, offsets: jax.Array, tile_size: int) -> jax.Array:
  """[S, S, C] image, [K, 2] corners -> [K, T, T, C] tiles (dynamic slices, static size)."""
  c = image.shape[-1]
  return jax.vmap(
    lambda o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (tile_size, tile_size, c))
  )(offsets)


def normalize_tiles(tiles: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Each tile [.., T, T, C] to zero mean and unit std over its own pixels and channels."""
  mean = jnp.mean(tiles, axis=(-3, -2, -1), keepdims=True)
  std = jnp.std(tiles, axis=(-3, -2, -1), keepdims=True)
  return (tiles - mean) / jnp.maximum(std, eps)


def make_puzzle(rng, image: jax.Array, perms: jax.Array, image_size: int, tile_size: int):
  """One puzzle: [H, W, C] float image -> (tiles [9, T, T, C] shuffled, label int32).

  Slot i holds tile `perms[label, i]` (tiles numbered row-major)."""
  k_off, k_cls = jax.random.split(rng)
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = jax.image.resize(image, (image_size, image_size, image.shape[-1]), "bilinear")
  tiles = normalize_tiles(cut_tiles(image, tile_offsets(k_off, image_size, tile_size), tile_size))
  label = jax.random.randint(k_cls, (), 0, perms.shape[0], dtype=jnp.int32)
  return tiles[perms[label]], label


@dataclasses.dataclass(frozen=True)
class Jigsaw(base.Method):
  net: pretext_nets.TileSetClassifier
  preprocess: base.Preprocess
  view: augment.ViewParams | None
  perms: tuple  # N tuples of 9 ints: the greedy set (also in method_state)
  image_size: int
  tile_size: int
  whole_image: str = "tile_scale"

  def encoder_input(self, images):
    x = self.preprocess(images)
    s = self.image_size
    if self.whole_image == "tile_scale" and x.shape[1:3] != (s, s):
      x = jax.image.resize(x, (x.shape[0], s, s, x.shape[-1]), "bilinear")
    return x

  def init(self, rng, images) -> base.Variables:
    tiles = jnp.zeros((2, GRID * GRID, self.tile_size, self.tile_size, 3), jnp.float32)
    variables = self.net.init(rng, tiles, train=False)
    state = {"permutations": jnp.asarray(self.perms, jnp.int32)}
    return base.Variables(variables["params"], variables.get("batch_stats", {}), state)

  def puzzles(self, rng, images, perms):
    """uint8 [B, H, W, 3] -> (tiles [B, 9, T, T, 3] normalised per tile, labels [B])."""
    k_view, k_puz = jax.random.split(rng)
    x = base.view_pixels(k_view, images, self.view)
    keys = jax.random.split(k_puz, images.shape[0])
    return jax.vmap(lambda k, im: make_puzzle(k, im, perms, self.image_size, self.tile_size))(
      keys, x
    )

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step
    tiles, labels = self.puzzles(rng, images, method_state["permutations"])
    variables = {"params": params, "batch_stats": batch_stats}
    (_, logits), updates = self.net.apply(variables, tiles, train=True, mutable=["batch_stats"])
    loss, acc = losses.softmax_cross_entropy(logits, labels)
    # Online probe: whole-image features (eval-mode BN, no gradient), what `encode` returns.
    features = jax.lax.stop_gradient(self.encode(params, updates["batch_stats"], images))
    metrics = {"loss": loss, "jigsaw_acc": acc}
    return loss, base.LossAux(updates["batch_stats"], method_state, metrics, features)


# Settings for 32 px sources upsampled to 48 px; 100 permutations of maximal Hamming distance.
# fmt: off
DEFAULTS = dict(
  num_permutations=100, permutation_seed=0, image_size=48, tile_size=12, tile_dim=256,
  head_hidden=(512,), whole_image="tile_scale",
)
# fmt: on


def create(config, total_steps: int) -> Jigsaw:
  del total_steps
  m = config.method
  perms = permutations.generate(int(m.num_permutations), int(m.permutation_seed))
  progress.console(
    f"jigsaw: {len(perms)} permutations, min Hamming "
    f"{permutations.min_hamming(perms)}, set {permutations.fingerprint(perms)}"
  )
  encoder = base.encoder_from_config(config)
  net = pretext_nets.TileSetClassifier(
    encoder,
    num_classes=len(perms),
    tile_dim=int(m.tile_dim),
    hidden=tuple(m.head_hidden),
  )
  whole_image = base.check_choice("whole_image", str(m.whole_image), WHOLE_IMAGE)
  image_size = int(m.image_size)
  tile_size = int(m.tile_size)
  if tile_size > image_size // GRID:
    raise ValueError(
      f"method.tile_size={tile_size} must be <= method.image_size // 3 = {image_size // GRID}"
    )
  return Jigsaw(
    net=net,
    preprocess=base.Preprocess.from_config(config.dataset),
    view=base.view_params(config.augment),
    perms=tuple(tuple(int(i) for i in p) for p in perms),
    image_size=image_size,
    tile_size=tile_size,
    whole_image=whole_image,
  )
