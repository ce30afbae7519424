r"""The 2-D contrastive-learning simulation:

python -m sslx simulate --out sim.html        # self-contained page (inline JS, no network)
python -m sslx simulate --png sim.png --gif sim.gif --temperature 0.15 --steps 1500
"""

from absl import app, flags

from sslx import simulate


def define_flags():
  cfg = simulate.SimConfig
  flags.DEFINE_string("out", None, "write the interactive HTML page here")
  flags.DEFINE_string("png", None, "run the JAX simulation and write the final state as PNG")
  flags.DEFINE_string("gif", None, "run the JAX simulation and write an animated GIF")
  flags.DEFINE_float("temperature", cfg.temperature, "InfoNCE temperature τ")
  flags.DEFINE_float("strength", cfg.strength, "augmentation noise std")
  flags.DEFINE_integer("batch_size", cfg.batch_size, "sources per step")
  flags.DEFINE_integer("steps", 1500, "steps of the JAX simulation")
  flags.DEFINE_integer("seed", 0, "random seed")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not (f.out or f.png or f.gif):
    raise app.UsageError("nothing to do: pass --out=page.html and/or --png=... / --gif=...")
  cfg = simulate.SimConfig(
    temperature=f.temperature, strength=f.strength, batch_size=f.batch_size, seed=f.seed
  )
  if f.out:
    print(f"wrote {simulate.write_html(f.out, cfg)} (open it in a browser; no network needed)")
  if f.png or f.gif:
    every = max(f.steps // 30, 1) if f.gif else 0
    result = simulate.simulate(cfg, f.steps, record_every=every)
    print(
      f"τ={cfg.temperature:g} strength={cfg.strength:g}: separation "
      f"{result['separation']:.3f}, {result['clusters']} groups"
    )
    if f.png:
      print(f"wrote {simulate.save_png(result, f.png)}")
    if f.gif:
      print(f"wrote {simulate.save_gif(result, f.gif)}")
