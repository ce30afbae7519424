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
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx import (
  checkpointing,
  config_lib,
  data,
  evaluation,
  losses,
  methods,
  optim,
  paths,
  preemption,
  progress,
  sharding,
  weights,
  xla,
)
from sslx.evaluation import knn
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
  # The state's ShapeDtypeStructs with their shardings: a restore target that allocates nothing.
  abstract_state: Any = None


def _probe_labels(params):
  return {k: ("probe" if k == "probe" else "model") for k in params}


def make_tx(
  config, schedule, probe_lr: float, method, total_steps: int = 0
) -> optax.GradientTransformation:
  """The method's optimizer for params["model"] (`method.wrap_optimizer` inside the clip); Adam
  for the online probe."""
  main = optim.make_optimizer(config.optimizer, schedule, total_steps, method.wrap_optimizer)
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
  schedule = optim.lr_schedule(config.optimizer, config.batch_size, total, spe)
  tx = make_tx(config, schedule, config.online_probe.get("lr", 1e-3), method, total)
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
    checkpointing.abstract(abstract, state_sharding),
  )


def create_state(setup: Setup, seed: int, sample_images: np.ndarray) -> TrainState:
  init = jax.jit(
    functools.partial(init_state, setup.method, setup.tx, num_classes=setup.num_classes),
    out_shardings=setup.state_sharding,
  )
  return init(jax.random.PRNGKey(seed), jnp.asarray(sample_images))


def init_encoder_from(config, setup: Setup, state: TrainState) -> TrainState:
  """Every copy of the encoder in `state` replaced by `config.init_from`'s weights."""
  p, s, m = weights.init_variables(
    config,
    weights.encoder_module(config),
    config.init_from,
    state.params["model"],
    state.batch_stats,
    state.method_state,
    config.get("peer_python") or None,
  )
  new = state.replace(params=dict(state.params, model=p), batch_stats=s, method_state=m)
  new = jax.tree.map(lambda x, ref: np.asarray(x, ref.dtype), new, state)
  progress.console(f"encoder initialised from {config.init_from}")
  return jax.device_put(new, setup.state_sharding)


def encoder_side(state: TrainState) -> TrainState:
  """`state` without what only training uses: params holds "model" alone and opt_state is None
  (the online probe and the optimizer's state are sized by the training set's classes and the
  optimizer, not by the encoder)."""
  return state.replace(params={"model": state.params["model"]}, opt_state=None)


def restore_latest(config, workdir: str, *, pretrained: bool = True):
  """(setup, state, step) of the latest checkpoint in `workdir`, for the commands that work on a
  trained run (evaluate, embed, visualize, fine-tune, export). The checkpoint must come from the
  same method and model (checked); the dataset may differ (its classes, its path): only the
  encoder's side of the state is read (`encoder_side`: step, params["model"], batch_stats,
  method_state, rng). `pretrained=False` returns the untrained initial state instead (a
  baseline), still requiring the checkpoint. Without a checkpoint, `config.init_from`
  (published or exported weights) gives the encoder at step 0: evaluation, attention maps,
  fine-tuning and export of weights sslx did not train."""
  config_lib.validate(config)
  mngr = checkpointing.manager(workdir, async_save=False)
  step = checkpointing.check_compatible(mngr, config)
  init_from = config.get("init_from") or ""
  if step is None and not (init_from and pretrained):
    raise FileNotFoundError(
      f"no checkpoint in {mngr.directory}: train first with "
      f"python -m sslx.main --config=... --workdir={workdir}, or give the encoder's weights "
      "with --config.init_from=timm:<name>|torchvision:<name>|file:<path>"
    )
  source = data.build_source(config.dataset, config.dataset.train_split)
  sample = np.zeros((2, source.image_size, source.image_size, 3), np.uint8)
  setup = build(config, sample, len(source), getattr(source, "num_classes", 0))
  if step is None:  # no run here: the encoder from init_from, everything else fresh
    state = init_encoder_from(config, setup, create_state(setup, config.seed, sample))
    return setup, encoder_side(state), 0
  if not pretrained:
    return setup, encoder_side(create_state(setup, config.seed, sample)), step
  # Read straight into the shards: no fresh state beside the restored one.
  target = encoder_side(setup.abstract_state)
  fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
  # A ViT evaluated at another resolution than it trained at resamples its stored position
  # embedding to the new patch grid (models/vit.py), as DINO's evaluation does.
  parts = checkpointing.restore_parts(
    mngr, step, {k: v for k, v in fields.items() if v is not None}, resizable=("pos_embed",)
  )
  return setup, target.replace(**parts), step


