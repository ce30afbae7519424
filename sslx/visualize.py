"""Pictures of what a trained checkpoint does, one subcommand each:

    python -m sslx visualize attention --config=experiments/dino.py --workdir=/tmp/dino-cpu \
        --image=cat.png --out=attn.png [--mass=0.6] [--which=teacher] [--panel=160]

Every subcommand restores the latest checkpoint in --workdir with ``sslx.train.restore_latest``
(the config must describe the same method and model) and writes one PNG.

``attention`` (DINO, Caron et al. 2021, Fig. 1/3 and §4.2.1): runs the ViT on the image with
``return_attention=True`` and draws, side by side, the image, each head's last-layer CLS→patch
attention upsampled over it and, below, the masks that keep the top 60% of each head's
attention mass (the paper's thresholding: the smallest set of patches holding ≥ 60% of the
mass), plus the same mask for the mean over heads. DINO/DINOv2 use the *teacher*'s ViT
(``--which=student`` for the student); other methods with a ViT encoder use it directly.

Adding a subcommand: either put a module in ``sslx/visualizers/`` with
``render(config, workdir, out, num_images=8) -> path`` (``reconstruction``, ``inpainting``,
``colorization`` are found that way, imported only when run, with ``--num_images``), or
decorate a function ``fn(config, workdir, args: dict) -> str`` (the path written) with
:func:`register`, declaring its own flags. The dispatcher, the shared flags (``--config``,
``--workdir``, ``--out``) and :func:`load_image` / :func:`save_png`
are shared.

PNGs are rendered with matplotlib (the ``[plots]``/``[dev]`` extras) when importable, else
with PIL; both give exactly ``columns × panel`` by ``rows × panel`` pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from sslx import data, paths, train
from sslx.models import ViT


@dataclasses.dataclass(frozen=True)
class Flag:
  name: str
  default: Any
  help: str
  type: type = str  # str | int | float | bool


@dataclasses.dataclass(frozen=True)
class Subcommand:
  name: str
  run: Callable[[Any, str, dict], str]
  help: str
  flags: tuple[Flag, ...] = ()
  # config -> why this picture cannot be drawn for it ("" when it can)
  unavailable: Callable[[Any], str] | None = None


SUBCOMMANDS: dict[str, Subcommand] = {}
COMMON_FLAGS = (
  Flag("workdir", None, "run directory holding checkpoints/"),
  Flag("out", "visualization.png", "output PNG path"),
)


def register(name: str, help: str, flags: Sequence[Flag] = (), unavailable=None):  # noqa: A002
  """Decorator: makes `fn(config, workdir, args) -> path` the subcommand `name`;
  `unavailable(config)` says why a config cannot have this picture ("" when it can)."""

  def deco(fn):
    if name in SUBCOMMANDS:
      raise ValueError(f"visualize subcommand {name!r} registered twice")
    SUBCOMMANDS[name] = Subcommand(name, fn, help, tuple(flags), unavailable)
    return fn

  return deco


def unavailable(name: str, config) -> str:
  """Why subcommand `name` cannot draw `config`'s network ("" when it can)."""
  check = SUBCOMMANDS[name].unavailable
  return check(config) if check else ""


def run(name: str, config, workdir: str, **args) -> str:
  """Runs subcommand `name` in-process (flag defaults fill what `args` leaves out)."""
  if name not in SUBCOMMANDS:
    raise ValueError(f"unknown visualize subcommand {name!r}; valid: {sorted(SUBCOMMANDS)}")
  sub = SUBCOMMANDS[name]
  full = {f.name: f.default for f in COMMON_FLAGS + sub.flags if f.name != "workdir"}
  unknown = sorted(set(args) - set(full))
  if unknown:
    raise TypeError(f"{name}: unknown argument(s) {unknown}; valid: {sorted(full)}")
  full.update(args)
  return sub.run(config, workdir, full)


# ---------------------------------------------------------------------------------------------
# Shared helpers.


