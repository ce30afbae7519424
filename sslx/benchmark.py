r"""Times the jitted train step on random data, after compilation.

    python -m sslx benchmark --config=experiments/simclr.py --config.model.name=resnet18 \
        --config.batch_size=256 --steps=5 [--peer_python=/tmp/torch-peer/bin/python]

Prints one JSON line: images_per_sec (both views counted), step_time_s (median of --steps
steps after one warm-up step), compile_s, peak_memory_mb. With --peer_python, the PyTorch
peer (../shared/bench/torch_peer.py) runs the same workload in the same process tree, the two
alternating --rounds times, and the line gains torch_images_per_sec and ratio.

The default workload (--workload=peer) is the peer's, exactly: inputs already augmented
(on-device augmentation off), ResNets with the CIFAR stem, ViTs with patch 4, projector
Linear(d→2048, no bias)→BN→ReLU→Linear(→128), NT-Xent τ=0.5, SGD lr 0.3 momentum 0.9 weight
decay 1e-6 on every parameter, fp32, no online probe. --workload=config times the experiment as
configured (augmentation and probe included).

Utilisation, over the step time and the devices' peak FLOP/s (a table of dense bf16 peaks by
device kind, or --peak_tflops per device; CPUs have no table entry, so both are null unless
--peak_tflops):
  mfu  model FLOPs utilisation, as published figures compute it: the step's matmul and
       convolution FLOPs (2·M·N·K) without rematerialisation and without the augmentation
       (model_flops_per_step, sslx/planning.py);
  hfu  hardware utilisation: XLA's cost analysis of the compiled step (flops_per_step), which
       also counts recomputed forwards, augmentation and elementwise work.

--mae_mask_ratios=0,0.75 measures MAE's asymmetry instead: the encoder's FLOPs (XLA cost
analysis), sequence length and forward+backward time at each mask ratio, for config.model at
config.dataset.image_size, e.g.

    python -m sslx benchmark --config=experiments/mae.py:imagenet --config.batch_size=8 \
        --mae_mask_ratios=0,0.75 --steps=3

--input_pipeline also times the host input pipeline (grain loader over config.dataset, decoding
included) and reports the images/s it delivers next to the images/s the step consumes. With
--steps=0 it times the host pipeline alone (no step is compiled) and prints
input_images_per_sec (source images/s with all their views made), per core and cpu_cores;
--input_peer runs ../shared/bench/input_peer.py (torchvision's ImageFolder + RandomResizedCrop
on PIL, same folder and workers) alternating with it --rounds times and adds the ratio:

    python -m sslx benchmark --config=experiments/dino.py:imagenet \
        --config.dataset.name=image_folder --config.dataset.path=DIR \
        --config.dataset.num_workers=2 --input_pipeline --steps=0 --input_peer --rounds=3
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from sslx import data, methods, models, planning, train, xla
from sslx.methods import base, mae

DEFAULT_PEER_SCRIPT = os.path.join(
  os.path.dirname(__file__), "..", "..", "shared", "bench", "torch_peer.py"
)

DEFAULT_INPUT_PEER = os.path.join(
  os.path.dirname(__file__), "..", "..", "shared", "bench", "input_peer.py"
)

# Dense peak FLOP/s per device (bf16 on accelerators), by `device.device_kind` prefix.
PEAK_FLOPS = {
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100": 312e12,
  "NVIDIA L4": 121e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
}


def peak_flops(device_kind: str, override_tflops: float | None = None) -> float | None:
  if override_tflops:
    return override_tflops * 1e12
  for prefix, peak in PEAK_FLOPS.items():
    if device_kind.startswith(prefix):
      return peak
  return None


def mfu(flops_per_step, step_time_s, device_kind, num_devices, override_tflops=None):
  """``flops_per_step`` per second over the devices' peak, in [0, 1] (model FLOPs: MFU;
  compiled FLOPs: hardware utilisation), or None where the peak is unknown (CPUs)."""
  peak = peak_flops(device_kind, override_tflops)
  if not flops_per_step or not peak or step_time_s <= 0:
    return None
  return flops_per_step / step_time_s / (peak * num_devices)


def _input_views(config):
  """The host crops the config's method takes (None: the decoded square images)."""

  if not config.dataset.get("host_crops", False):
    return None
  method = methods.get(config.method.name).create(config, total_steps=1)
  return data.crop_groups(method, config.method.name)


