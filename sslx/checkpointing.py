"""orbax checkpoints of the whole run: train state, data-iterator position and run identity.

Each checkpoint step directory holds three items:
  state: the TrainState pytree (sharded arrays, restored with the current shardings)
  data:  the grain iterator state (JSON), so a resumed run sees the same batch sequence
  meta:  {"method", "model", "dataset", "config"}, checked before resuming so a workdir is
         never silently reused by a different method or model.

The workdir is a URL (`sslx.paths`): local, `gs://...` or any fsspec protocol. Orbax writes a
step into a temporary name and commits it by a rename (local) or a commit marker (GCS); a step
whose save was interrupted is never listed, so it is never restored.

Restores go into an abstract target (shapes, dtypes and shardings, from `jax.eval_shape`): the
arrays are read straight into their shards, and no freshly initialised state exists beside them.
A resume reads the whole state (`restore`); the commands that use a trained encoder read only
its parts (`restore_parts`), so a run pretrained on one dataset evaluates on another with
another number of classes (the online probe and the optimizer's state stay on disk).
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from sslx import paths

ITEMS = ("state", "data", "meta")


class IncompatibleCheckpoint(RuntimeError):
  pass


def manager(
  workdir: str,
  keep: int = 3,
  async_save: bool = True,
  keep_every: int = 0,
  subdir: str = "checkpoints",
) -> ocp.CheckpointManager:
  """The run's checkpoints under `workdir/<subdir>`: the `keep` latest, plus every step that
  is a multiple of `keep_every` (never deleted) when it is positive."""
  directory = paths.path(workdir) / subdir
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    keep_period=keep_every or None,
    create=True,
    enable_async_checkpointing=async_save,
  )
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def run_identity(config) -> dict:
  return {"method": config.method.name, "model": config.model.name, "dataset": config.dataset.name}


def check_compatible(mngr: ocp.CheckpointManager, config) -> int | None:
  """Returns the latest step, after checking it was written by the same method and model."""
  step = mngr.latest_step()
  if step is None:
    return None
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  mine = run_identity(config)
  for key in ("method", "model"):
    if meta.get(key) != mine[key]:
      raise IncompatibleCheckpoint(
        f"{mngr.directory} holds a checkpoint (step {step}) of {key}={meta.get(key)!r}, "
        f"but this run has {key}={mine[key]!r}. Use a fresh --workdir, or delete that "
        "directory to start over."
      )
  return step


def save(
  mngr: ocp.CheckpointManager, step: int, state: Any, data_state: Any, config, force: bool = False
) -> bool:
  meta = dict(run_identity(config), config=config.to_json_best_effort())
  return mngr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      meta=ocp.args.JsonSave(meta),
    ),
    force=force,
  )


def abstract(shapes: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying `shardings`: a restore target that allocates nothing."""
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )


def _dotted(path) -> str:
  """A pytree key path as one dotted name, e.g. "params.probe.kernel"."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _leaf_names(tree) -> dict:
  """{"params.probe.kernel": leaf, ...}: a pytree's leaves by their dotted path."""
  return {_dotted(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stored_leaves(mngr: ocp.CheckpointManager, step: int) -> dict | None:
  """The stored state's leaf metadata (with .shape) by dotted path; None where the metadata
  cannot be read (an older layout or an unreadable store)."""
  try:
    # The item's handler, not a Checkpointer: that would look for checkpoint-level metadata in
    # the item's directory (the manager keeps it one level up) and log that it is missing.
    handler = ocp.StandardCheckpointHandler()
    try:
      meta = handler.metadata(mngr.directory / str(step) / "state")
    finally:
      handler.close()
    return _leaf_names(getattr(meta, "item_metadata", meta))
  except Exception:  # nothing to compare
    return None


def check_shapes(
  mngr: ocp.CheckpointManager, step: int, target: Any, stored: dict | None = None
) -> None:
  """Refuses, naming the arrays, a checkpoint whose stored shapes differ from `target`'s,
  before any array is read: same method and model name (check_compatible), but a setting that
  sizes the state differs. Skipped where the metadata cannot be read (orbax's restore then
  reports the mismatch itself). `stored`: the metadata (`_stored_leaves`) when already read."""
  stored = stored if stored is not None else _stored_leaves(mngr, step)
  if stored is None:
    return
  wanted = _leaf_names(target)
  bad = [
    f"{name} is {tuple(stored[name].shape)} there, {tuple(leaf.shape)} here"
    for name, leaf in wanted.items()
    if name in stored
    and getattr(stored[name], "shape", None) is not None
    and getattr(leaf, "shape", None) is not None
    and tuple(stored[name].shape) != tuple(leaf.shape)
  ]
  if bad:
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    raise IncompatibleCheckpoint(
      f"{mngr.directory} (step {step}) does not fit this config: {'; '.join(bad[:3])}{more}. "
      "Something that sets an array's size (model widths or depth, head or prototype sizes, a "
      "method setting) differs from the run that wrote it; its config is config.json in the "
      "workdir. Use that config, or a fresh --workdir."
    )


def restore_parts(
  mngr: ocp.CheckpointManager, step: int, parts: dict, resizable: tuple[str, ...] = ()
) -> dict:
  """Restores only `parts` of the state at `step`: a nested dict that mirrors part of the
  stored state's tree (field names, then the pytree's own keys) with abstract leaves, e.g.
  {"step": ..., "params": {"model": ...}}. What it leaves out is never read, so its stored
  shapes may differ from the config's. Shapes are checked for what it names, as `restore`'s,
  except leaves whose last key is in `resizable`: those are read at their stored shape (a
  ViT's position embedding, sized by the training crop, which the model resamples to the grid
  of the images it is given)."""
  stored = _stored_leaves(mngr, step) if resizable else None
  if stored:

    def as_stored(path, leaf):
      name = _dotted(path)
      there = stored.get(name)
      if name.rsplit(".", 1)[-1] in resizable and getattr(there, "shape", None) is not None:
        return jax.ShapeDtypeStruct(
          tuple(there.shape), leaf.dtype, sharding=getattr(leaf, "sharding", None)
        )
      return leaf

    parts = jax.tree_util.tree_map_with_path(as_stored, parts)
  check_shapes(mngr, step, parts, stored)
  handler = ocp.PyTreeCheckpointHandler()  # the item's handler: see check_shapes
  try:
    return handler.restore(
      mngr.directory / str(step) / "state",
      args=ocp.args.PyTreeRestore(
        item=parts,
        restore_args=ocp.checkpoint_utils.construct_restore_args(parts),
        partial_restore=True,
      ),
    )
  finally:
    handler.close()


def restore(mngr: ocp.CheckpointManager, step: int, target: Any):
  """Restores (state, data_state) at `step`. `target` gives shapes, dtypes and shardings:
  ShapeDtypeStructs (`abstract`, nothing allocated before the read) or arrays."""
  target = jax.tree.map(
    lambda x: ocp.utils.to_shape_dtype_struct(x) if isinstance(x, jax.Array) else x, target
  )
  check_shapes(mngr, step, target)
  out = mngr.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
  )
  return out["state"], out["data"]
