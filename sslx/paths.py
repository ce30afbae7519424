"""Paths are URLs: local paths, `gs://bucket/dir`, or another scheme `etils.epath` opens
through fsspec (`s3://` with s3fs, `az://` with adlfs), all through `etils.epath`.

Orbax checkpoints take the same URLs: orbax lists and renames directories through epath and
writes arrays through tensorstore, whose own GCS driver talks to GCS directly.

GCS emulators. `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` is the variable Google's clients and
gcsfs read. Tensorstore does not read it; its HTTP driver takes its endpoint from
`TENSORSTORE_GCS_HTTP_URL` and its bearer token from `GOOGLE_AUTH_TOKEN_FOR_TESTING`.
`use_gcs_emulator_if_set()` (run when this module is imported, before anything touches
storage) fills
those from `STORAGE_EMULATOR_HOST`, switches gcsfs to anonymous access and turns off gcsfs's
bucket-type lookup (a gRPC control-plane call that emulators do not serve), so one variable
points every client at the emulator. Without that variable it does nothing.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable
from typing import BinaryIO

from etils import epath

_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def use_gcs_emulator_if_set() -> bool:
  """Points tensorstore and gcsfs at $STORAGE_EMULATOR_HOST when it is set (see module doc).

  Call before gcsfs or tensorstore are first used; explicit settings already in the
  environment win."""
  host = os.environ.get(_EMULATOR_ENV, "")
  if host in ("", "default"):
    return False
  url = host if host.startswith(("http://", "https://")) else f"http://{host}"
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  import fsspec.config  # noqa: PLC0415  (only when an emulator is in use)

  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("token", "anon")
  return True


def is_remote(url: str | os.PathLike) -> bool:
  return "://" in os.fspath(url) and not os.fspath(url).startswith("file://")


def path(url: str | os.PathLike) -> epath.Path:
  """An epath for `url`; local paths are made absolute (as before URLs were accepted)."""
  url = os.fspath(url)
  return epath.Path(url if is_remote(url) else os.path.abspath(url))


def join(url: str | os.PathLike, *parts: str) -> str:
  """`url/part/...` as a string, without touching storage."""
  return os.fspath(path(url).joinpath(*parts))


def exists(url) -> bool:
  return path(url).exists()


def isdir(url) -> bool:
  return path(url).is_dir()


def read_bytes(url) -> bytes:
  return path(url).read_bytes()


def read_text(url) -> str:
  return path(url).read_text()


def write_bytes(url, data: bytes) -> str:
  """Writes `data` to `url` whole: a local file through a temporary name and a rename, an
  object store in one upload (objects appear complete or not at all)."""
  p = path(url)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(url):
    p.write_bytes(data)
  else:
    tmp = p.parent / f".{p.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, p)
  return os.fspath(p)


def write_text(url, text: str) -> str:
  return write_bytes(url, text.encode("utf-8"))


def save(url, write: Callable[[BinaryIO], object]) -> str:
  """Runs `write(file)` into memory and stores the bytes at `url` (figures and images:
  matplotlib and PIL write to any file object; give them `file_format(url)`)."""
  buf = io.BytesIO()
  write(buf)
  return write_bytes(url, buf.getvalue())


def file_format(url, default: str = "png") -> str:
  """The format name a suffix stands for ("png" for "x.png", "gif", "jpeg")."""
  ext = os.path.splitext(os.fspath(url))[1].lstrip(".").lower()
  return {"jpg": "jpeg"}.get(ext, ext) or default


def read_json(url):
  return json.loads(read_text(url))


def makedirs(url) -> str:
  p = path(url)
  p.mkdir(parents=True, exist_ok=True)
  return os.fspath(p)


def walk_files(url) -> list[str]:
  """Every non-hidden file under `url` as a sorted "/"-separated path relative to it (hidden
  folders skipped)."""
  if not is_remote(url):
    found = []
    root = os.fspath(url)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      rel = os.path.relpath(dirpath, root)
      prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
      found.extend(prefix + f for f in filenames if not f.startswith("."))
    return sorted(found)
  root = path(url)
  # The walk yields folders without the scheme ("bucket/dir" for "gs://bucket/dir").
  bare = os.fspath(root).split("://", 1)[1].rstrip("/")
  out = []
  for dirpath, dirnames, filenames in root.walk():
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    folder = os.fspath(dirpath)
    folder = folder.split("://", 1)[1] if "://" in folder else folder
    rel = folder[len(bare) :].strip("/")
    prefix = rel + "/" if rel else ""
    if any(part.startswith(".") for part in rel.split("/") if part):
      continue
    out.extend(prefix + f for f in filenames if not f.startswith("."))
  return sorted(out)


def file_sizes(url) -> dict[str, int]:
  """{relative path: bytes} of every non-hidden file under `url` (`walk_files`' names; {} if
  there is none), in one listing for an object store."""
  if not is_remote(url):
    return {rel: os.path.getsize(os.path.join(url, rel)) for rel in walk_files(url)}
  import fsspec  # noqa: PLC0415  (URLs only)

  fs, root = fsspec.core.url_to_fs(os.fspath(url))
  root = root.rstrip("/")
  fs.invalidate_cache(root)  # another process may have written there since the last listing
  try:
    found = fs.find(root, detail=True)
  except FileNotFoundError:
    return {}
  return {
    name[len(root) :].lstrip("/"): int(info["size"])
    for name, info in found.items()
    if info.get("type", "file") == "file" and name.startswith(root + "/")
  }


class StorageError(OSError):
  """A workdir or dataset URL that cannot be reached or written (named, with the cause)."""


def check_writable(url) -> None:
  """Creates `url` and writes, reads back and deletes a small probe object in it, so a
  missing bucket, missing credentials or a read-only location fail before any work."""
  try:
    p = path(url)
    p.mkdir(parents=True, exist_ok=True)
    probe = p / f".sslx-write-check-{uuid.uuid4().hex}"
    probe.write_text("ok")
    if probe.read_text() != "ok":
      raise OSError("the probe object read back differently")
    probe.unlink()
  except Exception as e:  # noqa: BLE001  (any client error: auth, network, permission)
    raise StorageError(
      f"cannot write to the workdir {os.fspath(url)!r}: {type(e).__name__}: {e}"
    ) from e


def check_readable(url, what: str) -> None:
  """Fails naming `what`, the URL and the cause when `url` cannot be reached."""
  try:
    found = path(url).exists()
  except Exception as e:  # noqa: BLE001
    raise StorageError(f"cannot reach {what} {os.fspath(url)!r}: {type(e).__name__}: {e}") from e
  if not found:
    raise FileNotFoundError(f"{what} does not exist: {os.fspath(url)}")


use_gcs_emulator_if_set()
