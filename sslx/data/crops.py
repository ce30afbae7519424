"""Random-resized crops made on the host from the full-resolution image.

    groups = crop_groups(method)            # e.g. SimCLR: [CropGroup(224, (0.08, 1), ..., 2)]
    maker = ViewMaker(groups, seed=0)
    views = maker(jpeg_bytes, position)     # HostViews(global [G, 224, 224, 3], local or None)

For every view a crop box is drawn from the image's true size with torchvision's
``RandomResizedCrop.get_params`` distribution (area fraction ~ U(scale), log aspect ratio ~
U(log ratio), ten tries, then the central crop clipped to the ratio range), the same
arithmetic as the on-device :func:`sslx.augment.sample_crop_box` given the same uniforms.
All views of an image come from ONE decode:

1. The JPEG header gives the size; every box is drawn first.
2. The image is decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8: libjpeg-turbo's fast
   scaled IDCTs, through simplejpeg) that still leaves every box at least its output size.
3. Each view is resized from a mip level of the decoded image: the level is halved (area
   averaging) while the box still covers the output size there, so the final bilinear resize
   shrinks by less than 2x and needs no wider antialiasing kernel. OpenCV does the resizing.

Flip, colour jitter, grayscale, blur and solarize stay on the device.

Randomness. The boxes of the record at stream position ``n`` (``n = step * B + row`` for the
global batch size ``B``) come from ``numpy.random.default_rng([seed, n])``: a function of (seed,
step, row) only, so a resumed run draws the same crops, whatever the number of workers or
processes.

Images that are not plain JPEGs (PNG, CMYK JPEGs, photos with an EXIF rotation, ...) are decoded
by PIL at full size, then cropped the same way.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from sslx import augment, multicrop
from sslx.data import sources

NUM_TRIES = 10
# Methods whose train step takes host-made views (see crop_groups).
HOST_CROP_METHODS = ("simclr", "moco", "byol", "vicreg", "dino", "dinov2")
_MAX_DCT_LEVEL = 3  # libjpeg scales by 1/2, 1/4, 1/8.

# One resize thread per process: the pipeline's parallelism is its worker processes.
cv2.setNumThreads(1)


@dataclasses.dataclass(frozen=True)
class CropGroup:
  """``count`` views of side ``size`` whose boxes cover ``scale`` of the image's area."""

  size: int
  scale: tuple[float, float]
  ratio: tuple[float, float]
  count: int

  def __post_init__(self):
    if self.size <= 0 or self.count <= 0:
      raise ValueError(f"CropGroup needs a positive size and count, got {self}")
    if not 0 < self.scale[0] <= self.scale[1]:
      raise ValueError(f"CropGroup.scale must satisfy 0 < min <= max, got {self.scale}")


def crop_groups(method, method_name: str = "") -> tuple[CropGroup, ...]:
  """The crops a method's train step expects from the host.

  Multi-crop methods (BYOL, VICReg, DINO, DINOv2: a ``views`` attribute that is a
  :class:`sslx.multicrop.MultiCrop`) get their global views and then their local ones; SimCLR
  and MoCo (two views of one ``ViewParams``) get two views of its crop.
  """
  views = getattr(method, "views", None)
  if isinstance(views, multicrop.MultiCrop):
    g = views.global_views[0]
    groups = [CropGroup(g.crop_size, g.crop_scale, g.crop_ratio, views.num_global)]
    if views.num_local:
      v = views.local_view
      groups.append(CropGroup(v.crop_size, v.crop_scale, v.crop_ratio, views.num_local))
    return tuple(groups)
  view = getattr(method, "view", None)
  if method_name in ("simclr", "moco") and view is not None:
    return (CropGroup(view.crop_size, view.crop_scale, view.crop_ratio, 2),)
  raise ValueError(
    f"dataset.host_crops=True: method {method_name or type(method).__name__!r} does not take "
    "host-made views; it works for simclr, moco, byol, vicreg, dino and dinov2 with "
    "augmentation enabled (set dataset.host_crops=False for the others)"
  )


