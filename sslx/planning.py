"""Know before you launch: compile the real train step for a target and read its memory and cost.

    plan = planning.plan(config, planning.target("v4:2x2x2"))
    print(planning.report(plan))

A *target* is a TPU slice (``v4:2x2x2``, ``v5e:4x4``, or the Cloud names ``v4-32``, ``v5e-16``)
or ``<N>x<GPU>`` (``8xH100``). TPU slices need no TPU: with ``libtpu`` installed,
``jax.experimental.topologies.get_topology_desc`` gives compile-only devices of the slice and
``jit(step).lower(...).compile()`` runs the real TPU compiler on this machine, so the memory
figures are the compiler's own (``memory_analysis()``: arguments, outputs, temporaries). The
process's default backend stays the CPU (``JAX_PLATFORMS=cpu`` is fine; the topology client
is separate). GPUs have no compile-only client here: the step is compiled for N fake CPU
devices (``--xla_force_host_platform_device_count``, set before jax starts) and the figures
are labelled an *estimate* (XLA:CPU's buffer assignment and fusion differ from XLA:GPU's, and
it does not honour rematerialisation).

FLOPs: ``flops_per_device`` is the compiler's cost analysis of the compiled per-device
program (what the hardware executes: augmentation, rematerialised forwards and the optimizer
included). ``model_flops`` counts only the matmuls and convolutions of the step *without*
rematerialisation and outside the augmentation (named scope ``sslx_augment``), 2·M·N·K each,
summed over the unpartitioned program: the figure MFU is conventionally computed from. Step
time at a stated MFU is ``model_flops / (mfu · peak · devices)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslx import models, train

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One device as jax shows it (a megacore TPU v4/v5p chip is one device)."""

  name: str
  memory_bytes: int  # HBM per device
  peak_flops: float  # dense bf16 FLOP/s per device
  hbm_bandwidth: float  # bytes/s per device (the vendors' figures)
  platform: str  # "tpu" (compiled with libtpu) or "gpu" (estimated on fake CPU devices)
  topology_prefix: str = ""  # get_topology_desc's name prefix ("v4")
  topology_kwargs: tuple = ()  # extra get_topology_desc arguments
  cores_per_device: int = 1  # TensorCores per device (Cloud names count cores: v4-32 = 16 chips)


CHIPS: dict[str, Chip] = {
  # Megacore: jax on a v4 / v5p VM shows one device per chip (2 TensorCores, 32 / 95 GiB).
  "v4": Chip(
    "TPU v4", 32 * GiB, 275e12, 1.2e12, "tpu", "v4", (("chip_config_name", "megacore"),), 2
  ),
  "v5e": Chip("TPU v5 lite", 16 * GiB, 197e12, 0.82e12, "tpu", "v5e"),
  "v5p": Chip(
    "TPU v5p", 95 * GiB, 459e12, 2.76e12, "tpu", "v5p", (("chip_config_name", "megacore"),), 2
  ),
  "v6e": Chip("TPU v6 lite", 32 * GiB, 918e12, 1.64e12, "tpu", "v6e"),
  "h100": Chip("NVIDIA H100 80GB", 80 * GiB, 989e12, 3.35e12, "gpu"),
  "h200": Chip("NVIDIA H200", 141 * GiB, 989e12, 4.8e12, "gpu"),
  "a100": Chip("NVIDIA A100 80GB", 80 * GiB, 312e12, 2.04e12, "gpu"),
  "a100-40gb": Chip("NVIDIA A100 40GB", 40 * GiB, 312e12, 1.56e12, "gpu"),
  "l4": Chip("NVIDIA L4", 24 * GiB, 121e12, 0.3e12, "gpu"),
}