def _bind(step_fn, setup: Setup, probe_enabled: bool):
  """`step_fn(state, batch, ...)` with the run's method, optimizer and schedule bound."""
  return functools.partial(
    step_fn,
    method=setup.method,
    tx=setup.tx,
    schedule=setup.schedule,
    probe_enabled=probe_enabled,
  )


def compile_step(setup: Setup, probe_enabled: bool):
  step = _bind(train_step, setup, probe_enabled)
  batch_shardings = {"image": setup.batch_sharding, "label": setup.batch_sharding}
  return jax.jit(
    step,
    in_shardings=(setup.state_sharding, batch_shardings),
    out_shardings=(setup.state_sharding, sharding.replicated(setup.mesh)),
    donate_argnums=0,
  )


def _accumulating_step(state, batch, sums, **kwargs):
  """``train_step`` plus running sums of its metrics, kept on the devices between log steps."""
  state, metrics = train_step(state, batch, **kwargs)
  return state, metrics, add_metrics(sums, metrics)


def add_metrics(sums: dict, metrics: dict) -> dict:
  """``sums`` + this step's scalar metrics (all but "finite"), and one more in ``"steps"``."""
  out = {k: sums[k] + jnp.asarray(v, jnp.float32) for k, v in metrics.items() if k != "finite"}
  out["steps"] = sums["steps"] + 1.0
  return out


def compile_accumulating_step(setup: Setup, probe_enabled: bool):
  """``(state, batch, sums) -> (state, metrics, sums)``: the train step that also adds its
  metrics to ``sums`` inside the jitted computation (no per-step host work for them)."""
  step = _bind(_accumulating_step, setup, probe_enabled)
  rep = sharding.replicated(setup.mesh)
  return jax.jit(
    step,
    in_shardings=(setup.state_sharding, setup.batch_sharding, rep),
    out_shardings=(setup.state_sharding, rep, rep),
    donate_argnums=(0, 2),
  )


def zero_metric_sums(setup: Setup, probe_enabled: bool, state, batch) -> dict:
  """Zeros in the shape of ``add_metrics``'s sums for this step (traced, not compiled)."""
  step = _bind(train_step, setup, probe_enabled)
  _, metrics = jax.eval_shape(step, state, batch)
  rep = sharding.replicated(setup.mesh)
  names = [k for k in metrics if k != "finite"] + ["steps"]
  return {k: jax.device_put(np.zeros((), np.float32), rep) for k in names}


def _device_batches(config, source, setup: Setup) -> data.DevicePrefetcher:
  """Global batches on the devices, two steps ahead; views made on the host when
  ``dataset.host_crops`` (see sslx.data.crops)."""
  maker = None
  if config.dataset.get("host_crops", False):
    maker = data.ViewMaker(data.crop_groups(setup.method, config.method.name), config.seed)
  loader = data.make_train_loader(
    source,
    config.batch_size,
    config.seed,
    num_workers=config.dataset.get("num_workers", 0),
    view_maker=maker,
  )
  # to_device looked up now, so a test can replace data.to_global_array around one run
  return data.DevicePrefetcher(loader, setup.batch_sharding, size=2, to_device=data.to_global_array)


def _stopped(e: preemption.Preempted):
  progress.console(str(e))
  raise e


def check_eval_split(config, train_source) -> None:
  """Fails before any work when the evaluation split cannot be read, or could not be held as
  the protocols need it (`evaluation.decode_in_memory`) (evaluation on)."""
  if not config.get("evals") or not getattr(train_source, "num_classes", 0):
    return
  split = config.dataset.eval_split
  try:
    train, test, _ = evaluation.eval_splits(config, train_source)
  except (OSError, ValueError) as e:
    raise ValueError(
      f"evaluation split {split!r} cannot be read from dataset.path="
      f"{config.dataset.get('path', '')!r}: {e}. Give the right dataset.eval_split, or set "
      "--config.evals='{}' to train without evaluation."
    ) from e
  evaluation.decode_in_memory(config, train, test)  # raises where that could not be done


class _Run(NamedTuple):
  """What a run starts from: its checkpoint manager and latest step, the built setup, the
  device batches and the state (restored or new) at step `start`."""

  mngr: Any
  latest: int | None
  train_source: Any
  setup: Setup
  loader: data.DevicePrefetcher
  state: TrainState
  start: int
  probe_enabled: bool


