r"""Prepares an image dataset as ArrayRecord shards (``dataset.name=array_record``):

    python -m sslx prepare --src=/data/imagenet --out=/data/imagenet-ar
    python -m sslx prepare --src=/data/ILSVRC-train.tar --out=/data/imagenet-ar --splits=train

``--src``: a folder or an uncompressed tar (indexed by member offsets and read lazily) in the
``<split>/<class>/<image>`` layout; ``--out``: a directory, or a ``gs://`` URL (each shard is
uploaded as soon as it is closed; the local disk holds a few). The encoded images are stored
unchanged; corrupt ones are skipped, named and counted. Prints one JSON line per split
(records, skipped, shards) on stdout, progress with ETA on stderr. Killed or preempted, the
same command again goes on after the last shard it had closed (uploaded shards are not sent
again); a split the output already holds, finished from the same source and shard size, is not
prepared again (``--overwrite`` prepares it anew).
"""

import json
import sys

from absl import app, flags

from sslx import cli
from sslx.data import array_records


def define_flags():
  flags.DEFINE_string("src", None, "image folder or .tar in <split>/<class>/<image> layout")
  flags.DEFINE_string("out", None, "output directory (or URL)")
  flags.DEFINE_list("splits", None, "splits to prepare (default: every split folder found)")
  flags.DEFINE_integer("shard_mb", 256, "shard size in MiB")
  flags.DEFINE_integer("threads", 0, "reading/checking threads (0: up to 8)")
  flags.DEFINE_bool("overwrite", False, "prepare splits again that --out already holds finished")
  flags.mark_flags_as_required(["src", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  results = array_records.prepare(f.src, f.out, f.splits, f.shard_mb << 20, f.threads, f.overwrite)
  for split, meta in results.items():
    line = {
      "split": split,
      "records": meta["num_records"],
      "skipped": len(meta["skipped"]),
      "shards": len(meta["shards"]),
      "classes": len(meta["class_names"]),
      "out": f.out,
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags, sys.argv, __doc__)