def sample_box(
  u: np.ndarray, width: int, height: int, scale: Sequence[float], ratio: Sequence[float]
) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box from ``2 * NUM_TRIES + 2`` uniforms in [0, 1).

  The same formula as the device's ``augment._crop_box_from_uniforms``: ten (area, log-ratio)
  candidates, the first that fits is kept, its offset uniform over every placement; if none
  fits, the whole image clipped to the ratio range, centred. Returns ``(x0, y0, w, h)``.
  """
  hs, ws = (s.astype(np.int64) for s in augment.crop_candidates(u, height, width, scale, ratio, np))
  fits = np.flatnonzero((ws > 0) & (ws <= width) & (hs > 0) & (hs <= height))
  if len(fits):
    w, h = int(ws[fits[0]]), int(hs[fits[0]])
    y0 = min(int(u[-2] * (height - h + 1)), height - h)
    x0 = min(int(u[-1] * (width - w + 1)), width - w)
    return x0, y0, w, h
  h, w = augment.fallback_box_size(height, width, ratio)
  return (width - w) // 2, (height - h) // 2, w, h


def sample_boxes(
  u: np.ndarray, width: int, height: int, scale: Sequence[float], ratio: Sequence[float]
) -> np.ndarray:
  """:func:`sample_box` for every row of ``u`` [n, 2 * NUM_TRIES + 2] at once: int64 [n, 4]."""
  tries = (u.shape[1] - 2) // 2
  area = float(width * height)
  target = area * (scale[0] + u[:, :tries] * (scale[1] - scale[0]))
  lo, hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = np.exp(lo + u[:, tries : 2 * tries] * (hi - lo))
  ws = np.round(np.sqrt(target * aspect)).astype(np.int64)
  hs = np.round(np.sqrt(target / aspect)).astype(np.int64)
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = np.argmax(fits, axis=1)
  rows = np.arange(len(u))
  w, h = ws[rows, first], hs[rows, first]
  y0 = np.minimum((u[:, -2] * (height - h + 1)).astype(np.int64), height - h)
  x0 = np.minimum((u[:, -1] * (width - w + 1)).astype(np.int64), width - w)
  out = np.stack([x0, y0, w, h], axis=1)
  none = ~fits.any(axis=1)
  if none.any():
    out[none] = sample_box(u[np.flatnonzero(none)[0]], width, height, scale, ratio)
  return out


def _decode_jpeg(data: bytes, level: int, width: int, height: int) -> np.ndarray:
  """RGB uint8 decoded at 1 / 2**level of the full size (libjpeg's scaled IDCT)."""
  if level == 0:
    return simplejpeg.decode_jpeg(data, "RGB", fastdct=True, fastupsample=True)
  f = 2**level
  return simplejpeg.decode_jpeg(
    data,
    "RGB",
    fastdct=True,
    fastupsample=True,
    min_height=-(-height // f),
    min_width=-(-width // f),
    min_factor=f,
  )


def _decode_pil(data: bytes) -> np.ndarray:
  """Any image PIL reads, EXIF rotation applied, as RGB uint8 at full size."""
  with Image.open(io.BytesIO(data)) as img:
    img.load()
    if "exif" in img.info:
      img = ImageOps.exif_transpose(img)
    # The mode conversions of sources.decode_image (16-bit, palette transparency, CMYK, ...).
    return np.asarray(sources.to_rgb(img), dtype=np.uint8)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
  """(width, height) of a JPEG simplejpeg can decode to RGB without rotation, else None."""
  if data[:2] != b"\xff\xd8" or b"Exif" in data[:65536]:
    return None  # Not a JPEG, or one that may carry an EXIF orientation: PIL's path.
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  if colorspace not in ("YCbCr", "Gray", "RGB"):
    return None
  return width, height


def _half(img: np.ndarray) -> np.ndarray:
  h, w = img.shape[:2]
  return cv2.resize(img, (max(w // 2, 1), max(h // 2, 1)), interpolation=cv2.INTER_AREA)


@dataclasses.dataclass(frozen=True)
class ViewMaker:
  """Makes every view of one encoded image from one decode (see the module docstring).

  Attributes:
    groups: the crop groups, in order; the first is the global views.
    seed: the run's seed; with the stream position it fixes the boxes.
  """

  groups: tuple[CropGroup, ...]
  seed: int

  def __post_init__(self):
    object.__setattr__(self, "groups", tuple(self.groups))
    if not 1 <= len(self.groups) <= 2:
      raise ValueError(f"ViewMaker takes global views and optionally local ones, got {self.groups}")

  def boxes(self, width: int, height: int, position: int) -> list[tuple[int, int, int, int]]:
    """Every view's ``(x0, y0, w, h)`` for the record at stream ``position``."""
    rng = np.random.default_rng([int(self.seed) % 2**63, int(position)])
    u = rng.random((sum(g.count for g in self.groups), 2 * NUM_TRIES + 2))
    out, k = [], 0
    for g in self.groups:
      out.extend(map(tuple, sample_boxes(u[k : k + g.count], width, height, g.scale, g.ratio)))
      k += g.count
    return out

  def empty(self, batch: int) -> multicrop.HostViews:
    """Uninitialised uint8 arrays for ``batch`` images' views, [batch, count, S, S, 3] each."""
    arrays = [np.empty((batch, g.count, g.size, g.size, 3), np.uint8) for g in self.groups]
    return multicrop.HostViews(arrays[0], arrays[1] if len(arrays) > 1 else None)

  def __call__(
    self, data: bytes, position: int, out: multicrop.HostViews | None = None
  ) -> multicrop.HostViews:
    """Views of the image ``data`` (encoded bytes) at stream ``position``, written into
    ``out`` (one image's slots, e.g. ``batch_views[i]`` per field) when given.

    Raises what the decoders raise on bad bytes (the caller skips and names the file).
    """
    if out is None:
      out = multicrop.HostViews(*(None if x is None else x[0] for x in self.empty(1)))
    targets = [out.global_views[k] for k in range(self.groups[0].count)]
    if len(self.groups) > 1:
      targets += [out.local_views[k] for k in range(self.groups[1].count)]
    size = _jpeg_size(data)
    if size is None:
      full = _decode_pil(data)
      size = full.shape[1], full.shape[0]
    else:
      full = None
    width, height = size
    boxes = self.boxes(width, height, position)
    sizes = [g.size for g in self.groups for _ in range(g.count)]
    # The largest shrink every view allows: decode that much smaller in the IDCT.
    shrink = min(min(w, h) / s for (_, _, w, h), s in zip(boxes, sizes))
    level = 0 if shrink < 2 else min(int(math.log2(shrink)), _MAX_DCT_LEVEL)
    if full is None:
      img = _decode_jpeg(data, level, width, height)
    else:
      img = full
    mips = [img]
    for (x0, y0, w, h), s, target in zip(boxes, sizes, targets):
      # Level L of the mip chain holds the image at 1/2**L of the decoded size.
      sx, sy = img.shape[1] / width, img.shape[0] / height
      extra = 0
      while min(w * sx, h * sy) / 2**extra >= 2 * s:
        extra += 1
      while len(mips) <= extra:
        mips.append(_half(mips[-1]))
      m = mips[extra]
      fx, fy = m.shape[1] / width, m.shape[0] / height
      a0, b0 = int(round(x0 * fx)), int(round(y0 * fy))
      a1 = max(min(int(round((x0 + w) * fx)), m.shape[1]), a0 + 1)
      b1 = max(min(int(round((y0 + h) * fy)), m.shape[0]), b0 + 1)
      cv2.resize(m[b0:b1, a0:a1], (s, s), dst=target, interpolation=cv2.INTER_LINEAR)
    return out


__all__ = ["HOST_CROP_METHODS", "NUM_TRIES", "CropGroup", "ViewMaker", "crop_groups", "sample_box"]