def _open_run(config, workdir: str) -> _Run:
  """Checks the config, the workdir and the data before any work, builds the setup and
  restores the latest checkpoint of `workdir` (model and data-loader state) or starts anew."""
  config_lib.validate(config)
  paths.check_writable(workdir)  # a missing bucket or credentials fail here, naming the URL
  mngr = checkpointing.manager(
    workdir,
    keep=config.get("keep_checkpoints", 3),
    keep_every=int(config.get("keep_every_steps", 0) or 0),
  )
  latest = checkpointing.check_compatible(mngr, config)  # refuse a foreign workdir first

  train_source = data.build_source(config.dataset, config.dataset.train_split)
  num_classes = getattr(train_source, "num_classes", 0)
  check_eval_split(config, train_source)
  size = train_source.image_size
  sample = np.zeros((2, size, size, 3), np.uint8)
  setup = build(config, sample, len(train_source), num_classes)
  loader = _device_batches(config, train_source, setup)
  probe_enabled = bool(config.online_probe.get("enabled", True)) and num_classes > 0
  start = 0
  if latest is not None:
    # Read straight into the shards: no freshly initialised state beside the restored one.
    state, data_state = checkpointing.restore(mngr, latest, setup.abstract_state)
    loader.set_state(data_state)
    start = int(state.step)
    progress.console(f"resumed from {mngr.directory} at step {start}")
  else:
    state = create_state(setup, config.seed, sample)
    if config.get("init_from"):
      state = init_encoder_from(config, setup, state)
  if progress.is_lead():
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  return _Run(mngr, latest, train_source, setup, loader, state, start, probe_enabled)


def _report(step: int, values: dict, prog: progress.Progress, writer, method) -> None:
  """A log step: the mean metrics since the last one to TensorBoard and the console (with
  rates and ETA), and the method's collapse warning if any."""
  rates = prog.update(step)
  writer.scalars(
    step, dict(values, **{k: v for k, v in rates.items() if k != "eta_s"}), prefix="train/"
  )
  shown = {k: values[k] for k in sorted(values) if k in ("loss", "probe_acc", "learning_rate")}
  progress.console(prog.line(step, shown, rates))
  warning = method.collapse_warning(values)
  if warning:
    log.warning("step %d: %s", step, warning)
    progress.console(f"WARNING step {step}: {warning}")


