"""Optimizers and schedules built from config, outside any jitted code.

Config (`config.optimizer`):
  name:           "lars" | "sgd" | "adamw"
  base_lr:        learning rate at the reference batch size
  lr_scaling:     "linear" (lr = base_lr · B / 256, Goyal et al. 2017), "sqrt"
                  (lr = base_lr · sqrt(B), SimCLR appendix B.1 for small batches) or "none"
  weight_decay, momentum, b1, b2, eps, trust_coefficient (LARS)
  weight_decay_end: unset = constant weight decay; else it follows a cosine from
                  `weight_decay` at step 0 to `weight_decay_end` at the last step (DINO:
                  0.04 -> 0.4), no warm-up
  grad_clip_norm: > 0 clips the gradient of the method's parameters to this global L2 norm
                  before the optimizer sees it (optax.clip_by_global_norm); 0 = off
  decay_all:      weight decay on every parameter, biases and norms included, as
                  torch.optim's weight_decay (MoCo's official SGD); default False
  no_decay:       names of parameters that get neither weight decay nor LARS adaptation
                  whatever their rank (BEiT's pretraining: ("pos_embed", "cls_token"), its
                  model's `no_weight_decay()`); default ()
  warmup_epochs or warmup_steps; final_lr_fraction (cosine floor)

Unless `decay_all`, biases and normalisation parameters (every leaf with ndim <= 1) get no
weight decay; they never get LARS trust-ratio adaptation (SimCLR, BYOL appendix).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("lars", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")


def decay_mask(params: Any, no_decay: Collection[str] = ()) -> Any:
  """True for leaves that get weight decay / LARS adaptation: kernels, not biases or norms,
  and no leaf under a key named in `no_decay` (a method's own exclusions, such as BEiT's
  position embedding and CLS token: `optimizer.no_decay`)."""
  names = frozenset(no_decay)

  def decayed(path, p):
    return p.ndim > 1 and not names.intersection(getattr(k, "key", None) for k in path)

  return jax.tree_util.tree_map_with_path(decayed, params)


def scaled_lr(opt_cfg, batch_size: int) -> float:
  scaling = opt_cfg.get("lr_scaling", "linear")
  if scaling == "linear":
    return opt_cfg.base_lr * batch_size / 256.0
  if scaling == "sqrt":
    return opt_cfg.base_lr * math.sqrt(batch_size)
  if scaling == "none":
    return opt_cfg.base_lr
  raise ValueError(f"optimizer.lr_scaling={scaling!r} is not one of {LR_SCALINGS}")


def warmup_cosine(
  peak_lr: float, total_steps: int, warmup_steps: int, final_fraction: float = 0.0
) -> optax.Schedule:
  """Linear warm-up from 0 to `peak_lr`, then cosine decay to `final_fraction · peak_lr`."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak_lr,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=peak_lr * final_fraction,
  )


def lr_schedule(opt_cfg, batch_size: int, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """A run's learning rate: `scaled_lr` for the batch, warm-up (`warmup_steps_from`), then
  cosine decay to `final_lr_fraction` of the peak over `total_steps`."""
  return warmup_cosine(
    scaled_lr(opt_cfg, batch_size),
    total_steps,
    warmup_steps_from(opt_cfg, steps_per_epoch),
    opt_cfg.get("final_lr_fraction", 0.0),
  )


def cosine_schedule(start: float, end: float, total_steps: int) -> optax.Schedule:
  """v(k) = end + (start − end)·(1 + cos(π·k/K))/2 for k in [0, K], then `end` (DINO's
  `cosine_scheduler` without warm-up)."""
  k_total = max(int(total_steps), 1)

  def schedule(step):
    k = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(k_total))
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * k / k_total))

  return schedule


def weight_decay_from(opt_cfg, total_steps: int):
  """The weight decay: a constant, or a cosine schedule when `weight_decay_end` is set."""
  wd = float(opt_cfg.get("weight_decay", 0.0))
  end = opt_cfg.get("weight_decay_end", None)
  if end is None:
    return wd
  return cosine_schedule(wd, float(end), total_steps)


def warmup_steps_from(opt_cfg, steps_per_epoch: int) -> int:
  if opt_cfg.get("warmup_steps", None) is not None:
    return int(opt_cfg.warmup_steps)
  return int(round(opt_cfg.get("warmup_epochs", 0.0) * steps_per_epoch))


def make_optimizer(
  opt_cfg,
  schedule: optax.Schedule,
  total_steps: int = 0,
  wrap: Callable[[optax.GradientTransformation], optax.GradientTransformation] | None = None,
) -> optax.GradientTransformation:
  """Builds the optax transformation named by `opt_cfg.name` with the decay mask, the
  weight-decay schedule (over `total_steps`) and gradient clipping. `wrap` (a method's
  `wrap_optimizer`) wraps the optimizer inside the clipping, so that a wrapper that splits
  the parameters into groups (DINO's frozen last layer) still clips their global norm."""
  clip = float(opt_cfg.get("grad_clip_norm", 0.0) or 0.0)
  if clip < 0:
    raise ValueError(f"optimizer.grad_clip_norm={clip} must be >= 0 (0 = no clipping)")
  if opt_cfg.get("weight_decay_end", None) is not None and total_steps <= 0:
    raise ValueError("optimizer.weight_decay_end needs the run's total_steps (> 0)")
  tx = _base_optimizer(opt_cfg, schedule, weight_decay_from(opt_cfg, total_steps))
  if wrap is not None:
    tx = wrap(tx)
  if clip > 0:
    return optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx


def _base_optimizer(opt_cfg, schedule, wd) -> optax.GradientTransformation:
  name = opt_cfg.name
  kernels = functools.partial(decay_mask, no_decay=tuple(opt_cfg.get("no_decay", ()) or ()))
  mask = None if opt_cfg.get("decay_all", False) else kernels
  if name == "lars":
    return optax.lars(
      schedule,
      weight_decay=wd,
      weight_decay_mask=True if mask is None else mask,
      trust_coefficient=opt_cfg.get("trust_coefficient", 0.001),
      trust_ratio_mask=kernels,
      momentum=opt_cfg.get("momentum", 0.9),
    )
  if name == "sgd":
    return optax.chain(
      optax.add_decayed_weights(wd, mask=mask),
      optax.sgd(
        schedule, momentum=opt_cfg.get("momentum", 0.9), nesterov=opt_cfg.get("nesterov", False)
      ),
    )
  if name == "adamw":
    return optax.adamw(
      schedule,
      b1=opt_cfg.get("b1", 0.9),
      b2=opt_cfg.get("b2", 0.999),
      eps=opt_cfg.get("eps", 1e-8),
      weight_decay=wd,
      mask=mask,
    )
  raise ValueError(f"optimizer.name={name!r} is not one of {OPTIMIZERS}")
