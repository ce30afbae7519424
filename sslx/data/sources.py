"""Random-access image sources for grain.

Every source maps an index to one record::

    source[i] -> {"image": uint8[S, S, 3], "label": int32 scalar}   (label -1 if unlabeled)

or to ``None`` when the file at ``i`` cannot be read or decoded (see "Unreadable files" below).
``S`` is ``source.image_size``: every record is brought to that static square shape, so batches
stack without padding and the jitted train step compiles once.

Sources also expose ``num_classes`` (0 if unlabeled), ``class_names``, ``labels`` (int32[N], all
labels without decoding), ``name(i)`` (a file name for messages), ``num_skipped`` and
``skipped_names``.

Decoding happens on the host with PIL: grayscale, RGBA, palette, CMYK, 16-bit ... images are
converted to RGB (alpha is dropped, as ``PIL.Image.convert("RGB")`` does); an image whose size
differs from ``image_size`` is resized so that its shorter side is ``image_size`` and then
center-cropped to a square. Crops and colour augmentations are not done here: they run in JAX on
the accelerator.

ImageFolder layout. ``<split>/<class>/<image>`` (images may sit in sub-folders of a class folder).
Classes are the class folders of the split, sorted alphabetically, and the label of an image is the
index of its class in that order. For CIFAR-10 the alphabetical order (airplane, automobile, bird,
cat, deer, dog, frog, horse, ship, truck) is exactly the usual CIFAR-10 label order 0..9. Because
labels come from the folders of one split, a split that lacks a class folder would shift the labels;
pass ``class_names`` (e.g. the train split's) to pin the mapping.

Archives (``.tar``, ``.tar.gz``, ``.tgz``) are read into memory once: a gzip stream has no random
access, and the images are small (the 50,000-image CIFAR-10 train archive, 16 MB compressed, holds
45 MB of JPEG bytes and loads in about a second). Directories are listed once and their files read
lazily at ``__getitem__``. Hidden files and folders (names starting with ".", e.g. macOS ``._x.jpg``
resource forks inside tar files) are ignored.

Unreadable files. A corrupt, truncated or unreadable image is never a crash: ``__getitem__`` logs a
warning naming the file (once per file), records it in ``skipped_names`` / ``num_skipped`` and
returns ``None``; the grain pipeline drops ``None`` records (``MapDataset.to_iter_dataset`` filters
them out by default) and ``decode_all`` leaves them out with a one-line summary. In grain worker
processes (``num_workers > 0``) the counters of the worker copies are not sent back to the main
process; the warnings are still logged by the workers.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import io
import logging
import operator
import os
import tarfile
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from sslx import paths, progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Folder names that mark a dataset root holding several splits, so that such a root is not taken
# for a split folder whose classes would be "train" and "test".
KNOWN_SPLIT_NAMES = ("train", "test", "val", "valid", "validation", "eval")
EMBEDDED_CLASS_NAMES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)
EMBEDDED_IMAGE_SIZE = 32
_EMBEDDED_RESOURCE = ("embedded", "cifar10_subset.tar")
# How many file names a log line or error message lists before it says "... and N more".
_MAX_NAMES_IN_MESSAGE = 10

Record = dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------
# Decoding


def decode_image(data: bytes, image_size: int) -> np.ndarray:
  """Decodes image bytes to uint8[image_size, image_size, 3].

  Raises whatever PIL raises for bytes it cannot decode (callers in this module catch it).
  """
  with Image.open(io.BytesIO(data)) as img:
    if img.format == "JPEG" and min(img.size) > image_size:
      # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves both sides
      # >= image_size: much faster for large photos, and the resize below does the rest.
      img.draft("RGB", (image_size, image_size))
    img.load()  # Image.open is lazy: this is where truncated or corrupt data raises.
    if "exif" in img.info:  # Photos from cameras store their rotation in EXIF.
      img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if img.size != (image_size, image_size):
      img = _resize_shorter_side_and_center_crop(img, image_size)
    array = np.asarray(img, dtype=np.uint8)
  if array.shape != (image_size, image_size, 3):  # A guard on the promise made to the pipeline.
    raise ValueError(f"decoded to shape {array.shape}, expected {(image_size, image_size, 3)}")
  return array


def to_rgb(img: Image.Image) -> Image.Image:
  if img.mode == "RGB":
    return img
  if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
    # 16-bit or float grayscale: PIL's convert("RGB") clips these to 255 instead of scaling.
    values = np.asarray(img, dtype=np.float64)
    top = 1.0 if img.mode == "F" else (255.0 if values.max(initial=0) <= 255 else 65535.0)
    gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")
  if img.mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")  # Palette transparency goes through RGBA, as PIL recommends.
  return img.convert("RGB")


def _resize_shorter_side_and_center_crop(img: Image.Image, size: int) -> Image.Image:
  width, height = img.size
  scale = size / min(width, height)
  new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
  img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return img.crop((left, top, left + size, top + size))


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(relpath: str) -> bool:
  return any(part.startswith(".") for part in relpath.split("/"))


def _is_archive(path: str) -> bool:
  return path.lower().endswith(ARCHIVE_SUFFIXES)


def _list_names(names: Sequence[str]) -> str:
  shown = ", ".join(names[:_MAX_NAMES_IN_MESSAGE])
  more = len(names) - _MAX_NAMES_IN_MESSAGE
  return shown + (f" ... and {more} more" if more > 0 else "")


# ----------------------------------------------------------------------------------------------
# Reading files: an archive in memory, or a directory on disk.


@dataclasses.dataclass(frozen=True)
class _ArchiveFiles:
  """The regular files of a tar archive, their bytes packed into one buffer.

  One ``bytes`` buffer plus offsets (rather than one ``bytes`` object per file) keeps 50,000 small
  files cheap to hold and fast to pickle into grain worker processes.
  """

  path: str
  names: tuple[str, ...]  # Member paths, "/"-separated, without a leading "./".
  offsets: np.ndarray  # int64[num_files + 1]; file k is buffer[offsets[k]:offsets[k + 1]].
  buffer: bytes

  def read(self, k: int) -> bytes:
    return self.buffer[self.offsets[k] : self.offsets[k + 1]]


def _tar_files(archive: tarfile.TarFile):
  """(name, member) of each regular file, the name without leading "./" and "/"."""
  for member in archive:
    if member.isfile():
      name = member.name
      while name.startswith("./"):
        name = name[2:]
      yield name.lstrip("/"), member


def _load_archive_bytes(data: bytes, path: str) -> _ArchiveFiles:
  if data[:2] == b"\x1f\x8b":  # The gzip magic number; decompress in one call (fast).
    data = gzip.decompress(data)
  names, chunks = [], []
  with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
    for name, member in _tar_files(archive):
      names.append(name)
      chunks.append(data[member.offset_data : member.offset_data + member.size])
  offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
  np.cumsum([len(c) for c in chunks], out=offsets[1:])
  return _ArchiveFiles(path=path, names=tuple(names), offsets=offsets, buffer=b"".join(chunks))


@dataclasses.dataclass(frozen=True)
class _TarIndex:
  """The regular files of an uncompressed tar archive by member offset: nothing is read until
  a file is asked for (ImageNet's train tar is ~140 GB)."""

  path: str
  names: tuple[str, ...]
  offsets: np.ndarray  # int64[num_files]: where each file's bytes start in the archive
  sizes: np.ndarray  # int64[num_files]

  def read(self, k: int) -> bytes:
    fd = _open_fds.get(self.path)
    if fd is None:  # One descriptor per process and archive (grain workers open their own).
      fd = _open_fds.setdefault(self.path, os.open(self.path, os.O_RDONLY))
    data = os.pread(fd, int(self.sizes[k]), int(self.offsets[k]))
    if len(data) != self.sizes[k]:
      raise OSError(f"{self.path}: archive ends inside member {self.names[k]}")
    return data


_open_fds: dict[str, int] = {}


def _index_tar(path: str) -> _TarIndex:
  """Member names and offsets of an uncompressed tar (headers only: tarfile seeks past data)."""
  names, offsets, sizes = [], [], []
  with tarfile.open(path, mode="r:") as archive:
    for name, member in _tar_files(archive):
      names.append(name)
      offsets.append(member.offset_data)
      sizes.append(member.size)
  return _TarIndex(path, tuple(names), np.asarray(offsets, np.int64), np.asarray(sizes, np.int64))


def _load_archive(path: str) -> _ArchiveFiles:
  try:
    data = paths.read_bytes(path)
    return _load_archive_bytes(data, path)
  except (tarfile.TarError, EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f"{path}: not a readable tar / tar.gz archive ({e})") from e


def _list_directory(root: str) -> list[str]:
  """All non-hidden files under root (a local path or a URL), as sorted "/"-separated paths
  relative to root."""
  return paths.walk_files(root)


class _Files:
  """Uniform access to the files of a directory or an archive: names, and bytes by position."""

  def __init__(self, path: str):
    paths.check_readable(path, "dataset path")
    self.path = path
    self.archive: _ArchiveFiles | _TarIndex | None = None
    if paths.isdir(path):
      self.names = _list_directory(path)
    elif _is_archive(path):
      with paths.path(path).open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
      try:
        # A local plain tar is indexed and read lazily; a gzip stream has no random access, so
        # a .tar.gz (small datasets: CIFAR) is read into memory, as is a remote archive.
        lazy = not gzipped and not paths.is_remote(path)
        self.archive = _index_tar(path) if lazy else _load_archive(path)
      except tarfile.TarError as e:
        raise ValueError(f"{path}: not a readable tar / tar.gz archive ({e})") from e
      self.names = list(self.archive.names)
    else:
      raise ValueError(
        f"{path}: expected a directory or a {'/'.join(ARCHIVE_SUFFIXES)} archive, got a file"
      )

  @classmethod
  def from_archive(cls, archive: _ArchiveFiles) -> _Files:
    files = cls.__new__(cls)
    files.path, files.archive, files.names = archive.path, archive, list(archive.names)
    return files

  def reader(self, selected: Sequence[int]) -> Callable[[int], bytes]:
    """A picklable function i -> bytes of the file self.names[selected[i]]."""
    if self.archive is not None:
      return _ArchiveReader(self.archive, np.asarray(selected, dtype=np.int64))
    return _DirectoryReader(self.path, tuple(self.names[k] for k in selected))

  def top_level(self) -> list[str]:
    """Names at the top of the directory or archive, folders with a trailing "/", for messages."""
    tops = sorted({n.split("/", 1)[0] + ("/" if "/" in n else "") for n in self.names})
    if self.archive is None:  # a walk lists no empty folders; show them too.
      tops = sorted(
        set(tops)
        | {
          e.name + "/"
          for e in paths.path(self.path).iterdir()
          if not e.name.startswith(".") and e.is_dir()
        }
      )
    return tops


@dataclasses.dataclass(frozen=True)
class _ArchiveReader:
  archive: _ArchiveFiles | _TarIndex
  indices: np.ndarray

  def __call__(self, i: int) -> bytes:
    return self.archive.read(int(self.indices[i]))


@dataclasses.dataclass(frozen=True)
class _DirectoryReader:
  root: str
  relpaths: tuple[str, ...]

  def __call__(self, i: int) -> bytes:
    if paths.is_remote(self.root):
      return paths.read_bytes(self.root.rstrip("/") + "/" + self.relpaths[i])
    with open(os.path.join(self.root, self.relpaths[i]), "rb") as f:
      return f.read()


# ----------------------------------------------------------------------------------------------
# Sources


class _ImageSource:
  """Shared machinery: index -> (bytes, label) -> decoded record, with skip accounting."""

  def __init__(
    self,
    *,
    origin: str,
    names: Sequence[str],
    labels: np.ndarray,
    read: Callable[[int], bytes],
    image_size: int | None,
    class_names: Sequence[str],
  ):
    self._origin = origin  # Where the records come from, for messages.
    self._names = list(names)  # Display names (paths relative to the origin).
    self._labels = np.asarray(labels, dtype=np.int32)
    self._read = read
    self.class_names = tuple(class_names)
    self.num_classes = len(self.class_names)
    self._skipped: set[str] = set()
    self._lock = threading.Lock()  # grain reads records from several threads.
    self.image_size = self._infer_image_size() if image_size is None else int(image_size)
    if self.image_size <= 0:
      raise ValueError(f"image_size must be positive, got {self.image_size}")

  def _infer_image_size(self) -> int:
    """The shorter side of the first readable image (``image_size=None``)."""
    for i in range(len(self)):
      try:
        with Image.open(io.BytesIO(self._read(i))) as img:
          return min(img.size)
      except Exception:  # pylint: disable=broad-except  # An unreadable file: try the next one.
        continue
    raise ValueError(f"{self._origin}: none of the {len(self)} image files can be read")

  def __len__(self) -> int:
    return len(self._names)

  def __getitem__(self, index: int) -> Record | None:
    i = operator.index(index)
    if not 0 <= i < len(self):
      raise IndexError(f"record index {i} out of range for {len(self)} records")
    try:
      image = decode_image(self._read(i), self.image_size)
    except Exception as e:  # pylint: disable=broad-except
      # PIL raises many types on bad bytes (OSError, SyntaxError, ValueError, struct.error, ...)
      # and a file may vanish or be unreadable: the contract is skip-and-name, never a crash.
      self._note_skipped(i, e)
      return None
    return {"image": image, "label": self._labels[i]}

  def read_encoded(self, index: int) -> tuple[bytes, int]:
    """(the encoded image file's bytes, label) of record ``index``, nothing decoded."""
    return self._read(index), int(self._labels[index])

  def note_skipped(self, i: int, error: Exception) -> None:
    """Records that record ``i`` could not be read or decoded, and warns once naming it."""
    self._note_skipped(i, error)

  def _note_skipped(self, i: int, error: Exception) -> None:
    name = self.name(i)
    with self._lock:
      first_time = name not in self._skipped
      self._skipped.add(name)
    if first_time:
      logging.warning("skipping unreadable image %s (%s: %s)", name, type(error).__name__, error)

  def name(self, index: int) -> str:
    """The file behind record ``index``, as a path that names the dataset too."""
    return f"{self._origin}/{self._names[index]}"

  @property
  def labels(self) -> np.ndarray:
    """int32[N]: every record's label (-1 if unlabeled), without decoding any image."""
    return self._labels

  @property
  def num_skipped(self) -> int:
    """How many distinct files were found unreadable so far (in this process)."""
    return len(self._skipped)

  @property
  def skipped_names(self) -> list[str]:
    with self._lock:
      return sorted(self._skipped)

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    del state["_lock"]  # Locks do not pickle; grain pickles sources into worker processes.
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _repr_fields(self) -> str:
    return f"records={len(self)}, num_classes={self.num_classes}, image_size={self.image_size}"

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self._repr_fields()})"