# Chip grid of the common slice sizes (chips -> "AxBxC"), for Cloud names like v4-32.
_GRIDS = {
  "v4": {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"},
  "v5p": {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"},
  "v5e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
  "v6e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
}

# Training-set sizes of the datasets the presets name (used for steps per epoch).
DATASET_SIZES = {"imagenet2012": 1_281_167, "cifar10": 50_000, "embedded": 10_000}


@dataclasses.dataclass(frozen=True)
class Target:
  name: str  # as given
  chip: Chip
  num_devices: int
  topology: str = ""  # get_topology_desc name for TPUs

  @property
  def estimate(self) -> bool:
    return self.chip.platform != "tpu"


def target(spec: str) -> Target:
  """Parses ``v4:2x2x2`` / ``v4-32`` / ``v5e:4x4`` / ``v5e-16`` / ``8xH100`` into a Target."""
  s = spec.strip().lower()
  m = re.fullmatch(r"(\d+)\s*x\s*([a-z0-9-]+)", s)
  if m and m.group(2) in CHIPS and CHIPS[m.group(2)].platform == "gpu":
    return Target(spec, CHIPS[m.group(2)], int(m.group(1)))
  m = re.fullmatch(r"(v\d+[a-z]?):(\d+(?:x\d+)*)", s) or re.fullmatch(r"(v\d+[a-z]?)-(\d+)", s)
  if m and m.group(1) in CHIPS:
    chip = CHIPS[m.group(1)]
    if ":" in s:
      grid = m.group(2)
    else:  # Cloud name: the number counts TensorCores
      chips = int(m.group(2)) // chip.cores_per_device
      grid = _GRIDS[m.group(1)].get(chips)
      if grid is None:
        raise ValueError(
          f"--topology={spec}: no known chip grid for {chips} {chip.name} chips; "
          f"give it as {m.group(1)}:AxBxC (known sizes: {sorted(_GRIDS[m.group(1)])} chips)"
        )
    chips = math.prod(int(d) for d in grid.split("x"))
    return Target(spec, chip, chips, f"{chip.topology_prefix}:{grid}")
  gpus = sorted(k for k, c in CHIPS.items() if c.platform == "gpu")
  tpus = sorted(k for k, c in CHIPS.items() if c.platform == "tpu")
  raise ValueError(
    f"--topology={spec!r} is not understood; expected a TPU slice <chip>:<grid> or "
    f"<chip>-<cores> with chip in {tpus} (e.g. v4:2x2x2, v4-32, v5e:4x4, v5e-16) or "
    f"<N>x<gpu> with gpu in {gpus} (e.g. 8xH100)"
  )


def devices_for(t: Target) -> list:
  """The target's devices: compile-only TPU devices, or the first N (fake) CPU devices."""
  if not t.estimate:
    from jax.experimental import topologies

    # Compile-only: no TPU is opened, so several planners (or a planner beside a training
    # run on a TPU VM) may load libtpu at once; by default libtpu allows one process.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
      topo = topologies.get_topology_desc(t.topology, "tpu", **dict(t.chip.topology_kwargs))
    except Exception as e:
      raise RuntimeError(
        f"compiling for {t.name} needs libtpu (the version jax[tpu] pins: "
        f"pip install 'libtpu==0.0.42.*' for jax 0.10.2, or sslx[tpu-compile]): {e}"
      ) from e
    return list(topo.devices)
  cpus = jax.devices("cpu")
  if len(cpus) < t.num_devices:
    raise RuntimeError(
      f"{t.name} is estimated on {t.num_devices} fake CPU devices but jax has {len(cpus)}: "
      f"set XLA_FLAGS=--xla_force_host_platform_device_count={t.num_devices} before jax "
      "starts (python -m sslx plan does)"
    )
  return cpus[: t.num_devices]


# ------------------------------------------------------------------------------ FLOP counting

_SHAPE = r"[a-z]+\d*\[([\d,]*)\]"
_DOT = re.compile(
  rf"=\s*{_SHAPE}\S*\s+dot\({_SHAPE}\S*\s+%?[\w.\-]+,\s*{_SHAPE}\S*\s+%?[\w.\-]+\).*?"
  r"lhs_contracting_dims=\{([\d,]*)\}"
)
_CONV = re.compile(
  rf"=\s*{_SHAPE}\S*\s+convolution\({_SHAPE}\S*\s+%?[\w.\-]+,\s*{_SHAPE}\S*\s+%?[\w.\-]+\).*?"
  r"dim_labels=\w+_(\w+)->"
)


def _dims(s: str) -> list[int]:
  return [int(d) for d in s.split(",") if d]


def hlo_text(lowered) -> str:
  """The lowered (unoptimised, unpartitioned) HLO with operand shapes and op_name metadata."""
  from jaxlib import _hlo

  options = _hlo.HloPrintOptions()
  options.print_operand_shape = True
  options.print_metadata = True
  return lowered.compiler_ir("hlo").get_hlo_module().to_string(options)


def matmul_flops(text: str, exclude_scope: str | None = "sslx_augment") -> float:
  """2·M·N·K summed over the dot and convolution instructions of HLO text (:func:`hlo_text`),
  leaving out those whose op_name lies under the named scope ``exclude_scope``. Each
  computation's instructions count once (a loop body once, not once per trip)."""
  skip = re.compile(rf'op_name="[^"]*\b{exclude_scope}\b') if exclude_scope else None
  total = 0.0
  for line in text.splitlines():
    if skip is not None and skip.search(line):
      continue
    if " dot(" in line:
      m = _DOT.search(line)
      if m:
        out, lhs = _dims(m.group(1)), _dims(m.group(2))
        k = math.prod(lhs[i] for i in _dims(m.group(4)))
        total += 2.0 * math.prod(out) * k
    elif " convolution(" in line:
      m = _CONV.search(line)
      if m:
        out, rhs, labels = _dims(m.group(1)), _dims(m.group(3)), m.group(4)
        # each output element sums over the kernel's window and input features
        total += 2.0 * math.prod(out) * math.prod(rhs) / rhs[labels.index("o")]
  return total


_OPERAND = re.compile(r"(?:dot|convolution)\(([a-z]+\d*)\[")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def float32_matmuls(text: str, allow: tuple[str, ...] = ()) -> list[str]:
  """op_names of the dot / convolution instructions in HLO text (:func:`hlo_text`) whose
  first operand is float32, except those under a named scope in ``allow``."""
  out = []
  for line in text.splitlines():
    if " dot(" not in line and " convolution(" not in line:
      continue
    m = _OPERAND.search(line)
    if not m or m.group(1) != "f32":
      continue
    name = _OP_NAME.search(line)
    name = name.group(1) if name else line.strip()[:120]
    if any(re.search(rf"\b{a}\b", name) for a in allow):
      continue
    out.append(name)
  return out


_COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")
_RESHARDING = ("all-gather", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_COLLECTIVE_OP = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(_COLLECTIVES) + r")(-done)?\(")


def collective_bytes(text: str) -> dict[str, int]:
  """Bytes each kind of collective produces in optimised, partitioned HLO text
  (``compiled.as_text()``), per device: the result shapes of every all-gather, all-to-all,
  collective-permute, all-reduce and reduce-scatter (their asynchronous ``-done`` halves;
  the ``-start`` halves are not counted twice). An instruction counts once per appearance
  (one inside a loop body once, not once per trip). All-reduces are what data parallelism
  needs (gradients, BatchNorm statistics, loss sums); the first three are resharding."""
  out = {k: 0 for k in _COLLECTIVES}
  for line in text.splitlines():
    m = _COLLECTIVE_OP.search(line)
    if not m or f"{m.group(2)}-start(" in line:
      continue
    for dtype, dims in _SHAPE.findall(m.group(1)):
      if dtype in _DTYPE_BYTES:
        out[m.group(2)] += _DTYPE_BYTES[dtype] * math.prod(_dims(dims))
  return out


def resharding(counts: dict[str, int]) -> int:
  """All-gather + all-to-all + collective-permute bytes of :func:`collective_bytes`' counts."""
  return sum(counts.get(k, 0) for k in _RESHARDING)


# ------------------------------------------------------------------------------ the plan


@dataclasses.dataclass
class Plan:
  target: Target
  config_name: str
  batch_size: int
  mesh: dict
  params_bytes: int  # per device
  opt_state_bytes: int
  other_state_bytes: int  # method state (EMA teachers, queues), BatchNorm statistics, probe
  batch_bytes: int
  argument_bytes: int  # the compiler's figures, per device
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops_per_device: float  # compiled program, remat and augmentation included
  bytes_per_device: float  # memory traffic of the compiled program by the compiler's cost model
  model_flops: float  # whole step, all devices: matmuls/convs without remat or augmentation
  compiler_seconds: float | None  # the TPU cost model's estimate of one step, if it gives one
  steps_per_epoch: int
  total_steps: int
  compile_s: float
  collectives: dict = dataclasses.field(default_factory=dict)  # bytes per kind, per device

  @property
  def peak_bytes(self) -> int:
    """Live memory at the step's peak: inputs, outputs not aliased to inputs, temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.target.chip.memory_bytes

  def step_seconds(self, mfu: float) -> float:
    peak = self.target.chip.peak_flops * self.target.num_devices
    return self.model_flops / (mfu * peak)


def _per_device_bytes(tree, shardings) -> int:
  total = 0
  for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shape = sh.shard_shape(leaf.shape)
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def _abstract(tree, shardings):
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
  )


def num_examples_for(config) -> int:
  ds = config.dataset
  for key in (ds.get("tfds_name", ""), ds.get("name", "")):
    if key in DATASET_SIZES:
      return DATASET_SIZES[key]
  raise ValueError(
    f"dataset {ds.get('tfds_name') or ds.get('name')!r}: size unknown to the planner; "
    "pass --num_examples"
  )


def num_classes_for(config) -> int:
  name = config.dataset.get("tfds_name", "") or config.dataset.get("name", "")
  return 1000 if "imagenet" in name else 10


def for_accelerator(config):
  """What the run would build on the accelerator: this process's backend is the CPU, where
  ``conv_impl="auto"`` (ResNet's, the demo CNN's, CPC's patch encoder's) would pick a CPU-only
  convolution (sslx/models/fast_conv)."""
  takes_it = models.registry.takes_option(config.model.name, "conv_impl")
  if takes_it and config.model.get("conv_impl", "auto") == "auto":
    return override(config, **{"model.conv_impl": "xla"})
  return config


def without_remat(config):
  """``config`` with ``model.remat="none"``: the step whose matmuls are the model's FLOPs."""
  if config.model.get("remat", "none") == "none":
    return config
  return override(config, **{"model.remat": "none"})


def plan(config, t: Target, num_examples: int | None = None, devices=None) -> Plan:
  """Compiles ``config``'s train step for target ``t`` and reads memory and cost."""

  devices = devices_for(t) if devices is None else devices
  config = for_accelerator(config)
  num_examples = num_examples or num_examples_for(config)
  num_classes = num_classes_for(config)
  size = int(config.dataset.image_size)
  sample = np.zeros((2, size, size, 3), np.uint8)
  probe = bool(config.online_probe.get("enabled", True))

  def lower(cfg):
    setup = train.build(cfg, sample, num_examples, num_classes, devices=devices)
    shapes = jax.eval_shape(
      functools.partial(train.init_state, setup.method, setup.tx, num_classes=num_classes),
      jax.ShapeDtypeStruct((2,), jnp.uint32),
      jax.ShapeDtypeStruct(sample.shape, sample.dtype),
    )
    b = cfg.batch_size
    batch = {
      "image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=setup.batch_sharding),
      "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=setup.batch_sharding),
    }
    state = _abstract(shapes, setup.state_sharding)
    return setup, shapes, batch, train.compile_step(setup, probe).lower(state, batch)

  setup, shapes, batch, lowered = lower(config)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  if config.model.get("remat", "none") != "none":
    model_lowered = lower(without_remat(config))[3]
  else:
    model_lowered = lowered
  model_flops = matmul_flops(hlo_text(model_lowered))

  sh = setup.state_sharding
  params_bytes = _per_device_bytes(shapes.params["model"], sh.params["model"])
  opt_bytes = _per_device_bytes(shapes.opt_state, sh.opt_state)
  other = sum(
    _per_device_bytes(getattr(shapes, f), getattr(sh, f))
    for f in ("batch_stats", "method_state", "step", "rng")
  ) + _per_device_bytes(shapes.params["probe"], sh.params["probe"])
  batch_bytes = sum(
    math.prod(a.sharding.shard_shape(a.shape)) * jnp.dtype(a.dtype).itemsize for a in batch.values()
  )
  seconds = cost.get("optimal_seconds")
  return Plan(
    target=t,
    config_name="",
    batch_size=int(config.batch_size),
    mesh=dict(setup.mesh.shape),
    params_bytes=params_bytes,
    opt_state_bytes=opt_bytes,
    other_state_bytes=other,
    batch_bytes=batch_bytes,
    argument_bytes=int(mem.argument_size_in_bytes),
    output_bytes=int(mem.output_size_in_bytes),
    alias_bytes=int(mem.alias_size_in_bytes),
    temp_bytes=int(mem.temp_size_in_bytes),
    code_bytes=int(mem.generated_code_size_in_bytes),
    flops_per_device=float(cost.get("flops", 0.0)),
    bytes_per_device=float(cost.get("bytes accessed", 0.0)),
    model_flops=model_flops,
    compiler_seconds=float(seconds) if seconds and seconds > 0 and not t.estimate else None,
    steps_per_epoch=setup.steps_per_epoch,
    total_steps=setup.total_steps,
    compile_s=compile_s,
    collectives=collective_bytes(compiled.as_text()),
  )


# ------------------------------------------------------------------------------ knobs


def override(config, **changes) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted-key changes, e.g. ``override(c, **{"model.remat": "block"})``."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for key, value in changes.items():
      node = c
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return c


def knobs(config, num_devices: int) -> list[tuple[str, dict]]:
  """The memory knobs not yet used by ``config``, each as (flag text, dotted changes), in the
  order worth trying: bf16 compute, rematerialisation, fsdp, GradCache chunks, half the batch."""
  out = []
  if config.model.get("dtype", "float32") != "bfloat16":
    out.append(("--config.model.dtype=bfloat16", {"model.dtype": "bfloat16"}))
  if config.model.get("remat", "none") == "none":
    out.append(("--config.model.remat=block", {"model.remat": "block"}))
  mesh = {str(n): int(s) for n, s in config.mesh}
  if "fsdp" not in mesh:
    k = min(num_devices, 8)
    out.append(
      (
        f'--config.mesh=\'(("data", -1), ("fsdp", {k}))\' '
        '--config.sharding_rules=\'((".*", "fsdp"),)\'',
        {"mesh": (("data", -1), ("fsdp", k)), "sharding_rules": ((".*", "fsdp"),)},
      )
    )
  if "grad_cache_chunk" in config.method and not config.method.grad_cache_chunk:
    chunk = max(2 * config.batch_size // num_devices // 4, 1) * num_devices
    out.append((f"--config.method.grad_cache_chunk={chunk}", {"method.grad_cache_chunk": chunk}))
  half = config.batch_size // 2
  if half and half % num_devices == 0:
    out.append((f"--config.batch_size={half}", {"batch_size": half}))
  return out


def suggest(config, t: Target, devices=None, num_examples=None) -> list[tuple[str, Plan | str]]:
  """Compiles ``config`` with each knob of :func:`knobs` alone and returns (flag, Plan or the
  error text)."""
  devices = devices_for(t) if devices is None else devices
  out = []
  for flag, changes in knobs(config, t.num_devices):
    try:
      out.append((flag, plan(override(config, **changes), t, num_examples, devices)))
    except Exception as e:  # a knob the method cannot take is reported, not fatal
      out.append((flag, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
  return out


# ------------------------------------------------------------------------------ report


def _gib(n: float) -> str:
  if n >= GiB / 4:
    return f"{n / GiB:8.2f} GiB"
  return f"{n / 2**20:8.1f} MiB"


def _flops(n: float) -> str:
  return f"{n / 1e12:.2f} TFLOP" if n >= 1e11 else f"{n / 1e9:.2f} GFLOP"


def report(p: Plan, mfu: float = 0.4, suggestions=None) -> str:
  """The plan as text for people."""
  chip, t = p.target.chip, p.target
  how = (
    "ESTIMATE on fake CPU devices (XLA:CPU compiler; a GPU's figures differ)"
    if t.estimate
    else "TPU compiler (libtpu), compile only"
  )
  lines = [
    f"target      {t.name}: {t.num_devices} x {chip.name} "
    f"({chip.memory_bytes / GiB:.0f} GiB, {chip.peak_flops / 1e12:.0f} TFLOP/s bf16 each)",
    f"compiled    {how} in {p.compile_s:.0f} s; mesh {p.mesh}, batch {p.batch_size} "
    f"({p.batch_size // t.num_devices} per device)",
    "per device:",
    f"  parameters          {_gib(p.params_bytes)}",
    f"  optimizer state     {_gib(p.opt_state_bytes)}",
    f"  other state         {_gib(p.other_state_bytes)}  (EMA teachers, queues, BN stats, probe)",
    f"  batch               {_gib(p.batch_bytes)}",
    f"  compiler: arguments {_gib(p.argument_bytes)}, outputs {_gib(p.output_bytes)} "
    f"(aliased {_gib(p.alias_bytes).strip()}), temporaries {_gib(p.temp_bytes)}",
    f"  peak                {_gib(p.peak_bytes)} of {chip.memory_bytes / GiB:.2f} GiB -> "
    + ("fits" if p.fits else "DOES NOT FIT"),
    f"  FLOPs per step      {_flops(p.flops_per_device)} (compiled program: remat, "
    "augmentation, optimizer included)",
    f"model FLOPs per step {_flops(p.model_flops)} over all devices "
    f"({_flops(p.model_flops / t.num_devices)} per device; matmuls/convs without remat or "
    "augmentation)",
  ]
  if p.collectives:
    c = p.collectives
    lines.append(
      "  collectives         "
      + ", ".join(f"{k} {_gib(c[k]).strip()}" for k in _COLLECTIVES if c.get(k))
      + f" (resharding: {_gib(resharding(c)).strip()})"
    )
  step = p.step_seconds(mfu)
  lines.append(
    f"at {mfu:.0%} MFU: step {step * 1e3:.1f} ms, epoch ({p.steps_per_epoch} steps) "
    f"{p.steps_per_epoch * step / 60:.1f} min, {p.total_steps} steps "
    f"{p.total_steps * step / 3600:.1f} h ({p.total_steps * step / 3600 * t.num_devices:.0f} "
    "device-hours)"
  )
  hw = p.flops_per_device / chip.peak_flops
  hbm = p.bytes_per_device / chip.hbm_bandwidth
  lines.append(
    f"lower bound: compiled FLOPs at 100% of peak {hw * 1e3:.1f} ms/step; memory traffic "
    f"{p.bytes_per_device / 1e9:.1f} GB (cost model) at full HBM bandwidth {hbm * 1e3:.1f} ms/step"
    + (
      f"; TPU cost model {p.compiler_seconds * 1e3:.1f} ms/step"
      if p.compiler_seconds is not None
      else ""
    )
  )
  if not p.fits:
    lines.append(
      f"WARNING: the step needs {p.peak_bytes / GiB:.2f} GiB per device, over the "
      f"{chip.memory_bytes / GiB:.0f} GiB of a {chip.name}; it will not run as configured."
    )
    for flag, res in suggestions or []:
      if isinstance(res, Plan):
        verdict = "fits" if res.fits else "still over"
        lines.append(f"  {flag}: {res.peak_bytes / GiB:.2f} GiB -> {verdict}")
      else:
        lines.append(f"  {flag}: cannot compile ({res})")
    if suggestions and not any(isinstance(r, Plan) and r.fits for _, r in suggestions):
      lines.append("  no single knob is enough: combine them, or use a larger slice.")
  return "\n".join(lines)


def as_dict(p: Plan, mfu: float) -> dict[str, Any]:
  d = {k: v for k, v in dataclasses.asdict(p).items() if k != "target"}
  d.update(
    target=p.target.name,
    chip=p.target.chip.name,
    num_devices=p.target.num_devices,
    estimate=p.target.estimate,
    peak_bytes=p.peak_bytes,
    fits=p.fits,
    mfu=mfu,
    step_seconds=p.step_seconds(mfu),
  )
  return d
