"""Multi-crop views (Caron et al. 2020, SwAV §3.2; DINO, Caron et al. 2021, §3.1).

Every image of the batch gives ``G`` global crops (large scale range, e.g. 224 px, scale
0.4–1.0; 32 px on CIFAR) and ``N`` local crops (small scale range, e.g. 96 px, scale
0.05–0.4; 16 px on CIFAR). The crops of one resolution are stacked in one array, *image-major*:

    global_crops [B·G, Sg, Sg, 3]   row i·G + v is global view v of image i
    local_crops  [B·N, Sl, Sl, 3]   row i·N + v is local view v of image i (None if N = 0)

so that with the batch sharded over devices an image's views stay on its device, through the
encoder and into the cross-view loss (:func:`per_image` gives ``[B, V, ...]`` without moving
a row between devices).

All sizes are Python ints fixed by the config, so a train step that uses them compiles once.
Each global view has its *own* :class:`sslx.augment.ViewParams`, which expresses the asymmetric
recipes: BYOL (Grill et al. 2020, Table 6) and DINO blur the first global view always
(p = 1.0) and the second rarely (p = 0.1), and solarize only the second (p = 0.2); local crops
are blurred with p = 0.5. The augmentations are :mod:`sslx.augment`'s on-device ones.

Config (``config.augment``): every :class:`~sslx.augment.ViewParams` field except the four that
differ per view is shared by all views (colour jitter, grayscale, flip, blur sigma, ...); the
per-view ones are given as

    global_crop_size, global_crop_scale        size and area range of the global crops
    global_blur_prob, global_solarize_prob     one probability per global view (a tuple of G)
    num_local_crops, local_crop_size, local_crop_scale, local_blur_prob, local_solarize_prob
    enabled                                    False: no augmentation (see MultiCrop.enabled)

``crop_size``, ``crop_scale``, ``blur_prob`` and ``solarize_prob`` are refused there: they would
be ambiguous between the global and local views.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sslx import augment

_PER_VIEW = ("crop_size", "crop_scale", "blur_prob", "solarize_prob")
_MULTICROP_KEYS = (
  "enabled",
  "global_crop_size",
  "global_crop_scale",
  "global_blur_prob",
  "global_solarize_prob",
  "num_local_crops",
  "local_crop_size",
  "local_crop_scale",
  "local_blur_prob",
  "local_solarize_prob",
)


class HostViews(NamedTuple):
  """Views already cropped and resized on the host (``dataset.host_crops``), uint8, image-major.

  Passed to a method's ``loss`` in place of the image batch; the device then applies only flip,
  colour, grayscale, blur and solarize (see :mod:`sslx.data.crops`).
  """

  global_views: Any  # [B, G, Sg, Sg, 3] (one record: [G, Sg, Sg, 3])
  local_views: Any = None  # [B, N, Sl, Sl, 3], or None without local crops

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape of the batch of source images they stand for: (B, Sg, Sg, 3)."""
    s = self.global_views.shape
    return (s[0],) + tuple(s[2:])


def flat_views(views: jax.Array) -> jax.Array:
  """[B, V, ...] -> [B·V, ...], row i·V + v holding view v of image i (image-major)."""
  views = jnp.asarray(views)
  return views.reshape((-1,) + views.shape[2:])