def _find_split(files: _Files, split: str, path: str) -> tuple[str, list[int]]:
  """Finds ``<split>/<class>/...`` in ``files``; returns (prefix of class folders, image indices).

  Tried in order: ``<split>/`` at the top; ``<top>/<split>/`` when everything sits under one
  extra top-level folder (as archives made with ``tar czf x.tgz dataset/`` do); the top itself,
  or the one top-level folder, when it holds class folders directly (``path`` points at a split
  folder). A top that holds other splits, or a lone folder named after another split, is an
  error rather than a silent mix-up of splits.
  """
  images = [k for k, n in enumerate(files.names) if _is_image_name(n) and not _is_hidden(n)]
  top_dirs = {n.split("/", 1)[0] for n in files.names if "/" in n}
  top_files = [n for n in files.names if "/" not in n]
  prefixes = [""]
  if len(top_dirs) == 1 and not top_files:
    prefixes.append(next(iter(top_dirs)) + "/")

  def images_under(prefix: str) -> list[int]:
    # Files at least one folder (the class) below the prefix.
    return [
      k
      for k in images
      if files.names[k].startswith(prefix) and "/" in files.names[k][len(prefix) :]
    ]

  for prefix in prefixes:
    selected = images_under(prefix + split + "/")
    if selected:
      return prefix + split + "/", selected

  for prefix in prefixes:
    # The folder that would be the split folder: the lone top-level folder, or the path itself.
    folder = (prefix.rstrip("/") or os.path.basename(os.path.normpath(path))).lower()
    candidates = images_under(prefix)
    sub_dirs = {files.names[k][len(prefix) :].split("/", 1)[0].lower() for k in candidates}
    if not candidates or sub_dirs & set(KNOWN_SPLIT_NAMES):
      continue  # Nothing here, or a dataset root holding other splits rather than a split folder.
    if folder in KNOWN_SPLIT_NAMES and folder != split.lower():
      hint = (
        " For one archive per split, give a path with {split} in it, e.g. "
        "'.../cifar10-{split}.tar.gz' (build_source fills it in)."
        if files.archive is not None
        else ""
      )
      raise ValueError(
        f"{path}: holds the split {folder!r}, not the requested split {split!r} "
        f"(expected the layout <split>/<class>/<image>, here {split}/<class>/<image>).{hint}"
      )
    if folder != split.lower():
      logging.warning(
        "%s: no %r folder; taking the class folders of %s as the %r split",
        path,
        split + "/",
        repr(prefix) if prefix else "the path itself",
        split,
      )
    return prefix, candidates

  found = files.top_level()
  found_text = _list_names(found) if found else "nothing (it is empty)"
  raise ValueError(
    f"{path}: no images in the layout <split>/<class>/<image> for split {split!r} "
    f"(expected {split}/<class>/<image> with extensions {', '.join(IMAGE_EXTENSIONS)}); "
    f"found at the top level: {found_text}"
  )


