"""Pictures of what a trained checkpoint does, one subcommand each:

    python -m sslx visualize attention --config=experiments/dino.py --workdir=/tmp/dino-cpu \
        --image=cat.png --out=attn.png
    python -m sslx visualize reconstruction --config=experiments/mae.py --workdir=/tmp/mae

Subcommands and their flags come from sslx.visualize's registry.
"""

from absl import app, flags

from sslx import cli, visualize


def define_flags():
  cli.define_config_flags("run directory holding checkpoints/")
  definers = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
  }
  defined = {"workdir"}
  for f in visualize.COMMON_FLAGS + tuple(
    f for s in visualize.SUBCOMMANDS.values() for f in s.flags
  ):
    if f.name not in defined:
      definers[f.type](f.name, f.default, f.help)
      defined.add(f.name)


def _usage() -> str:
  lines = [
    "usage: python -m sslx visualize SUBCOMMAND --config=EXPERIMENT --workdir=DIR "
    "[--out=PNG] [flags]",
    "subcommands:",
  ]
  lines += [f"  {s.name}: {s.help}" for s in visualize.SUBCOMMANDS.values()]
  return "\n".join(lines)


def main(argv):
  args = argv[1:]
  if len(args) != 1 or args[0] not in visualize.SUBCOMMANDS:
    raise app.UsageError(f"expected one subcommand, got {args}\n{_usage()}")
  sub = visualize.SUBCOMMANDS[args[0]]
  f = flags.FLAGS
  values = {
    x.name: f[x.name].value for x in visualize.COMMON_FLAGS + sub.flags if x.name != "workdir"
  }
  print(f"wrote {sub.run(f.config, f.workdir, values)}", flush=True)
