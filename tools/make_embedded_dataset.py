"""Writes the CIFAR-10 subset that ships inside sslx (sslx/data/embedded/cifar10_subset.tar).

    python tools/make_embedded_dataset.py --src ../shared/datasets/cifar10 \
        --out sslx/data/embedded/cifar10_subset.tar

Reads ``<src>/cifar10-train.tar.gz`` and ``<src>/cifar10-test.tar.gz`` (ImageFolder layout
``<split>/<class>/<NNNN>.jpg``) and keeps, per class, a seeded random choice of 1,000 train and
200 test images: a balanced set small enough to ship (10,000 + 2,000 images) and large enough for
a few-minute CPU demo with a meaningful k-NN / linear evaluation.

The images are the original JPEG bytes under their original names (no re-encoding, so each one
can be traced back to the full set). The output is one uncompressed tar: sorted members, fixed
mtime / owner / mode, no folder entries, so rerunning the script gives a byte-identical file.
"""

import argparse
import collections
import gzip
import hashlib
import io
import os
import tarfile

import numpy as np

PER_CLASS = {"train": 1000, "test": 200}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SEED = 0
# A fixed timestamp (2024-01-01 00:00 UTC): tar stores one per member, and a fixed one keeps the
# output byte-identical between runs.
MTIME = 1704067200


def read_split(archive_path: str, split: str) -> dict[str, dict[str, bytes]]:
  """{class: {file name: JPEG bytes}} for ``<split>/<class>/<file>`` members of the archive."""
  by_class: dict[str, dict[str, bytes]] = collections.defaultdict(dict)
  with open(archive_path, "rb") as f:
    data = gzip.decompress(f.read())
  with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
    for member in archive:
      parts = member.name.removeprefix("./").split("/")
      if member.isfile() and len(parts) == 3 and parts[0] == split:
        by_class[parts[1]][parts[2]] = archive.extractfile(member).read()
  missing = set(CLASSES) - set(by_class)
  if missing:
    raise ValueError(f"{archive_path}: no {split}/<class>/ folders for {sorted(missing)}")
  return by_class


def choose(
  by_class: dict[str, dict[str, bytes]], per_class: int, rng: np.random.Generator
) -> list[tuple[str, str, bytes]]:
  """A seeded choice of per_class files from each class, in sorted order."""
  chosen = []
  for cls in CLASSES:
    names = sorted(by_class[cls])
    if len(names) < per_class:
      raise ValueError(f"class {cls!r} has {len(names)} images, fewer than {per_class}")
    picks = sorted(rng.choice(len(names), size=per_class, replace=False))
    chosen.extend((cls, names[k], by_class[cls][names[k]]) for k in picks)
  return chosen


def write_tar(out_path: str, members: list[tuple[str, bytes]]) -> None:
  os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
  tmp_path = out_path + ".tmp"
  with tarfile.open(tmp_path, "w", format=tarfile.USTAR_FORMAT) as archive:
    for name, data in sorted(members):
      info = tarfile.TarInfo(name)
      info.size, info.mtime, info.mode = len(data), MTIME, 0o644
      info.uid = info.gid = 0
      info.uname = info.gname = ""
      archive.addfile(info, io.BytesIO(data))
  os.replace(tmp_path, out_path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--src", required=True, help="folder holding cifar10-train.tar.gz and cifar10-test.tar.gz"
  )
  parser.add_argument("--out", required=True, help="the tar file to write")
  parser.add_argument("--seed", type=int, default=SEED)
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  members = []
  for split, per_class in PER_CLASS.items():  # train first, then test: the rng draws in order.
    by_class = read_split(os.path.join(args.src, f"cifar10-{split}.tar.gz"), split)
    for cls, name, data in choose(by_class, per_class, rng):
      members.append((f"{split}/{cls}/{name}", data))
  write_tar(args.out, members)
  with open(args.out, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  print(
    f"wrote {args.out}: {len(members)} images, {os.path.getsize(args.out):,} bytes, sha256 {digest}"
  )


if __name__ == "__main__":
  main()