class ImageFolderSource(_ImageSource):
  """Labeled images in the layout ``<split>/<class>/<image>``, from a folder or a tar archive.

  Args:
    path: a directory, or a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive, holding ``<split>/``
      (possibly under one extra top-level folder), or pointing directly at a split folder.
    split: the split folder to read, e.g. "train" or "test".
    image_size: the side S of the uint8[S, S, 3] records; ``None``: the shorter side of the first
      image (fine for fixed-size datasets like CIFAR-10).
    class_names: fixes the class -> label mapping (label = position in this sequence); a class
      folder not in it is an error. Default: the split's class folders, sorted alphabetically.
  """

  def __init__(
    self,
    path: str | os.PathLike[str],
    split: str = "train",
    image_size: int | None = None,
    *,
    class_names: Sequence[str] | None = None,
    _files: _Files | None = None,
  ):
    path = os.fspath(path)
    files = _files if _files is not None else _Files(path)
    prefix, selected = _find_split(files, split, path)
    # Sorted by (class, path): the record order does not depend on how the files were listed.
    pairs = sorted(
      (files.names[k][len(prefix) :].split("/", 1)[0], files.names[k], k) for k in selected
    )
    found_classes = sorted({c for c, _, _ in pairs})
    if class_names is None:
      class_names = found_classes
    else:
      unknown = sorted(set(found_classes) - set(class_names))
      if unknown:
        raise ValueError(
          f"{path}: class folders {unknown} of split {split!r} are not in "
          f"class_names={list(class_names)}"
        )
    label_of = {c: j for j, c in enumerate(class_names)}
    self.path, self.split = path, split
    super().__init__(
      origin=path,
      names=[n for _, n, _ in pairs],
      labels=np.array([label_of[c] for c, _, _ in pairs], dtype=np.int32),
      read=files.reader([k for _, _, k in pairs]),
      image_size=image_size,
      class_names=class_names,
    )

  def __repr__(self) -> str:
    return f"ImageFolderSource(path={self.path!r}, split={self.split!r}, {self._repr_fields()})"