def time_input_pipeline(config, batches: int = 20, batch_size: int = 0) -> dict:
  """Source images/s the host pipeline delivers (grain loader over config.dataset, decoding and
  every view included), after 2 warm-up batches; no train step is built."""

  source = data.build_source(config.dataset, config.dataset.train_split)
  groups = _input_views(config)
  b = batch_size or min(config.batch_size, max(len(source) // (batches + 2), 1))
  loader = data.make_train_loader(
    source,
    b,
    config.seed,
    num_workers=config.dataset.get("num_workers", 0),
    view_maker=data.ViewMaker(groups, config.seed) if groups else None,
  )
  for _ in range(2):
    next(loader)
  cpu0 = _tree_cpu_s()
  t0 = time.perf_counter()
  for _ in range(batches):
    next(loader)
  dt = time.perf_counter() - t0
  cpu = _tree_cpu_s() - cpu0
  cores = os.cpu_count() or 1
  rate = batches * b / dt
  views = [f"{g.count}x{g.size}" for g in groups] if groups else [f"1x{source.image_size}"]
  return {
    "input_images_per_sec": round(rate, 1),
    "input_images_per_sec_per_core": round(rate / cores, 1),
    "cpu_cores": cores,
    "input_workers": config.dataset.get("num_workers", 0),
    "input_views": "+".join(views),
    "input_images_timed": batches * b,
    "input_batch": b,
    # CPU seconds of this process and its workers over the timed batches: images per CPU
    # second is the per-core rate whatever else the machine runs.
    "input_images_per_cpu_s": round(batches * b / cpu, 1) if cpu > 0 else None,  # nan: None
  }


def _tree_cpu_s() -> float:
  """User + system CPU seconds of this process and its live descendants."""
  try:
    import psutil
  except ImportError:  # optional: without it the CPU figures are left out
    return float("nan")
  me = psutil.Process()
  total = 0.0
  for p in [me, *me.children(recursive=True)]:
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except psutil.Error:
      pass
  return total


def _peer_recipe(groups) -> str:
  """input_peer.py's recipe for these crops (it knows SimCLR's and DINO's)."""
  sizes = tuple((g.size, g.count) for g in groups or ())
  recipes = {((224, 2),): "simclr", ((224, 2), (96, 10)): "dino"}
  if sizes not in recipes:
    raise ValueError(
      f"--input_peer compares SimCLR's 2x224 or DINO's 2x224 + 10x96 host crops, got {sizes}"
    )
  return recipes[sizes]


def time_input_peer(python: str, script: str, config, images: int) -> dict:
  """The torchvision-style host pipeline (input_peer.py) on the same folder and workers.

  Also its images per CPU second: the peer runs twice, on ``images // 2`` and ``images``
  files, and the difference of the two runs' CPU time (its process and pool, from
  ``RUSAGE_CHILDREN``) is the CPU the extra files took, start-up cancelled out."""
  half = _run_input_peer(python, script, config, images // 2)
  full = _run_input_peer(python, script, config, images)
  extra = full["cpu_s"] - half["cpu_s"]
  full["images_per_cpu_s"] = (images - images // 2) / extra if extra > 0 else None
  return full


def _run_input_peer(python: str, script: str, config, images: int) -> dict:
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  out = subprocess.run(
    [
      python,
      script,
      f"--data={os.path.expanduser(config.dataset.path)}",
      f"--recipe={_peer_recipe(_input_views(config))}",
      f"--workers={max(int(config.dataset.get('num_workers', 0)), 1)}",
      f"--limit={images}",
    ],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  result = json.loads(out.strip().splitlines()[-1])
  result["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return result


def input_benchmark(
  config,
  rounds: int = 1,
  batches: int = 20,
  batch_size: int = 0,
  peer_script: str | None = None,
  peer_python: str | None = None,
) -> dict:
  """--steps=0 --input_pipeline: the host pipeline alone, alternating `rounds` times with the
  peer's (`peer_script`, run by `peer_python` or this python) when a peer script is given."""
  ours, peer, ours_cpu, peer_cpu = [], [], [], []
  result = {}
  for _ in range(max(rounds, 1)):
    result = time_input_pipeline(config, batches, batch_size)
    ours.append(result["input_images_per_sec"])
    ours_cpu.append(result["input_images_per_cpu_s"])
    if peer_script:
      p = time_input_peer(
        peer_python or sys.executable,
        os.path.abspath(peer_script),
        config,
        result["input_images_timed"],
      )
      peer.append(p["images_per_sec"])
      peer_cpu.append(p["images_per_cpu_s"])
  result["input_images_per_sec"] = round(statistics.median(ours), 1)
  result["input_images_per_sec_per_core"] = round(
    result["input_images_per_sec"] / result["cpu_cores"], 1
  )
  result["rounds"] = ours
  if peer:
    result["peer_images_per_sec"] = round(statistics.median(peer), 1)
    result["peer_rounds"] = [round(p, 1) for p in peer]
    result["ratio"] = round(statistics.median(o / p for o, p in zip(ours, peer)), 3)
    pairs = [(o, p) for o, p in zip(ours_cpu, peer_cpu) if o and p]
    if pairs:
      result["input_images_per_cpu_s"] = round(statistics.median(o for o, _ in pairs), 1)
      result["peer_images_per_cpu_s"] = round(statistics.median(p for _, p in pairs), 1)
      result["cpu_ratio"] = round(statistics.median(o / p for o, p in pairs), 3)
  result["load_avg_1m"] = round(os.getloadavg()[0], 2)
  return result


def peer_workload(config):
  """Overrides `config` (unlocked copy) to the torch peer's exact workload."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    # The peer's model exactly: the preset's model kwargs (e.g. the demo CNN's widths) are
    # dropped, not passed on to another architecture.
    name = c.model.name
    # ... except the precision/memory switches, which change how, not what, it computes.
    keep = {k: c.model[k] for k in ("dtype", "remat") if k in c.model}
    c.model = type(c.model)(dict(keep, name=name))
    if name.startswith("resnet"):
      c.model.stem = "cifar"
    if name.startswith("vit"):
      c.model.patch_size = 4
    c.augment.enabled = False
    c.method.temperature = 0.5
    c.method.projector_hidden = (2048,)
    c.method.projector_dim = 128
    c.method.projector_out_bn = False  # the peer's projector ends in a plain Linear
    c.optimizer = type(c.optimizer)(
      dict(
        name="sgd",
        base_lr=0.3,
        lr_scaling="none",
        momentum=0.9,
        weight_decay=1e-6,
        warmup_steps=0,
        decay_all=True,
      )
    )
    c.online_probe.enabled = False
  return c


def time_sslx(config, steps: int) -> dict:
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  b = config.batch_size
  size = config.dataset.image_size
  images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (b,), dtype=np.int32)
  setup = train.build(config, images[:2], num_examples=b * (steps + 2), num_classes=10)
  state = train.create_state(setup, 0, images[:2])
  step = train.compile_step(setup, config.online_probe.enabled)
  batch = {
    "image": jax.device_put(images, setup.batch_sharding),
    "label": jax.device_put(labels, setup.batch_sharding),
  }
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  if config.model.get("remat", "none") != "none":  # model FLOPs count no recomputation
    plain = train.build(
      planning.without_remat(config), images[:2], num_examples=b * (steps + 2), num_classes=10
    )
    lowered = train.compile_step(plain, config.online_probe.enabled).lower(state, batch)
  model_flops = planning.matmul_flops(planning.hlo_text(lowered))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  # The compiled module is the per-device SPMD program: its FLOPs times the device count are
  # the step's model FLOPs.
  flops = float(cost.get("flops", 0.0)) * len(setup.mesh.devices.flat) if cost else None
  t0 = time.perf_counter()
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    peak = stats["peak_bytes_in_use"] / 2**20
  else:  # CPU: the process's peak resident memory
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {
    "framework": "sslx",
    "jax": jax.__version__,
    "device": dev.device_kind,
    "num_devices": jax.device_count(),
    "model": config.model.name,
    "batch": b,
    "images_per_sec": round(2 * b / med, 2),
    "step_time_s": round(med, 4),
    "compile_s": round(compile_s, 2),
    "first_step_s": round(first_s, 3),
    "peak_memory_mb": round(peak, 1),
    "flops_per_step": flops,
    "model_flops_per_step": model_flops,
    "loss": float(m["loss"]),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "allocator": xla.allocator(),
  }


def time_peer(python: str, script: str, model: str, batch: int, steps: int, threads: int):
  out = subprocess.run(
    [
      python,
      script,
      "--model",
      model,
      "--batch",
      str(batch),
      "--steps",
      str(steps),
      "--threads",
      str(threads),
    ],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


def time_mae_encoder(config, ratios, steps: int) -> dict:
  """MAE's asymmetry measured: the encoder on the visible patches only, at each mask ratio."""

  encoder = models.create_model(config.model.name, **base.model_kwargs(config.model))
  size = config.dataset.image_size
  per_ratio = {
    str(r): mae.encoder_cost(encoder, size, config.batch_size, float(r), steps) for r in ratios
  }
  out = {
    "workload": "mae_encoder",
    "model": config.model.name,
    "image_size": size,
    "batch": config.batch_size,
    "ratios": per_ratio,
  }
  lo, hi = str(min(ratios, key=float)), str(max(ratios, key=float))
  if lo != hi:
    out["flops_reduction"] = round(per_ratio[lo]["flops"] / per_ratio[hi]["flops"], 3)
    if steps:
      out["speedup"] = round(per_ratio[lo]["step_s"] / per_ratio[hi]["step_s"], 3)
  return out
