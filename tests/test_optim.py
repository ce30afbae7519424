"""Optimizer config: gradient clipping, the weight-decay schedule, the decay mask."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sslx import optim


def cfg(**kw):
  base = dict(name="sgd", base_lr=1.0, momentum=0.0, weight_decay=0.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


PARAMS = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}


def grads(scale):
  return jax.tree.map(
    lambda p: scale * jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape), PARAMS
  )


def global_norm(tree):
  return float(optax.tree.norm(tree))


def test_clipping_bounds_the_update_norm():
  tx = optim.make_optimizer(cfg(grad_clip_norm=3.0), optax.constant_schedule(1.0), 10)
  state = tx.init(PARAMS)
  big = grads(10.0)  # global norm ~ 240
  updates, _ = tx.update(big, state, PARAMS)
  assert global_norm(updates) == pytest.approx(3.0, rel=1e-5)
  # the direction is kept: the clipped update is the gradient scaled down
  ratio = jax.tree.map(lambda u, g: u / jnp.where(g == 0, 1, g), updates, big)
  r = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ratio)])
  np.testing.assert_allclose(r[r != 0], -3.0 / global_norm(big), rtol=1e-5)
  # below the threshold nothing changes; 0 = off
  small = grads(0.01)
  updates, _ = tx.update(small, state, PARAMS)
  np.testing.assert_allclose(global_norm(updates), global_norm(small), rtol=1e-6)
  off = optim.make_optimizer(cfg(grad_clip_norm=0.0), optax.constant_schedule(1.0), 10)
  updates, _ = off.update(big, off.init(PARAMS), PARAMS)
  np.testing.assert_allclose(global_norm(updates), global_norm(big), rtol=1e-6)
  with pytest.raises(ValueError, match="grad_clip_norm"):
    optim.make_optimizer(cfg(grad_clip_norm=-1.0), optax.constant_schedule(1.0), 10)


def test_weight_decay_schedule_is_the_cosine_formula():
  total, start, end = 100, 0.04, 0.4
  sched = optim.weight_decay_from(cfg(weight_decay=start, weight_decay_end=end), total)
  for k in (0, 1, 37, 50, 99, 100, 150):
    kk = min(k, total)
    expected = end + 0.5 * (start - end) * (1 + math.cos(math.pi * kk / total))
    assert float(sched(k)) == pytest.approx(expected, rel=1e-6), k
  assert optim.weight_decay_from(cfg(weight_decay=0.05), total) == 0.05  # unset: constant


def test_adamw_applies_the_scheduled_decay():
  # zero gradients: AdamW's update is exactly -lr * wd(k) * p on decayed (kernel) leaves
  total, lr = 10, 0.1
  c = cfg(name="adamw", weight_decay=0.04, weight_decay_end=0.4)
  tx = optim.make_optimizer(c, optax.constant_schedule(lr), total)
  state = tx.init(PARAMS)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  sched = optim.weight_decay_from(c, total)
  for k in range(4):
    updates, state = tx.update(zeros, state, PARAMS)
    np.testing.assert_allclose(updates["w"], -lr * float(sched(k)) * PARAMS["w"], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], 0.0)  # biases: no decay by default


def test_decay_all_decays_biases_too():
  tx = optim.make_optimizer(cfg(weight_decay=0.1, decay_all=True), optax.constant_schedule(1.0), 10)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates["b"], -0.1 * PARAMS["b"], rtol=1e-6)
  masked = optim.make_optimizer(cfg(weight_decay=0.1), optax.constant_schedule(1.0), 10)
  updates, _ = masked.update(zeros, masked.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates["b"], 0.0)
  np.testing.assert_allclose(updates["w"], -0.1 * PARAMS["w"], rtol=1e-6)
  # LARS too: its biases keep their plain step (no trust ratio) but get the decay
  for decay_all, want in ((True, -0.1), (False, 0.0)):
    lars = optim.make_optimizer(
      cfg(name="lars", weight_decay=0.1, decay_all=decay_all), optax.constant_schedule(1.0), 10
    )
    updates, _ = lars.update(zeros, lars.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["b"], want * PARAMS["b"], rtol=1e-6)


def test_no_decay_names_keep_matrices_out_of_decay_and_lars_adaptation():
  """BEiT's pretraining excludes its position embedding and CLS token by name: with zero
  gradients AdamW's update is -lr·wd·p on every other matrix and 0 on those, at any depth of
  the tree; LARS leaves them its plain (unadapted, undecayed) step too."""
  params = {
    "vit": {"pos_embed": jnp.ones((1, 4, 3)), "cls_token": jnp.ones((1, 1, 3))},
    "w": jnp.ones((3, 4)),
    "b": jnp.ones((4,)),
  }
  zeros = jax.tree.map(jnp.zeros_like, params)
  names = ("pos_embed", "cls_token")
  adamw = optim.make_optimizer(
    cfg(name="adamw", weight_decay=0.1, no_decay=names), optax.constant_schedule(1.0), 10
  )
  updates, _ = adamw.update(zeros, adamw.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * params["w"], rtol=1e-6)
  for leaf in (updates["vit"]["pos_embed"], updates["vit"]["cls_token"], updates["b"]):
    np.testing.assert_allclose(leaf, 0.0)
  plain = optim.make_optimizer(
    cfg(name="adamw", weight_decay=0.1), optax.constant_schedule(1.0), 10
  )
  updates, _ = plain.update(zeros, plain.init(params), params)
  np.testing.assert_allclose(updates["vit"]["pos_embed"], -0.1 * params["vit"]["pos_embed"])
  # LARS: a gradient of ones; the excluded leaves take the plain momentum-free step -lr·g
  lars = optim.make_optimizer(
    cfg(name="lars", weight_decay=0.1, momentum=0.0, no_decay=names),
    optax.constant_schedule(1.0),
    10,
  )
  ones = jax.tree.map(jnp.ones_like, params)
  updates, _ = lars.update(ones, lars.init(params), params)
  np.testing.assert_allclose(updates["vit"]["pos_embed"], -1.0, rtol=1e-6)
  assert not np.allclose(updates["w"], -1.0)  # adapted: trust ratio · (g + wd·p)
  assert optim.decay_mask(params, names) == {
    "vit": {"pos_embed": False, "cls_token": False},
    "w": True,
    "b": False,
  }


def test_beit_and_data2vec_paper_presets_keep_position_embedding_and_cls_token_out_of_decay():
  from tests.helpers import experiment

  for name in ("beit", "data2vec"):
    for preset in ("cifar10", "imagenet"):
      no_decay = tuple(experiment(name, preset).optimizer.no_decay)
      assert no_decay == ("pos_embed", "cls_token"), (name, preset)
    assert tuple(experiment(name).optimizer.no_decay) == ()


def test_presets_set_clipping_and_schedules():
  from tests.helpers import experiment

  for name in ("dino", "dinov2"):
    for preset in ("cifar10", "imagenet"):
      o = experiment(name, preset).optimizer
      assert (o.grad_clip_norm, o.weight_decay, o.weight_decay_end) == (3.0, 0.04, 0.4)
  for name in ("beit", "data2vec"):
    assert experiment(name, "imagenet").optimizer.grad_clip_norm == 3.0
  for name in ("moco_v1", "moco_v2"):
    for preset in ("cifar10", "imagenet"):  # the SGD presets
      assert experiment(name, preset).optimizer.decay_all is True


def test_byol_imagenet_preset_is_the_papers_300_epoch_setting():
  """BYOL Appendix: 300 epochs at LARS base lr 0.3 (× B/256), weight decay 1e-6, τ_base 0.99
  (the 1000-epoch run's 0.2 / 1.5e-6 / 0.996 are not the 300-epoch values)."""
  from tests.helpers import experiment

  c = experiment("byol", "imagenet")
  assert c.num_epochs == 300 and c.batch_size == 4096
  o = c.optimizer
  assert (o.name, o.base_lr, o.lr_scaling, o.weight_decay) == ("lars", 0.3, "linear", 1e-6)
  assert c.method.base_momentum == 0.99


def test_clipping_covers_the_groups_a_method_splits_the_parameters_into():
  # DINO's frozen last layer gives the prototypes an optimizer of their own; the clip still
  # bounds the global norm of every gradient together (here: 5 -> 1), not each group's
  from sslx.methods import dino

  params = {"fc0": jnp.zeros(1), "last_v": jnp.zeros(1)}
  g = {"fc0": jnp.full(1, 3.0), "last_v": jnp.full(1, 4.0)}
  wrap = lambda tx: dino.freeze_last_layer(tx, 1)  # noqa: E731
  tx = optim.make_optimizer(cfg(grad_clip_norm=1.0), optax.constant_schedule(1.0), 10, wrap)
  state = tx.init(params)
  frozen, state = tx.update(g, state, params)  # step 0: the prototypes frozen
  assert float(frozen["last_v"][0]) == 0.0
  assert float(frozen["fc0"][0]) == pytest.approx(-0.6, rel=1e-5)
  updates, _ = tx.update(g, state, params)  # step 1: both move, clipped together
  assert float(updates["fc0"][0]) == pytest.approx(-0.6, rel=1e-5)
  assert float(updates["last_v"][0]) == pytest.approx(-0.8, rel=1e-5)