def per_image(rows: jax.Array, num_views: int) -> jax.Array:
  """[B·V, ...] image-major rows -> [B, V, ...]: a local reshape under a sharded batch."""
  return rows.reshape((rows.shape[0] // num_views, num_views) + rows.shape[1:])


def swap_views(rows: jax.Array) -> jax.Array:
  """[B·2, ...] image-major rows with each image's two views exchanged."""
  return flat_views(per_image(rows, 2)[:, ::-1])


def first_view(rows: jax.Array, num_views: int) -> jax.Array:
  """[B·V, ...] image-major rows -> [B, ...], view 0 of every image."""
  return per_image(rows, num_views)[:, 0]


class Crops(NamedTuple):
  """Float32 crops in [0, 1] (not yet mean/std-normalised), image-major (see module doc)."""

  global_crops: jax.Array  # [B·G, Sg, Sg, 3]
  local_crops: jax.Array | None  # [B·N, Sl, Sl, 3], None when N = 0


@dataclasses.dataclass(frozen=True)
class MultiCrop:
  """G global and N local views of every image, each global view with its own ViewParams.

  Attributes:
    global_views: one ViewParams per global view (all with the same ``crop_size``).
    local_view: the ViewParams shared by the local views (None when ``num_local`` is 0).
    num_local: N, the number of local crops per image.
    enabled: False: no augmentation at all, every "crop" is the whole image resized to the
      view's size (benchmarks time the step on pre-augmented inputs this way).
  """

  global_views: tuple[augment.ViewParams, ...]
  local_view: augment.ViewParams | None = None
  num_local: int = 0
  enabled: bool = True

  def __post_init__(self):
    object.__setattr__(self, "global_views", tuple(self.global_views))
    if not self.global_views:
      raise ValueError("MultiCrop needs at least one global view")
    sizes = {v.crop_size for v in self.global_views}
    if len(sizes) != 1:
      raise ValueError(f"all global views must have the same crop_size, got {sorted(sizes)}")
    if self.num_local < 0:
      raise ValueError(f"num_local_crops must be >= 0, got {self.num_local}")
    if self.num_local and self.local_view is None:
      raise ValueError("num_local_crops > 0 needs a local view")

  @property
  def num_global(self) -> int:
    return len(self.global_views)

  @property
  def num_views(self) -> int:
    return self.num_global + self.num_local

  @property
  def global_size(self) -> int:
    return self.global_views[0].crop_size

  @property
  def local_size(self) -> int | None:
    return self.local_view.crop_size if self.num_local else None

  def __call__(self, rng: jax.Array, images: jax.Array) -> Crops:
    """Crops of a batch.

    Args:
      rng: PRNG key (split into one independent key per view).
      images: [B, H, W, 3] uint8 (or float in [0, 1]).

    Returns:
      :class:`Crops`: global [B·G, Sg, Sg, 3] and local [B·N, Sl, Sl, 3] (or None), float32
      in [0, 1], image-major.
    """
    if isinstance(images, HostViews):
      return self._from_host(rng, images)
    x = jnp.asarray(images)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    if not self.enabled:
      glob = jnp.repeat(_resize(x, self.global_size), self.num_global, axis=0)
      local = None
      if self.num_local:
        local = jnp.repeat(_resize(x, self.local_size), self.num_local, axis=0)
      return Crops(glob, local)
    keys = jax.random.split(rng, self.num_global + 1)
    glob = augment.augment_views(keys[0], x, self.global_views)
    local = None
    if self.num_local:
      # The N local views share one ViewParams: vmap over their keys (traced once), the
      # view axis placed after the image axis.
      lkeys = jax.random.split(keys[-1], self.num_local)
      local = self._finish_local(
        jax.vmap(lambda k: augment.augment_batch_parts(k, x, self.local_view), out_axes=1)(lkeys)
      )
    return Crops(glob, local)

  def _finish_local(self, parts) -> jax.Array:
    """Blur and solarize of the ``[B, N]`` local views in one batch of rows (outside the
    vmap over views, so only the rows that drew the blur are blurred)."""
    views, tail = parts
    return augment.finish_views(flat_views(views), jax.tree.map(flat_views, tail), self.local_view)

  def _from_host(self, rng: jax.Array, views: HostViews) -> Crops:
    """Host-cropped views: the same per-view randomness as ``__call__`` without the crop."""
    g = views.global_views
    if g.shape[1] != self.num_global or g.shape[2] != self.global_size:
      raise ValueError(
        f"host views {g.shape} do not match {self.num_global} global crops of {self.global_size}"
      )
    keys = jax.random.split(rng, self.num_global + 1)
    if not self.enabled:
      local = None if views.local_views is None else flat_views(views.local_views) / 255.0
      return Crops(flat_views(g).astype(jnp.float32) / 255.0, local)
    glob = augment.augment_views(keys[0], flat_views(g), self.global_views, cropped=True)
    local = None
    if self.num_local:
      lkeys = jax.random.split(keys[-1], self.num_local)
      local = self._finish_local(
        jax.vmap(
          lambda k, x: augment.augment_batch_parts(k, x, self.local_view, cropped=True),
          in_axes=(0, 1),
          out_axes=1,
        )(lkeys, jnp.asarray(views.local_views))
      )
    return Crops(glob, local)

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None, num_global: int = 2) -> MultiCrop:
    """Builds from ``config.augment`` (see the module docstring for the keys).

    Defaults: DINO's ImageNet recipe (global 224 px, scale (0.4, 1), blur (1.0, 0.1),
    solarize (0, 0.2); local 96 px, scale (0.05, 0.4), blur 0.5) with no local crops.
    """
    items = dict(cfg.items()) if cfg is not None else {}
    bad = sorted(k for k in items if k in _PER_VIEW)
    if bad:
      raise ValueError(
        f"augment key(s) {bad} are per-view in multi-crop configs: use global_crop_size, "
        "global_crop_scale, global_blur_prob, global_solarize_prob and the local_* keys"
      )
    valid = set(augment.ViewParams.field_names()) | set(_MULTICROP_KEYS)
    unknown = sorted(k for k in items if k not in valid)
    if unknown:
      raise ValueError(f"unknown augment key(s) {unknown}; valid keys are {sorted(valid)}")
    shared = {k: v for k, v in items.items() if k not in _MULTICROP_KEYS}
    gsize = int(items.get("global_crop_size", 224))
    gscale = tuple(items.get("global_crop_scale", (0.4, 1.0)))
    gblur = _per_global(items.get("global_blur_prob", (1.0, 0.1)), num_global, "global_blur_prob")
    gsol = _per_global(
      items.get("global_solarize_prob", (0.0, 0.2)), num_global, "global_solarize_prob"
    )
    global_views = tuple(
      augment.ViewParams(
        **shared, crop_size=gsize, crop_scale=gscale, blur_prob=gblur[i], solarize_prob=gsol[i]
      )
      for i in range(num_global)
    )
    num_local = int(items.get("num_local_crops", 0))
    local_view = None
    if num_local:
      local_view = augment.ViewParams(
        **shared,
        crop_size=int(items.get("local_crop_size", 96)),
        crop_scale=tuple(items.get("local_crop_scale", (0.05, 0.4))),
        blur_prob=float(items.get("local_blur_prob", 0.5)),
        solarize_prob=float(items.get("local_solarize_prob", 0.0)),
      )
    return cls(global_views, local_view, num_local, bool(items.get("enabled", True)))


def _per_global(value, num_global: int, name: str) -> tuple[float, ...]:
  if isinstance(value, (int, float)):
    return (float(value),) * num_global
  value = tuple(float(v) for v in value)
  if len(value) != num_global:
    raise ValueError(f"augment.{name} needs one value per global view ({num_global}), got {value}")
  return value


def _resize(x: jax.Array, size: int) -> jax.Array:
  if x.shape[1] == size and x.shape[2] == size:
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")


def teacher_student_pairs(num_global: int, num_views: int) -> tuple[tuple[int, int], ...]:
  """DINO's cross-view pairs (Caron et al. 2021, eq. 3): every teacher global view i with
  every student view j ≠ i, j over all G + N views. There are G·(G + N − 1) of them, e.g.
  2·(N + 1) for two global crops."""
  return tuple((i, j) for i in range(num_global) for j in range(num_views) if j != i)
