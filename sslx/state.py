"""The one train-state pytree every method shares."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """All learning state, as one named pytree (checkpointed whole).

  Attributes:
    step: int32 scalar, number of updates applied.
    params: {"model": method parameters (encoder, heads, ...), "probe": online linear probe}.
    batch_stats: BatchNorm running statistics of the method's networks ({} if none).
    opt_state: optax state for `params`.
    method_state: state that is not trained by gradient: MoCo's queue, DINO's center,
      EMA teachers... ({} for SimCLR).
    rng: base PRNG key; the key of step t is `fold_in(rng, t)`, so a resumed run draws
      the same randomness as an uninterrupted one.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  rng: jax.Array
