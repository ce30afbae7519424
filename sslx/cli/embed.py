r"""2-D pictures of a checkpoint's test features (t-SNE or UMAP, `pip install 'sslx[plots]'`):

    python -m sslx embed --config=experiments/simclr.py --workdir=/tmp/sslx-demo \
        --method=tsne --out=/tmp/sslx-demo/tsne.png
"""

from absl import app, flags

from sslx import cli, embed


def define_flags():
  cli.define_config_flags("run directory holding checkpoints/")
  flags.DEFINE_enum("method", "umap", list(embed.METHODS), "2-D reduction")
  flags.DEFINE_string("out", None, "PNG to write (default: workdir/<method>.png)")
  flags.DEFINE_integer("limit", 5000, "at most this many test images (0: all)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  print(f"wrote {embed.embed_plot(f.config, f.workdir, f.method, f.out, f.limit)}")