class FlatFolderSource(_ImageSource):
  """Unlabeled images (label -1): every image file anywhere under a folder or in an archive.

  Args:
    path: a directory or a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive.
    image_size: the side S of the uint8[S, S, 3] records; ``None``: the first image's shorter side.
  """

  def __init__(self, path: str | os.PathLike[str], image_size: int | None = None):
    path = os.fspath(path)
    files = _Files(path)
    selected = [k for k, n in enumerate(files.names) if _is_image_name(n) and not _is_hidden(n)]
    if not selected:
      found = files.top_level()
      raise ValueError(
        f"{path}: no image files (expected files with extensions "
        f"{', '.join(IMAGE_EXTENSIONS)}, at any depth); found at the top level: "
        f"{_list_names(found) if found else 'nothing (it is empty)'}"
      )
    selected.sort(key=lambda k: files.names[k])
    self.path = path
    super().__init__(
      origin=path,
      names=[files.names[k] for k in selected],
      labels=np.full(len(selected), -1, dtype=np.int32),
      read=files.reader(selected),
      image_size=image_size,
      class_names=(),
    )

  def __repr__(self) -> str:
    return f"FlatFolderSource(path={self.path!r}, {self._repr_fields()})"


_embedded_cache: dict[str, _ArchiveFiles] = {}
_embedded_lock = threading.Lock()