def load_image(path: str, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: shorter side resized to `size`, centre-cropped (as the data
  pipeline does)."""

  with open(path, "rb") as f:
    return data.decode_image(f.read(), size)


def _colormap(x: np.ndarray) -> np.ndarray:
  """[..] in [0, 1] → [.., 3] RGB in [0, 1]: matplotlib's 'inferno' if available, else a
  similar black→purple→orange→yellow ramp."""
  try:
    from matplotlib import colormaps

    return colormaps["inferno"](np.clip(x, 0, 1))[..., :3]
  except ImportError:
    stops = np.array(
      [[0, 0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04], [0.99, 1.0, 0.64]]
    )
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    t = (pos - lo)[..., None]
    return stops[lo] * (1 - t) + stops[lo + 1] * t


def upsample(x: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
  """[h, w] float or [h, w, 3] uint8 → `size` × `size` (bilinear, or nearest for masks)."""

  resample = Image.NEAREST if nearest else Image.BILINEAR
  if x.ndim == 2:
    return np.asarray(
      Image.fromarray(x.astype(np.float32), mode="F").resize((size, size), resample)
    )
  return np.asarray(Image.fromarray(x).resize((size, size), resample))


def save_png(
  panels: Sequence[Sequence[np.ndarray]],
  titles: Sequence[Sequence[str]],
  path: str,
  backend: str = "auto",
) -> str:
  """Writes a grid of equally sized uint8 RGB panels [P, P, 3] with a caption on each.

  The PNG is exactly (columns·P) × (rows·P) pixels with either backend ("matplotlib", "pil"
  or "auto": matplotlib if importable)."""
  rows, cols = len(panels), max(len(r) for r in panels)
  p = panels[0][0].shape[0]
  if backend == "auto":
    try:
      import matplotlib  # noqa: F401

      backend = "matplotlib"
    except ImportError:
      backend = "pil"
  if backend == "matplotlib":
    # The object API (no pyplot): no global backend state, nothing shown.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(cols * p / dpi, rows * p / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    for r, row in enumerate(panels):
      for c, img in enumerate(row):
        ax = fig.add_axes((c / cols, 1 - (r + 1) / rows, 1 / cols, 1 / rows))
        ax.imshow(img, interpolation="nearest")
        ax.set_axis_off()
        ax.text(
          0.03,
          0.97,
          titles[r][c],
          transform=ax.transAxes,
          va="top",
          ha="left",
          fontsize=max(6, p // 16),
          color="white",
          bbox=dict(facecolor="black", alpha=0.5, pad=1, linewidth=0),
        )
    paths.save(path, lambda f: fig.savefig(f, format=paths.file_format(path), dpi=dpi))
  elif backend == "pil":
    from PIL import ImageDraw

    canvas = Image.new("RGB", (cols * p, rows * p), "black")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(panels):
      for c, img in enumerate(row):
        canvas.paste(Image.fromarray(img), (c * p, r * p))
        draw.text((c * p + 3, r * p + 2), titles[r][c], fill="white")
    paths.save(path, lambda f: canvas.save(f, format="PNG"))
  else:
    raise ValueError(f"backend={backend!r}; valid: auto, matplotlib, pil")
  return path


# ---------------------------------------------------------------------------------------------
# attention


def mass_mask(attn: np.ndarray, mass: float = 0.6) -> np.ndarray:
  """The smallest set of positions holding ≥ `mass` of each row's attention (DINO §4.2.1).

  attn [..., N] non-negative → bool [..., N]. Positions are taken from the largest down
  until their total reaches `mass` of the row's sum."""
  attn = np.asarray(attn, np.float64)
  order = np.argsort(-attn, axis=-1, kind="stable")
  sorted_ = np.take_along_axis(attn, order, axis=-1)
  total = np.maximum(sorted_.sum(-1, keepdims=True), 1e-30)
  before = (np.cumsum(sorted_, axis=-1) - sorted_) / total  # mass of the larger ones
  keep_sorted = before < mass
  mask = np.zeros_like(keep_sorted)
  np.put_along_axis(mask, order, keep_sorted, axis=-1)
  return mask


def _vit_attention_fn(method, which: str):
  """fn(params, batch_stats, method_state, images uint8) → [B, heads, T, T]."""
  if hasattr(method, "attention_maps"):
    return lambda p, b, s, x: method.attention_maps(p, b, s, x, which=which)
  net = getattr(method, "net", None)
  for field in ("encoder", "backbone"):
    module = getattr(net, field, None)
    if isinstance(module, ViT):

      def fn(p, b, s, x, field=field):
        del s
        return net.apply(
          {"params": p, "batch_stats": b},
          method.preprocess(x),
          method=lambda m, y: getattr(m, field)(y, train=False, return_attention=True)["attention"],
        )

      return fn
  raise ValueError(
    f"{type(method).__name__}'s network has no ViT encoder: attention maps need model.name=vit_*"
  )


def cls_attention(method, state, image: np.ndarray, which: str = "teacher") -> np.ndarray:
  """Last-layer attention of the CLS token to every patch, [heads, gh, gw] (rows sum to ≤ 1:
  the CLS→CLS weight is left out)."""
  fn = jax.jit(_vit_attention_fn(method, which))
  attn = fn(state.params["model"], state.batch_stats, state.method_state, image[None])
  attn = np.asarray(attn)[0, :, 0, 1:]  # [heads, N]
  grid = int(round(np.sqrt(attn.shape[-1])))
  if grid * grid != attn.shape[-1]:
    raise ValueError(f"{attn.shape[-1]} patch tokens do not form a square grid")
  return attn.reshape(attn.shape[0], grid, grid)


def attention_panels(image: np.ndarray, attn: np.ndarray, mass: float = 0.6, panel: int = 160):
  """(panels, titles) for :func:`save_png`: row 0 the image and each head's attention over
  it; row 1 the mean-over-heads mask and each head's mask (`mass` of the attention)."""
  heads = attn.shape[0]
  base = upsample(image, panel).astype(np.float32) / 255.0
  flat = attn.reshape(heads, -1)
  masks = mass_mask(flat, mass).reshape(attn.shape)
  mean_mask = mass_mask(flat.mean(0), mass).reshape(attn.shape[1:])
  to_u8 = lambda x: (np.clip(x, 0, 1) * 255).astype(np.uint8)  # noqa: E731

  def overlay(a):
    a = upsample(a / max(a.max(), 1e-12), panel)
    return to_u8(0.4 * base + 0.6 * _colormap(a))

  def masked(m):
    m = upsample(m.astype(np.float32), panel, nearest=True)[..., None]
    tint = np.array([0.1, 0.9, 0.3])
    return to_u8(np.where(m > 0.5, 0.6 * base + 0.4 * tint, 0.25 * base))

  row0 = [to_u8(base)] + [overlay(attn[h]) for h in range(heads)]
  row1 = [masked(mean_mask)] + [masked(masks[h]) for h in range(heads)]
  pct = int(round(100 * mass))
  titles = [
    ["image"] + [f"head {h}" for h in range(heads)],
    [f"mean {pct}%"] + [f"head {h} {pct}%" for h in range(heads)],
  ]
  return [row0, row1], titles


def figure_size(num_heads: int, panel: int) -> tuple[int, int]:
  """(width, height) in pixels of the attention PNG."""
  return ((num_heads + 1) * panel, 2 * panel)


@register(
  "attention",
  "DINO attention maps: each head's last-layer CLS attention and the "
  "masks keeping a fraction of its mass",
  flags=(
    Flag("image", None, "input image file (any format PIL reads); default: test images"),
    Flag("num_images", 4, "without --image: how many test images to draw", int),
    Flag("mass", 0.6, "fraction of the attention mass the masks keep", float),
    Flag("which", "teacher", "teacher | student (EMA-teacher methods)"),
    Flag(
      "image_size",
      0,
      "side the image is resized to (0: the training crop size); a multiple of the patch size",
      int,
    ),
    Flag("panel", 160, "pixels per panel side", int),
    Flag("backend", "auto", "auto | matplotlib | pil"),
  ),
  unavailable=lambda c: (
    "" if c.model.name.startswith("vit") else f"the encoder is {c.model.name}, not a ViT"
  ),
)
def attention(config, workdir: str, args: dict) -> str:
  setup, state, _ = train.restore_latest(config, workdir)
  method = setup.method
  size = int(args.get("image_size") or 0)
  if not size:
    views = getattr(method, "views", None)
    size = views.global_size if views is not None else int(config.dataset.image_size)
  if args.get("image"):
    images = [load_image(args["image"], size)]
  else:  # the first test images, two rows each
    test = data.build_source(config.dataset, config.dataset.eval_split)
    records = [test[i] for i in range(min(int(args.get("num_images") or 4), len(test)))]
    images = [
      np.asarray(Image.fromarray(r["image"]).resize((size, size), Image.BICUBIC))
      for r in records
      if r is not None
    ]
  panels, titles = [], []
  for image in images:
    attn = cls_attention(method, state, image, which=args.get("which", "teacher"))
    rows, names = attention_panels(image, attn, float(args["mass"]), int(args["panel"]))
    panels += rows
    titles += names
  return save_png(panels, titles, args["out"], backend=args.get("backend", "auto"))


# ---------------------------------------------------------------------------------------------
# Visualizers living in sslx/visualizers/<name>.py with `render(config, workdir, out,
# num_images=8) -> path` (reconstruction, inpainting, colorization, ...) become subcommands of
# the same name; they are imported only when run.


def _register_visualizer_modules():
  import importlib
  import pkgutil

  try:
    package = importlib.import_module("sslx.visualizers")
  except ImportError:
    return
  for info in pkgutil.iter_modules(package.__path__):
    if info.name.startswith("_") or info.name in SUBCOMMANDS:
      continue

    def run_module(config, workdir, args, name=info.name):
      module = importlib.import_module(f"sslx.visualizers.{name}")
      return module.render(config, workdir, args["out"], num_images=int(args["num_images"]))

    register(
      info.name,
      f"sslx.visualizers.{info.name}.render",
      flags=(Flag("num_images", 8, "test images to show", int),),
    )(run_module)


_register_visualizer_modules()
