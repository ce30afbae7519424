"""The one training loop every method uses.

    state = init(...)                                 # born sharded: eval_shape → rules → jit
    for step in range(start, total):
      state, metrics = update(state, global_batch)    # one jitted, donated step
    evaluate(state)                                   # config.evals at the end

A method is a `methods.base.Method`: the loop calls its `loss` and `after_update` and never
branches on which method runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics

from sslx import (
  checkpointing,
  config_lib,
  data,
  evaluation,
  losses,
  methods,
  optim,
  progress,
  sharding,
)
from sslx.state import TrainState

log = logging.getLogger("sslx")


class NonFiniteLoss(FloatingPointError):
  pass


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything built from config before the loop: static, outside jitted code."""

  method: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Any
  state_sharding: Any
  batch_sharding: Any
  total_steps: int
  steps_per_epoch: int
  num_classes: int
  feature_dim: int


def _probe_labels(params):
  return {k: ("probe" if k == "probe" else "model") for k in params}


def make_tx(config, schedule, probe_lr: float) -> optax.GradientTransformation:
  """The method's optimizer for params["model"]; Adam for the online probe."""
  main = optim.make_optimizer(config.optimizer, schedule)
  return optax.multi_transform({"model": main, "probe": optax.adam(probe_lr)}, _probe_labels)


def init_state(method, tx, rng, sample_images, num_classes: int) -> TrainState:
  """Builds the initial TrainState (pure: jit it with out_shardings to create it sharded)."""
  init_rng, _, state_rng = jax.random.split(rng, 3)  # the middle key: kept so seeds reproduce
  variables = method.init(init_rng, sample_images)
  feat = jax.eval_shape(method.encode, variables.params, variables.batch_stats, sample_images)
  probe = {
    "kernel": jnp.zeros((feat.shape[-1], max(num_classes, 1)), jnp.float32),
    "bias": jnp.zeros((max(num_classes, 1),), jnp.float32),
  }
  params = {"model": variables.params, "probe": probe}
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.batch_stats,
    opt_state=tx.init(params),
    method_state=variables.method_state,
    rng=state_rng,
  )