def embedded_archive_path() -> str:
  """Where the packaged CIFAR-10 subset tar lives (a real file in a normal or editable install)."""
  return str(importlib.resources.files("sslx.data").joinpath(*_EMBEDDED_RESOURCE))


def _embedded_files() -> _Files:
  # Parsed once per process and shared by the train and test sources (18 MB).
  with _embedded_lock:
    if "archive" not in _embedded_cache:
      resource = importlib.resources.files("sslx.data").joinpath(*_EMBEDDED_RESOURCE)
      try:
        data = resource.read_bytes()
      except FileNotFoundError as e:
        raise FileNotFoundError(
          f"the embedded dataset is missing from the installed package: {resource} "
          "(regenerate it with tools/make_embedded_dataset.py)"
        ) from e
      _embedded_cache["archive"] = _load_archive_bytes(data, "<embedded cifar10_subset.tar>")
    return _Files.from_archive(_embedded_cache["archive"])


class EmbeddedSource(ImageFolderSource):
  """The CIFAR-10 subset shipped with sslx: 1,000 train / 200 test JPEGs per class, 32x32.

  10,000 train and 2,000 test records; labels follow the CIFAR-10 order (airplane=0 ... truck=9).
  Made by ``tools/make_embedded_dataset.py``. A default that needs no download and no path.
  """

  def __init__(self, split: str = "train", image_size: int = EMBEDDED_IMAGE_SIZE):
    if split not in ("train", "test"):
      raise ValueError(f"the embedded dataset has splits 'train' and 'test', got {split!r}")
    super().__init__(
      "<embedded cifar10_subset.tar>",
      split,
      image_size,
      class_names=EMBEDDED_CLASS_NAMES,
      _files=_embedded_files(),
    )

  def __repr__(self) -> str:
    return f"EmbeddedSource(split={self.split!r}, {self._repr_fields()})"


