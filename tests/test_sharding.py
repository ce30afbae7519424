"""Sharded over 8 fake CPU devices equals one device (the suite sets 8 in conftest)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sslx import data, losses, sharding, train
from tests.helpers import tiny_simclr


def test_suite_runs_on_eight_devices():
  assert jax.device_count() == 8


def test_make_mesh_sizes_and_errors():
  assert dict(sharding.make_mesh([("data", -1)]).shape) == {"data": 8}
  assert dict(sharding.make_mesh([("data", -1), ("fsdp", 2)]).shape) == {"data": 4, "fsdp": 2}
  assert sharding.make_mesh([("data", 2)]).size == 2
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.make_mesh([("data", -1), ("fsdp", -1)])
  with pytest.raises(ValueError, match="not divisible"):
    sharding.make_mesh([("data", -1), ("fsdp", 3)])
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh([("data", 16)])


def test_fsdp_rule_shards_largest_divisible_dimension():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  tree = {
    "encoder": {
      "kernel": jax.ShapeDtypeStruct((6, 64), jnp.float32),
      "bias": jax.ShapeDtypeStruct((3,), jnp.float32),
    },
    "head": {"kernel": jax.ShapeDtypeStruct((128, 8), jnp.float32)},
  }
  out = sharding.tree_shardings(tree, mesh, [("encoder/kernel", "fsdp"), ("head", "fsdp")])
  assert out["encoder"]["kernel"].spec == P(None, "fsdp")
  assert out["encoder"]["bias"].spec == P()  # no rule matched: replicated
  assert out["head"]["kernel"].spec == P("fsdp", None)
  with pytest.raises(ValueError, match="not one of"):
    sharding.tree_shardings(tree, mesh, [(".*", "shard_everything")])


def test_global_nt_xent_sharded_equals_single_device():
  z = jax.random.normal(jax.random.PRNGKey(0), (64, 16))
  mesh = sharding.make_mesh([("data", -1)])
  zs = jax.device_put(z, sharding.batch_sharding(mesh))
  assert len(zs.sharding.device_set) == 8
  sharded = jax.jit(losses.nt_xent, static_argnums=1)(zs, 0.2)
  single = jax.jit(losses.nt_xent, static_argnums=1)(z, 0.2)
  np.testing.assert_allclose(np.asarray(sharded[0]), np.asarray(single[0]), rtol=1e-6)


def run_steps(config, batches, num_steps=2):
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(config, sample, num_examples=1000, num_classes=10)
  state = train.create_state(setup, 0, sample)
  step = train.compile_step(setup, probe_enabled=True)
  losses_seen = []
  for b in batches[:num_steps]:
    state, m = step(state, data.to_global_array(b, setup.batch_sharding))
    losses_seen.append(float(m["loss"]))
  return losses_seen, jax.device_get(state), setup


def test_train_step_on_eight_devices_equals_one_device():
  source = data.build_source(tiny_simclr().dataset, "train")
  loader = data.make_train_loader(source, 32, seed=0)
  batches = [next(loader) for _ in range(2)]
  config8 = tiny_simclr()
  config8.mesh = [("data", 8)]
  config1 = tiny_simclr()
  config1.mesh = [("data", 1)]
  loss8, state8, setup8 = run_steps(config8, batches)
  loss1, state1, setup1 = run_steps(config1, batches)
  assert setup8.mesh.size == 8 and setup1.mesh.size == 1
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state8.batch_stats), jax.tree.leaves(state1.batch_stats)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