def train_step(
  state: TrainState, batch: dict, *, method, tx, schedule, probe_enabled: bool
) -> tuple[TrainState, dict]:
  """One update of the method and the online probe. Non-finite loss → state unchanged."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    loss, aux = method.loss(
      params["model"], state.batch_stats, state.method_state, batch["image"], rng, state.step
    )
    total = loss
    metrics = dict(aux.metrics)
    if probe_enabled:
      # Stop-gradient: the probe watches the representation without shaping it.
      with jax.named_scope("online_probe"):  # a float32 classifier (named for HLO checks)
        feats = jax.lax.stop_gradient(aux.features)
        logits = feats @ params["probe"]["kernel"] + params["probe"]["bias"]
        probe_loss, probe_acc = losses.softmax_cross_entropy(
          logits, batch["label"], valid=batch["label"] >= 0
        )
      total = total + probe_loss
      metrics.update(probe_loss=probe_loss, probe_acc=probe_acc)
    return total, (loss, aux, metrics)

  grads, (loss, aux, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # E.g. EMA teachers: θ_k ← m·θ_k + (1 − m)·θ_q with the *updated* θ_q (MoCo, BYOL, DINO).
  method_state = method.after_update(params["model"], aux.method_state, state.step)
  new = state.replace(
    step=state.step + 1,
    params=params,
    opt_state=opt_state,
    batch_stats=aux.batch_stats,
    method_state=method_state,
  )
  finite = jnp.isfinite(loss)
  new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
  metrics = dict(metrics, learning_rate=schedule(state.step), finite=finite)
  return new, metrics


def build(
  config, sample_images: np.ndarray, num_examples: int, num_classes: int, devices=None
) -> Setup:
  """Mesh, method, optimizer and state shardings from config (no arrays allocated).
  ``devices`` defaults to all of jax's; compile-only devices of a TPU topology plan a slice
  (sslx/planning.py)."""
  mesh = sharding.make_mesh([tuple(a) for a in config.mesh], devices)
  config_lib.validate(config, num_devices=mesh.size)
  spe = config_lib.steps_per_epoch(num_examples, config.batch_size)
  total = config_lib.total_steps(config, num_examples)
  method = methods.get(config.method.name).create(config, total_steps=total)
  peak = optim.scaled_lr(config.optimizer, config.batch_size)
  schedule = optim.warmup_cosine(
    peak,
    total,
    optim.warmup_steps_from(config.optimizer, spe),
    config.optimizer.get("final_lr_fraction", 0.0),
  )
  tx = make_tx(config, schedule, config.online_probe.get("lr", 1e-3))
  sample = jax.ShapeDtypeStruct(sample_images.shape, sample_images.dtype)
  abstract = jax.eval_shape(
    functools.partial(init_state, method, tx, num_classes=num_classes),
    jax.ShapeDtypeStruct((2,), jnp.uint32),
    sample,
  )
  state_sharding = sharding.tree_shardings(abstract, mesh, config.get("sharding_rules", ()))
  feature_dim = abstract.params["probe"]["kernel"].shape[0]
  return Setup(
    method,
    tx,
    schedule,
    mesh,
    state_sharding,
    sharding.batch_sharding(mesh),
    total,
    spe,
    num_classes,
    feature_dim,
  )


def create_state(setup: Setup, seed: int, sample_images: np.ndarray) -> TrainState:
  init = jax.jit(
    functools.partial(init_state, setup.method, setup.tx, num_classes=setup.num_classes),
    out_shardings=setup.state_sharding,
  )
  return init(jax.random.PRNGKey(seed), jnp.asarray(sample_images))


def restore_latest(config, workdir: str, *, pretrained: bool = True):
  """(setup, state, step) of the latest checkpoint in `workdir`, for the commands that work on a
  trained run (evaluate, embed, visualize, fine-tune, export). The checkpoint must come from the
  same method and model (checked). `pretrained=False` returns the untrained initial state
  instead (a baseline), still requiring the checkpoint."""
  config_lib.validate(config)
  mngr = checkpointing.manager(workdir, async_save=False)
  step = checkpointing.check_compatible(mngr, config)
  if step is None:
    raise FileNotFoundError(
      f"no checkpoint in {mngr.directory}: train first with "
      f"python -m sslx.main --config=... --workdir={workdir}"
    )
  source = data.build_source(config.dataset, config.dataset.train_split)
  sample = np.zeros((2, source.image_size, source.image_size, 3), np.uint8)
  setup = build(config, sample, len(source), getattr(source, "num_classes", 0))
  state = create_state(setup, config.seed, sample)
  if pretrained:
    state, _ = checkpointing.restore(mngr, step, state)
  return setup, state, step


def compile_step(setup: Setup, probe_enabled: bool):
  step = functools.partial(
    train_step,
    method=setup.method,
    tx=setup.tx,
    schedule=setup.schedule,
    probe_enabled=probe_enabled,
  )
  batch_shardings = {"image": setup.batch_sharding, "label": setup.batch_sharding}
  return jax.jit(
    step,
    in_shardings=(setup.state_sharding, batch_shardings),
    out_shardings=(setup.state_sharding, sharding.replicated(setup.mesh)),
    donate_argnums=0,
  )


def _average(collection, metrics: dict):
  update = {
    k: clu_metrics.Average.from_model_output(v) for k, v in metrics.items() if k != "finite"
  }
  if collection is None:
    return update
  return {k: collection[k].merge(v) for k, v in update.items()}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config`'s method in `workdir` (resuming if it holds a checkpoint), evaluates,
  and returns the results also written to `workdir/results.json`."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  mngr = checkpointing.manager(workdir, keep=config.get("keep_checkpoints", 3))
  latest = checkpointing.check_compatible(mngr, config)  # refuse a foreign workdir first

  train_source = data.build_source(config.dataset, config.dataset.train_split)
  num_classes = getattr(train_source, "num_classes", 0)
  loader = data.make_train_loader(
    train_source, config.batch_size, config.seed, num_workers=config.dataset.get("num_workers", 0)
  )
  size = train_source.image_size
  sample = np.zeros((2, size, size, 3), np.uint8)
  setup = build(config, sample, len(train_source), num_classes)
  probe_enabled = bool(config.online_probe.get("enabled", True)) and num_classes > 0
  state = create_state(setup, config.seed, sample)
  start = 0
  if latest is not None:
    state, data_state = checkpointing.restore(mngr, latest, state)
    loader.set_state(data_state)
    start = int(state.step)
    progress.console(f"resumed from {mngr.directory} at step {start}")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  step_fn = compile_step(setup, probe_enabled)
  writer = progress.Writer(workdir, enabled=config.get("tensorboard", True))
  prog = progress.Progress(setup.total_steps, start, 2 * config.batch_size)
  log_every = max(int(config.get("log_every_steps", 50)), 1)
  ckpt_every = int(config.get("checkpoint_every_steps", 0))
  progress.console(
    f"sslx: {config.method.name} / {config.model.name} on {config.dataset.name} "
    f"({len(train_source)} images, {num_classes} classes), batch {config.batch_size}, "
    f"{setup.total_steps} steps ({setup.steps_per_epoch}/epoch), mesh {dict(setup.mesh.shape)}"
  )

  acc, prev_metrics, step, t_train, t_compile = None, None, start, 0.0, None
  first_loss = last_loss = None
  t0 = time.perf_counter()
  try:
    while step < setup.total_steps:
      batch = data.to_global_array(next(loader), setup.batch_sharding)
      state, metrics = step_fn(state, batch)
      # Check the previous step's loss while this one runs: no host sync on the hot path,
      # and a non-finite loss still stops the run within one step (the update was skipped).
      if prev_metrics is not None and not bool(prev_metrics["finite"]):
        raise NonFiniteLoss(
          f"non-finite loss at step {step} (loss={float(prev_metrics['loss'])}); stopping. "
          f"The last good checkpoint in {mngr.directory} is intact."
        )
      prev_metrics = metrics
      step += 1
      acc = _average(acc, metrics)
      if t_compile is None:
        jax.block_until_ready(metrics)
        t_compile = time.perf_counter() - t0
        prog = progress.Progress(setup.total_steps, step, 2 * config.batch_size)
        t_loop = time.perf_counter()
      if step % log_every == 0 or step == setup.total_steps:
        values = {k: float(v.compute()) for k, v in acc.items()}
        first_loss = values["loss"] if first_loss is None else first_loss
        last_loss = values["loss"]
        if not bool(metrics["finite"]):
          continue  # reported by the check above on the next iteration or after the loop
        rates = prog.update(step)
        writer.scalars(
          step, dict(values, **{k: v for k, v in rates.items() if k != "eta_s"}), prefix="train/"
        )
        progress.console(
          prog.line(
            step,
            {k: values[k] for k in sorted(values) if k in ("loss", "probe_acc", "learning_rate")},
            rates,
          )
        )
        acc = None
        warning = setup.method.collapse_warning(values)
        if warning:
          log.warning("step %d: %s", step, warning)
          progress.console(f"WARNING step {step}: {warning}")
      if ckpt_every and step % ckpt_every == 0 and step < setup.total_steps:
        checkpointing.save(mngr, step, state, loader.get_state(), config)
    if prev_metrics is not None and not bool(prev_metrics["finite"]):
      raise NonFiniteLoss(
        f"non-finite loss at step {step}; stopping. The last good "
        f"checkpoint in {mngr.directory} is intact."
      )
    if step > start:
      t_train = time.perf_counter() - t_loop
      if mngr.latest_step() != step:
        checkpointing.save(mngr, step, state, loader.get_state(), config, force=True)
  except KeyboardInterrupt:
    progress.console(f"interrupted at step {step}: saving a checkpoint before exiting")
    checkpointing.save(mngr, step, state, loader.get_state(), config, force=True)
    mngr.wait_until_finished()
    raise
  finally:
    mngr.wait_until_finished()
    writer.flush()

  images_per_sec = None
  if step - start > 1 and t_train > 0:
    images_per_sec = (step - start - 1) * 2 * config.batch_size / t_train
  results = {
    "method": config.method.name,
    "model": config.model.name,
    "dataset": config.dataset.name,
    "batch_size": config.batch_size,
    "steps": int(step),
    "epochs": step / setup.steps_per_epoch,
    "train_images_per_sec": images_per_sec,
    "compile_s": t_compile,
    "train_loss_first": first_loss,
    "train_loss_last": last_loss,
  }
  results.update(evaluation.run_all(config, setup.method, state, setup.mesh, writer, step))
  writer.close()
  path = progress.write_results(workdir, results)
  progress.console(f"results written to {path}")
  return results