class TfdsSource(_ImageSource):
  """A prepared TFDS dataset read through ``tfds.data_source`` (array_record, no TensorFlow).

  Needs the optional extra: ``pip install 'sslx[tfds]'``. The dataset must already be prepared
  in ``data_dir`` (preparing one needs TensorFlow and is outside sslx).

  Args:
    name: the TFDS name, e.g. "cifar10" or "imagenet2012:5.1.0".
    split: a TFDS split, e.g. "train" or "test[:10%]".
    data_dir: where the prepared dataset lives (None: TFDS's default).
    image_key, label_key: feature names; ``label_key=None`` makes the source unlabeled.
    image_size: the side S of the records; ``None``: from the image feature's static shape.
  """

  def __init__(
    self,
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    image_key: str = "image",
    label_key: str | None = "label",
    image_size: int | None = None,
  ):
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
        "TfdsSource needs tensorflow_datasets, an optional extra of sslx: "
        "install it with  pip install 'sslx[tfds]'"
      ) from e
    self._tfds_source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.tfds_name, self.split = name, split
    self._image_key, self._label_key = image_key, label_key
    info = getattr(self._tfds_source, "dataset_info", None)
    label_feature = _tfds_feature(info, label_key)
    class_names = tuple(getattr(label_feature, "names", None) or ())
    if image_size is None:
      shape = getattr(_tfds_feature(info, image_key), "shape", None)
      if not shape or shape[0] is None or shape[1] is None:
        raise ValueError(
          f"tfds dataset {name!r}: images have no fixed size ({shape}); set dataset.image_size"
        )
      image_size = min(shape[0], shape[1])
    # No per-record names or labels are built up front: ImageNet has 1.28M records.
    super().__init__(
      origin=f"tfds:{name}[{split}]",
      names=(),
      labels=np.zeros(0, np.int32),
      read=self._tfds_source.__getitem__,
      image_size=image_size,
      class_names=class_names,
    )

  def __len__(self) -> int:
    return len(self._tfds_source)

  def name(self, index: int) -> str:
    return f"{self._origin}#{index}"

  def read_encoded(self, index: int) -> tuple[bytes, int]:
    record = self._tfds_source[int(index)]
    image = record[self._image_key]
    if not isinstance(image, bytes):
      image = _png_bytes(np.asarray(image, dtype=np.uint8))
    return image, (-1 if self._label_key is None else int(record[self._label_key]))

  def __getitem__(self, index: int) -> Record | None:
    i = operator.index(index)
    if not 0 <= i < len(self):
      raise IndexError(f"record index {i} out of range for {len(self)} records")
    try:
      record = self._tfds_source[i]
      image = record[self._image_key]
      if isinstance(image, bytes):
        image = decode_image(image, self.image_size)
      else:
        image = np.asarray(image, dtype=np.uint8)
        if image.ndim == 2 or image.shape[-1] != 3 or image.shape[:2] != (self.image_size,) * 2:
          image = decode_image(_png_bytes(image), self.image_size)
      label = -1 if self._label_key is None else int(record[self._label_key])
    except Exception as e:  # pylint: disable=broad-except
      self._note_skipped(i, e)
      return None
    return {"image": image, "label": np.int32(label)}

  @property
  def labels(self) -> np.ndarray:
    raise NotImplementedError("TfdsSource reads labels with the records; use decode_all(source)")

  def __repr__(self) -> str:
    return f"TfdsSource(name={self.tfds_name!r}, split={self.split!r}, {self._repr_fields()})"


