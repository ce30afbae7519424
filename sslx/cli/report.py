r"""Side-by-side comparison of runs, from their results.json files:

python -m sslx report --workdirs=/tmp/simclr,/tmp/byol --out=report.md
"""

from absl import app, flags

from sslx import paths, report


def define_flags():
  flags.DEFINE_list("workdirs", None, "comma-separated run directories holding results.json")
  flags.DEFINE_string("out", "report.md", "Markdown file to write (the chart goes next to it)")
  flags.DEFINE_bool("chart", True, "also write the bar chart PNG (needs matplotlib)")
  flags.mark_flags_as_required(["workdirs"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  written = report.write_report([w for w in f.workdirs if w], f.out, chart=f.chart)
  print(paths.read_text(written["markdown"]))
  charts = [written[k] for k in ("chart", "other_chart") if written[k]]
  print(f"wrote {written['markdown']}" + "".join(f" and {c}" for c in charts))