def _training_results(config, setup: Setup, step: int, start: int, t_train, t_compile) -> dict:
  """results.json's record of the training: what ran, for how long and how fast (images/s over
  the steps after the first, which compiles)."""
  images_per_sec = None
  if step - start > 1 and t_train > 0:
    images_per_sec = (step - start - 1) * 2 * config.batch_size / t_train
  return {
    "method": config.method.name,
    "model": config.model.name,
    "dataset": config.dataset.name,
    "batch_size": config.batch_size,
    "steps": int(step),
    "epochs": step / setup.steps_per_epoch,
    "train_images_per_sec": images_per_sec,
    "compile_s": t_compile,
    "allocator": xla.allocator(),
  }


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config`'s method in `workdir` (a path or URL; resuming if it holds a checkpoint),
  evaluates, and returns the results also written to `workdir/results.json`.

  On SIGTERM/SIGINT it saves the step it is at and raises `preemption.Preempted` (a
  SystemExit with status 75)."""
  run = _open_run(config, workdir)
  setup = run.setup
  writer = progress.Writer(workdir, enabled=config.get("tensorboard", True))
  progress.console(
    f"sslx: {config.method.name} / {config.model.name} on {config.dataset.name} "
    f"({len(run.train_source)} images, {setup.num_classes} classes), batch {config.batch_size}, "
    f"{setup.total_steps} steps ({setup.steps_per_epoch}/epoch), mesh {dict(setup.mesh.shape)}"
  )
  state, step, t_train, t_compile, first_loss, last_loss = _train_loop(config, run, writer)
  results = _training_results(config, setup, step, run.start, t_train, t_compile)
  results.update(train_loss_first=first_loss, train_loss_last=last_loss)
  try:
    with preemption.stop_evaluating(step, workdir):
      evaluated = evaluation.run_all(
        config, setup.method, state, setup.mesh, writer, step, workdir=workdir
      )
  except preemption.Preempted as e:  # the final checkpoint is committed: the rerun evaluates it
    writer.close()
    if isinstance(e, preemption.StoppedEvaluating):  # (a protocol's own stop says it itself)
      progress.console(str(e))
    raise
  results.update(evaluated)
  if not evaluated:
    reason = "config.evals is empty" if not config.get("evals") else "the dataset has no labels"
    results["evaluation"] = f"none: {reason}"
  writer.close()
  path = progress.write_results(workdir, results)
  progress.console(f"results written to {path}")
  return results


def _train_loop(config, run: _Run, writer):
  """Steps from `run.start` to the end with logging, periodic k-NN, checkpoints on schedule
  and at the end, a NaN check one step behind, and a save-and-exit on SIGTERM/SIGINT.
  Returns (state, step, training seconds, compile seconds, first and last logged loss)."""
  mngr, setup, loader, state, start = run.mngr, run.setup, run.loader, run.state, run.start
  step_fn = compile_accumulating_step(setup, run.probe_enabled)
  periodic_eval = knn.PeriodicKnn(config, setup.method, setup.mesh, writer)
  prog = progress.Progress(setup.total_steps, start, 2 * config.batch_size)
  log_every = max(int(config.get("log_every_steps", 50)), 1)
  schedule = preemption.SaveSchedule(
    config.get("checkpoint_every_steps", 0),
    config.get("checkpoint_every_minutes", 0.0),
    sync_every=log_every,
  )
  saved = {"step": run.latest}

  def save(step, force=False):
    if saved["step"] != step:
      checkpointing.save(mngr, step, state, loader.get_state(), config, force=force)
      saved["step"] = step
      schedule.saved()
    writer.sync()

  sums, zero_sums, prev_metrics, step, t_train, t_compile = None, None, None, start, 0.0, None
  first_loss = last_loss = None
  t0 = time.perf_counter()
  with preemption.StopRequest() as stop:
    try:
      while step < setup.total_steps:
        batch = next(loader)  # already on the devices (DevicePrefetcher)
        if sums is None:  # after a log step: the sums start again from zero on the devices
          if zero_sums is None:
            zero_sums = zero_metric_sums(setup, run.probe_enabled, state, batch)
          sums = jax.tree.map(jnp.copy, zero_sums)
        state, metrics, sums = step_fn(state, batch, sums)
        # Check the previous step's loss while this one runs: no host sync on the hot path,
        # and a non-finite loss still stops the run within one step (the update was skipped).
        if prev_metrics is not None and not bool(prev_metrics["finite"]):
          raise NonFiniteLoss(
            f"non-finite loss at step {step} (loss={float(prev_metrics['loss'])}); stopping. "
            f"The last good checkpoint in {mngr.directory} is intact."
          )
        prev_metrics = metrics
        step += 1
        if t_compile is None:
          jax.block_until_ready(metrics)
          t_compile = time.perf_counter() - t0
          prog = progress.Progress(setup.total_steps, step, 2 * config.batch_size)
          t_loop = time.perf_counter()
        if stop.due():
          # A signal: this step is the next boundary. Save it, wait for the commit, exit 75.
          progress.console(f"{stop.signal_name} received: saving step {step} before exiting")
          save(step, force=True)
          mngr.wait_until_finished()
          _stopped(preemption.Preempted(step, str(mngr.directory), stop.seconds_since_signal()))
        if step % log_every == 0 or step == setup.total_steps:
          host = jax.device_get(sums)
          values = {k: float(v / host["steps"]) for k, v in host.items() if k != "steps"}
          first_loss = values["loss"] if first_loss is None else first_loss
          last_loss = values["loss"]
          if not bool(metrics["finite"]):
            continue  # reported by the check above on the next iteration or after the loop
          _report(step, values, prog, writer, setup.method)
          sums = None
        periodic_eval(step, state)
        if step < setup.total_steps and schedule.due(step):
          save(step)
      if prev_metrics is not None and not bool(prev_metrics["finite"]):
        raise NonFiniteLoss(
          f"non-finite loss at step {step}; stopping. The last good "
          f"checkpoint in {mngr.directory} is intact."
        )
      if step > start:
        t_train = time.perf_counter() - t_loop
        save(step, force=True)
    except BaseException:
      # Preempted, NonFiniteLoss, a crash: commit what was saved and close the event writer
      # (its flushing thread would otherwise hold the interpreter's exit for seconds).
      mngr.wait_until_finished()
      writer.close()
      raise
    finally:
      loader.close()
    mngr.wait_until_finished()
    writer.sync()
    if stop.signal_name is not None:  # a signal after the last step: its checkpoint is committed
      _stopped(preemption.Preempted(step, str(mngr.directory), stop.seconds_since_signal()))

  return state, step, t_train, t_compile, first_loss, last_loss