def _tfds_feature(info, key: str | None):
  """``info.features[key]``, or None when the dataset info or the feature is not there."""
  try:
    return info.features[key] if key is not None else None
  except (AttributeError, KeyError, TypeError):
    return None


def _png_bytes(image: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.squeeze(image)).save(out, format="PNG")
  return out.getvalue()


# ----------------------------------------------------------------------------------------------
# Helpers


def decode_all(
  source,
  num_threads: int | None = None,
  indices: Sequence[int] | None = None,
  what: str = "decoding",
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every record, or those at ``indices``: (images uint8[N, S, S, 3], labels int32[N]).

  The fast path for evaluation feature extraction and small datasets (the 10,000-image embedded
  train split decodes in about a second on one core). Only the requested records are read, into
  one array allocated up front (peak memory: the result, not a list of records plus a copy).
  Unreadable files are left out and named in one summary log line, so N can be smaller than
  requested. PIL releases the GIL while decoding, so a few threads help with large images.
  Long decodes report progress under `what` (`progress.Ticker`).
  """
  order = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
  n = len(order)
  size = getattr(source, "image_size", 0)
  if num_threads is None:  # Threads only pay off for large images (see default_read_threads).
    num_threads = 1 if size <= 64 else min(8, os.cpu_count() or 1)
  images = np.zeros((n, size, size, 3), dtype=np.uint8)
  labels = np.zeros(n, dtype=np.int32)
  ok = np.zeros(n, dtype=bool)

  def decode_chunk(start: int) -> None:
    for j in range(start, min(n, start + 512)):
      record = source[int(order[j])]
      if record is not None:
        images[j], labels[j], ok[j] = record["image"], record["label"], True

  starts = range(0, n, 512)
  ticker = progress.Ticker(what, n, "images")
  if num_threads > 1 and len(starts) > 1:
    with futures.ThreadPoolExecutor(num_threads) as pool:
      for i, _ in enumerate(futures.as_completed([pool.submit(decode_chunk, s) for s in starts])):
        ticker.update(min(n, (i + 1) * 512))
  else:
    for start in starts:
      decode_chunk(start)
      ticker.update(min(n, start + 512))
  ticker.finish()
  if not ok.all():
    bad = [source.name(int(order[j])) for j in np.flatnonzero(~ok)]
    logging.warning("skipped %d unreadable files: %s", len(bad), _list_names(bad))
    keep = np.flatnonzero(ok)
    images[: len(keep)] = images[keep]  # compact in place: no second full-size array
    images, labels = images[: len(keep)], labels[keep]
  return images, labels


def balanced_subset(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of ``limit`` records, as even over the classes as they allow.

  Each class's records are put in random order (``seed``); records are then taken by their rank
  within their class (all first-ranked ones, then all second-ranked, ...), ties in random order,
  so every class gives ``limit // C`` or one more, and a class too small for its share gives
  all it has. ``limit`` <= 0 or >= ``len(labels)``: every index.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if limit <= 0 or limit >= n:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  perm = rng.permutation(n)
  rank = np.empty(n, np.int64)
  for c in np.unique(labels):
    members = perm[labels[perm] == c]  # this class in random order
    rank[members] = np.arange(len(members))
  chosen = np.lexsort((rng.random(n), rank))[:limit]
  return np.sort(chosen)


DATASETS = ("embedded", "image_folder", "flat_folder", "tfds", "array_record")

# Sources of other modules that read `path`: name -> (path, split, image_size) -> source.
# sslx.data.array_records registers "array_record" (it builds on this module, so this module
# cannot import it).
_PATH_SOURCES: dict[str, Callable[[str, str, int | None], Any]] = {}


def register_path_source(name: str, build: Callable[[str, str, int | None], Any]) -> None:
  if name not in DATASETS:
    raise ValueError(f"{name!r} is not in DATASETS {DATASETS}")
  _PATH_SOURCES[name] = build


# Public names for the prepared-dataset module (sslx.data.array_records).
Files = _Files
ImageSource = _ImageSource
list_names = _list_names


def _cfg_get(cfg, key: str, default=None):
  """cfg[key], with a missing key, None or "" (the usual "unset" in configs) giving default."""
  try:
    value = cfg.get(key, default)
  except AttributeError:
    value = getattr(cfg, key, default)
  return default if value is None or value == "" else value


def build_source(dataset_cfg, split: str):
  """Builds the source for ``split`` from a config (an ``ml_collections.ConfigDict`` or a dict).

  Fields: ``name`` (one of ``DATASETS``), ``path`` (image_folder / flat_folder; may contain
  ``{split}``, e.g. ".../cifar10-{split}.tar.gz" for one archive per split), ``image_size``
  (optional; the embedded set is 32), ``class_names`` (optional, image_folder), ``tfds_name``,
  ``data_dir``, ``image_key``, ``label_key`` (tfds).
  """
  name = _cfg_get(dataset_cfg, "name")
  image_size = _cfg_get(dataset_cfg, "image_size") or None
  if name not in DATASETS:
    raise ValueError(f"unknown dataset.name={name!r}; valid choices: {', '.join(DATASETS)}")
  if name == "embedded":
    return EmbeddedSource(split, image_size or EMBEDDED_IMAGE_SIZE)
  if name == "tfds":
    tfds_name = _cfg_get(dataset_cfg, "tfds_name")
    if not tfds_name:
      raise ValueError("dataset.name='tfds' needs dataset.tfds_name (e.g. 'cifar10')")
    return TfdsSource(
      tfds_name,
      split,
      _cfg_get(dataset_cfg, "data_dir"),
      image_key=_cfg_get(dataset_cfg, "image_key", "image"),
      label_key=_cfg_get(dataset_cfg, "label_key", "label"),
      image_size=image_size,
    )
  path = _cfg_get(dataset_cfg, "path")
  if not path:
    raise ValueError(f"dataset.name={name!r} needs dataset.path (a folder or a tar archive)")
  path = str(path) if paths.is_remote(str(path)) else os.path.expanduser(str(path))
  path = path.replace("{split}", split)
  if name in _PATH_SOURCES:
    return _PATH_SOURCES[name](path, split, image_size)
  if name == "flat_folder":
    if split != "train":
      raise ValueError(
        f"dataset.name='flat_folder' is unlabeled and has only a 'train' split, got {split!r}; "
        "evaluate on a labeled dataset"
      )
    return FlatFolderSource(path, image_size)
  class_names = _cfg_get(dataset_cfg, "class_names")
  return ImageFolderSource(
    path, split, image_size, class_names=tuple(class_names) if class_names else None
  )
