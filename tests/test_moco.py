"""MoCo v1/v2: queue, momentum encoder, loss, shuffle-BN argument, sharding, presets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import checkpointing, config_lib, data, methods, multicrop, train
from sslx.methods import base, moco
from tests.helpers import crash_mid_run, experiment, override, tiny
from tests.test_sharding import run_steps
from tests.test_train import final_state


def tiny_moco(steps: int = 6, batch: int = 32, queue: int = 128, version: str = "v2", **overrides):
  """The tiny moco_v1/moco_v2 preset with a 2-layer 8/16-wide CNN, 16-wide heads and a
  checkpoint every 3 steps."""
  c = tiny(f"moco_{version}", total_steps=steps, batch_size=batch, checkpoint_every_steps=3)
  if c.method.projector_hidden:
    c.method.projector_hidden = (32,)
  small = {"model.widths": (8, 16), "method.projector_dim": 16, "method.queue_size": queue}
  return override(c, **{**small, **overrides})


def make(config):
  return moco.create(config, total_steps=config.total_steps)


def batches(n, batch=32, seed=0):
  source = data.build_source(tiny_moco().dataset, "train")
  loader = data.make_train_loader(source, batch, seed=seed)
  return [next(loader) for _ in range(n)]


# -- presets ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2"])
@pytest.mark.parametrize("preset", ["cpu", "cifar10", "imagenet"])
def test_presets_validate_and_build(name, preset):
  c = experiment(name, preset)
  config_lib.validate(c)
  assert c.method.name == "moco" and c.method.version == name[-2:]
  method = methods.get("moco").create(c, total_steps=100)
  assert method.queue_size % c.batch_size == 0
  if name == "moco_v1":  # no head (a linear fc), τ = 0.07, no blur
    assert method.net.head.hidden_dims == () and method.temperature == 0.07
    assert method.view.blur_prob == 0.0 and method.view.jitter_prob == 1.0
  else:  # a 2-layer MLP head
    assert len(method.net.head.hidden_dims) == 1
  if preset == "imagenet":
    assert method.queue_size == 65536 and method.momentum == 0.999
    assert method.temperature == (0.07 if name == "moco_v1" else 0.2)
    assert method.view.blur_prob == (0.0 if name == "moco_v1" else 0.5)
  assert experiment(name, f"{preset},steps=7").total_steps == 7


def test_version_sets_defaults_and_explicit_keys_win():
  v1 = config_lib.method("moco", version="v1")
  assert (v1.temperature, tuple(v1.projector_hidden)) == (0.07, ())
  v2 = config_lib.method("moco", version="v2")
  assert (v2.temperature, tuple(v2.projector_hidden)) == (0.2, (2048,))
  assert config_lib.method("moco", version="v1", temperature=0.5).temperature == 0.5
  c = tiny_moco()
  c.method = config_lib.method("moco", version="v1", queue_size=128, projector_dim=16)
  assert make(c).temperature == 0.07 and make(c).net.head.hidden_dims == ()
  with pytest.raises(ValueError, match="version='v3'"):
    config_lib.method("moco", version="v3")
  c.method.version = "v3"  # set after construction: create() still refuses it
  with pytest.raises(ValueError, match="method.version='v3'"):
    make(c)


def test_bad_queue_size_fails_before_training(tmp_path):
  config = tiny_moco(batch=32, queue=100)
  with pytest.raises(
    ValueError,
    match="queue_size=100 must be a positive multiple of the "
    "global batch_size=32.*use e.g. 96 or 128",
  ):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "config.json").exists()  # written only once training starts
  assert checkpointing.manager(str(tmp_path / "w")).latest_step() is None
  with pytest.raises(ValueError, match="queue_size=16 must be a positive multiple"):
    make(tiny_moco(batch=32, queue=16))


# -- the queue -------------------------------------------------------------------------


def test_queue_is_fifo_across_steps():
  """Each step writes its B keys (the key encoder's unit-norm outputs of the second view)
  over the oldest B rows; after K/B steps the first batch's keys are the first dropped."""
  config = tiny_moco(batch=8, queue=32, **{"augment.enabled": False})
  method = make(config)
  imgs = [b["image"] for b in batches(6, batch=8)]
  v = method.init(jax.random.PRNGKey(0), jnp.asarray(imgs[0]))
  initial = np.asarray(v.method_state["queue"])
  np.testing.assert_allclose(np.linalg.norm(initial, axis=1), 1.0, rtol=1e-5)
  loss_fn = jax.jit(method.loss)
  keys_fn = jax.jit(lambda s, x: method.keys(s, method.preprocess(x))[0])
  state, written = v.method_state, []
  for t, x in enumerate(imgs):
    expected_keys = np.asarray(keys_fn(state, x))
    _, aux = loss_fn(v.params, v.batch_stats, state, x, jax.random.PRNGKey(t), t)
    new = aux.method_state
    ptr = (t * 8) % 32
    assert int(state["queue_ptr"]) == ptr and int(new["queue_ptr"]) == (ptr + 8) % 32
    queue = np.asarray(new["queue"])
    np.testing.assert_allclose(queue[ptr : ptr + 8], expected_keys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(queue[ptr : ptr + 8], axis=1), 1.0, rtol=1e-5)
    others = np.ones(32, bool)
    others[ptr : ptr + 8] = False
    np.testing.assert_array_equal(queue[others], np.asarray(state["queue"])[others])
    written.append(expected_keys)
    state = new
  # After 6 steps of 8 into 32 rows: rows 0-7 hold step 4, 8-15 step 5, 16-31 steps 2 and 3;
  # steps 0 and 1 (the oldest) were dropped.
  queue = np.asarray(state["queue"])
  order = [4, 5, 2, 3]
  for slot, t in enumerate(order):
    np.testing.assert_allclose(queue[slot * 8 : (slot + 1) * 8], written[t], rtol=1e-5, atol=1e-6)
  assert not np.allclose(written[0], written[4])


def test_queue_fifo_and_state_survive_checkpoint_resume(tmp_path, monkeypatch):
  """Crash after 4 steps (checkpoint at 3), resume: the queue, pointer and key encoder equal
  an uninterrupted run's bit for bit, and rows written before the checkpoint stay in place."""
  config = tiny_moco(steps=6, batch=32, queue=128, evals={})
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  crash_mid_run(config, str(tmp_path / "resumed"), monkeypatch)
  step3, at3, _ = final_state(config, str(tmp_path / "resumed"))
  assert step3 == 3 and int(at3.method_state["queue_ptr"]) == 96
  train.train_and_evaluate(config, str(tmp_path / "resumed"))

  step_a, a, _ = final_state(config, str(tmp_path / "straight"))
  step_b, b, _ = final_state(config, str(tmp_path / "resumed"))
  assert step_a == step_b == 6
  assert sorted(a.method_state) == ["key_batch_stats", "key_params", "queue", "queue_ptr"]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Steps 1..6 wrote rows [0,32) [32,64) [64,96) [96,128) [0,32) [32,64): after the step-3
  # checkpoint, steps 4-6 rewrote rows 96-128, 0-32 and 32-64; rows 64-96 (step 3) stayed.
  assert int(b.method_state["queue_ptr"]) == (6 * 32) % 128
  q3, q6 = np.asarray(at3.method_state["queue"]), np.asarray(b.method_state["queue"])
  np.testing.assert_array_equal(q6[64:96], q3[64:96])
  for rows in (slice(0, 32), slice(32, 64), slice(96, 128)):
    assert not np.allclose(q6[rows], q3[rows])


# -- the momentum (key) encoder ---------------------------------------------------------


@pytest.mark.parametrize("n,moved", [(1000, 0.632), (256, 0.226)])
def test_momentum_update_moves_key_params_by_one_minus_m_to_the_n(n, moved):
  """θ_q fixed: n updates θ_k ← mθ_k + (1−m)θ_q leave θ_k − θ_q = m^n (θ_k⁰ − θ_q)."""
  method = make(tiny_moco(**{"method.momentum": 0.999}))
  v = method.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3), jnp.uint8))
  query = v.params
  other = method.init(jax.random.PRNGKey(1), jnp.zeros((2, 32, 32, 3), jnp.uint8)).params
  state = dict(v.method_state, key_params=other)  # a key encoder away from the query's

  @jax.jit
  def run(state):
    return jax.lax.fori_loop(0, n, lambda i, s: method.after_update(query, s, i), state)

  out = run(state)
  fraction = 1.0 - 0.999**n
  assert fraction == pytest.approx(moved, abs=1e-3)
  gap, travelled = 0.0, 0.0
  for k0, kn, q in zip(
    jax.tree.leaves(other), jax.tree.leaves(out["key_params"]), jax.tree.leaves(query)
  ):
    k0, kn, q = (np.asarray(a, np.float64) for a in (k0, kn, q))
    np.testing.assert_allclose(kn, k0 + fraction * (q - k0), atol=2e-5)
    gap += np.sum((q - k0) ** 2)
    travelled += np.sum((kn - k0) * (q - k0))
  assert travelled / gap == pytest.approx(fraction, abs=1e-4)
  # The queue, pointer and the query parameters are not touched by the momentum update.
  np.testing.assert_array_equal(np.asarray(out["queue"]), np.asarray(state["queue"]))
  assert int(out["queue_ptr"]) == 0


def test_cosine_momentum_schedule_rises_to_one():
  method = make(tiny_moco(**{"method.momentum": 0.99, "method.momentum_schedule": "cosine"}))
  m = [float(method.momentum_at(t)) for t in (0, method.total_steps // 2, method.total_steps)]
  assert m == pytest.approx([0.99, 0.995, 1.0], abs=1e-6)
  assert float(make(tiny_moco()).momentum_at(5)) == pytest.approx(0.99)  # constant
  with pytest.raises(ValueError, match="momentum_schedule='linear'"):
    make(tiny_moco(**{"method.momentum_schedule": "linear"}))


# -- the loss --------------------------------------------------------------------------


def numpy_info_nce(q, k, queue, temperature):
  q, k, queue = (np.asarray(a, np.float64) for a in (q, k, queue))
  logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], 1) / temperature
  m = logits.max(1, keepdims=True)
  lse = np.log(np.exp(logits - m).sum(1)) + m[:, 0]
  return np.mean(lse - logits[:, 0])


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_equals_numpy_info_nce_over_queue_negatives(symmetric):
  config = tiny_moco(batch=16, queue=64, **{"method.symmetric": symmetric})
  method = make(config)
  images = jnp.asarray(batches(1, batch=16)[0]["image"])
  v = method.init(jax.random.PRNGKey(0), images)
  state = dict(v.method_state, key_params=method.init(jax.random.PRNGKey(3), images).params)
  rng = jax.random.PRNGKey(7)

  @jax.jit
  def run(params):
    loss_fn = lambda p: method.loss(p, v.batch_stats, state, images, rng, 0)  # noqa: E731
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    views = base.two_views(rng, images, method.view, method.preprocess)
    # image-major views: rows 2i and 2i + 1 are image i's
    if symmetric:  # one query pass over both views (BN over 2B), one key pass over both
      x_q, x_k = views, multicrop.swap_views(views)
    else:
      x_q, x_k = views[0::2], views[1::2]
    return (
      loss,
      aux,
      grads,
      method.queries(params, v.batch_stats, x_q)[1],
      method.keys(state, x_k)[0],
    )

  loss, aux, grads, q, k = run(v.params)
  expected = numpy_info_nce(q, k, state["queue"], 0.2)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(aux.metrics["loss"]) == pytest.approx(expected, rel=1e-5)
  # The keys enqueued are the second view's; the gradient reaches the query encoder.
  second = k[0::2] if symmetric else k  # symmetric keys come as (k2, k1) per image
  np.testing.assert_allclose(
    np.asarray(aux.method_state["queue"])[:16], np.asarray(second), rtol=1e-5, atol=1e-6
  )
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0


# -- shuffling BN -----------------------------------------------------------------------


def test_key_pass_sees_only_the_key_batch_and_global_bn_is_permutation_equivariant():
  """(1) the key pass is its own forward pass, its BN statistics come from the key views
  only, never from the query views; (2) with G = 0 it is global BN, which is
  permutation-equivariant, so shuffling would be a no-op there; (3) key BN uses batch
  statistics (train mode), not running averages."""
  config = tiny_moco(batch=16, queue=64, **{"method.shuffle_bn_group": 0})
  method = make(config)
  images = jnp.asarray(batches(1, batch=16)[0]["image"])
  v = method.init(jax.random.PRNGKey(0), images)
  views = jax.jit(base.two_views, static_argnums=(2, 3))(
    jax.random.PRNGKey(1), images, method.view, method.preprocess
  )
  x_q, x_k = views[0::2], views[1::2]  # image-major: rows 2i, 2i + 1 are image i's views
  keys = jax.jit(lambda x: method.keys(v.method_state, x))

  k_alone, stats_alone = keys(x_k)
  # (1) In the loss, the keys enqueued and the key BN statistics are those of a pass over the
  # key views alone; a pass that also saw the query views would give other keys (control).
  _, aux = jax.jit(method.loss)(
    v.params, v.batch_stats, v.method_state, images, jax.random.PRNGKey(1), 0
  )
  np.testing.assert_allclose(
    np.asarray(aux.method_state["queue"])[:16], np.asarray(k_alone), rtol=1e-5, atol=1e-6
  )
  for a, b in zip(
    jax.tree.leaves(aux.method_state["key_batch_stats"]), jax.tree.leaves(stats_alone)
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  k_joint, _ = keys(jnp.concatenate([x_q, x_k]))
  assert not np.allclose(np.asarray(k_joint[16:]), np.asarray(k_alone), atol=1e-4)
  # (2) Shuffle → key encoder → unshuffle gives the same keys: global BN is permutation
  # equivariant, so Shuffling BN would be a no-op.
  perm = jax.random.permutation(jax.random.PRNGKey(2), 16)
  k_shuffled, stats_shuffled = keys(x_k[perm])
  unshuffled = jnp.zeros_like(k_shuffled).at[perm].set(k_shuffled)
  np.testing.assert_allclose(np.asarray(unshuffled), np.asarray(k_alone), atol=1e-5)
  for a, b in zip(jax.tree.leaves(stats_shuffled), jax.tree.leaves(stats_alone)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # (3) Train-mode BN: a key depends on the rest of the key batch (its statistics).
  k_half, _ = keys(x_k[:8])
  assert not np.allclose(np.asarray(k_half), np.asarray(k_alone[:8]), atol=1e-4)


def test_shuffle_bn_groups_statistics_and_unshuffle():
  """Ghost BN over a shuffled order: with G = 4 of N = 16 key views, each key equals the key
  of its view computed in a global-BN pass over just its group (the 4 rows the permutation put
  together), it comes back at its own row, and the running statistics are the groups' mean."""
  config = tiny_moco(batch=16, queue=64, **{"method.shuffle_bn_group": 4})
  method = make(config)
  whole = make(tiny_moco(batch=16, queue=64, **{"method.shuffle_bn_group": 0}))
  images = jnp.asarray(batches(1, batch=16)[0]["image"])
  v = method.init(jax.random.PRNGKey(0), images)
  x = jax.jit(base.two_views, static_argnums=(2, 3))(
    jax.random.PRNGKey(1), images, method.view, method.preprocess
  )[1::2]  # the key views
  rng = jax.random.PRNGKey(5)
  perm, inverse = moco.shuffle_permutation(rng, 16)
  assert sorted(np.asarray(perm).tolist()) == list(range(16))
  assert not np.array_equal(np.asarray(perm), np.arange(16))  # a real shuffle
  np.testing.assert_array_equal(np.asarray(x[perm][inverse]), np.asarray(x))  # unshuffle
  k, stats = jax.jit(lambda x, r: method.keys(v.method_state, x, r))(x, rng)
  global_keys = jax.jit(lambda x: whole.keys(v.method_state, x))
  expect = np.zeros_like(np.asarray(k))
  group_stats = []
  for grp in np.asarray(perm).reshape(4, 4):
    kg, sg = global_keys(x[grp])
    expect[grp] = np.asarray(kg)
    group_stats.append(sg)
  np.testing.assert_allclose(np.asarray(k), expect, rtol=1e-5, atol=1e-6)
  mean_stats = jax.tree.map(lambda *a: np.mean(np.stack(a), 0), *group_stats)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(mean_stats)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
  # Grouped statistics differ from global ones: the key of a view depends on its group.
  k_global, _ = global_keys(x)
  assert not np.allclose(np.asarray(k), np.asarray(k_global), atol=1e-4)
  # The loss draws a new order each step (from the step's key) and enqueues unshuffled keys.
  _, aux = jax.jit(method.loss)(
    v.params, v.batch_stats, v.method_state, images, jax.random.PRNGKey(1), 0
  )
  k_loss, _ = method.keys(v.method_state, x, jax.random.fold_in(jax.random.PRNGKey(1), 1))
  np.testing.assert_allclose(
    np.asarray(aux.method_state["queue"])[:16], np.asarray(k_loss), rtol=1e-5, atol=1e-6
  )


def test_shuffle_bn_group_must_divide_the_key_batch():
  with pytest.raises(ValueError, match="shuffle_bn_group=12"):
    make(tiny_moco(batch=32, **{"method.shuffle_bn_group": 12}))
  make(tiny_moco(batch=32, queue=128, **{"method.shuffle_bn_group": 64}))  # >= N: global BN
  # symmetric: the key batch is 2B = 64, so G = 64 is one group and 48 is refused
  with pytest.raises(ValueError, match="key batch of 64"):
    make(tiny_moco(batch=32, **{"method.shuffle_bn_group": 48, "method.symmetric": True}))


# -- sharding --------------------------------------------------------------------------


def test_train_step_on_eight_devices_equals_one_device():
  """With Shuffling BN over groups of 8 (4 groups of the 32 key views, each spread over the
  devices by the shuffle)."""
  bs = batches(2, batch=32)
  groups = {"method.shuffle_bn_group": 8}
  config8, config1 = tiny_moco(queue=64, **groups), tiny_moco(queue=64, **groups)
  config8.mesh, config1.mesh = [("data", 8)], [("data", 1)]
  loss8, state8, setup8 = run_steps(config8, bs)
  loss1, state1, setup1 = run_steps(config1, bs)
  assert setup8.mesh.size == 8 and setup1.mesh.size == 1
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  for tree in ("params", "batch_stats", "method_state"):
    for a, b in zip(jax.tree.leaves(getattr(state8, tree)), jax.tree.leaves(getattr(state1, tree))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  assert int(state8.method_state["queue_ptr"]) == 0  # 2 steps x 32 = 64 = K: wrapped
  # The queue is replicated across the mesh, deliberately (see methods/moco.py).
  assert setup8.state_sharding.method_state["queue"].spec == jax.sharding.PartitionSpec()


def test_collapse_warning():
  method = make(tiny_moco())
  assert method.collapse_warning({"embedding_std": 0.25}) is None
  assert "collapsing" in method.collapse_warning({"embedding_std": 0.001})


# -- end to end ------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_preset_short_run_learns_and_writes_results(tmp_path):
  config = experiment("moco_v2", "cpu,steps=40")
  config.batch_size = 64
  config.method.queue_size = 128
  config.optimizer.warmup_epochs = 0.05  # 8 of 156 steps: the short run must learn at once
  config.log_every_steps = 10
  config.checkpoint_every_steps = 0
  config.eval_baselines = False
  config.evals = {"knn": {"ks": (20,), "temperature": 0.07}}
  config.eval_train_limit = 2000
  train.train_and_evaluate(config, str(tmp_path))
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["method"] == "moco" and saved["steps"] == 40 and saved["knn@20"] > 10.0
  # MoCo's logged loss is no measure of learning over 40 steps: it starts against a queue of
  # random vectors (easy negatives) and rises as real keys fill it. So compare like with like:
  # on fresh images, against the final queue and key encoder, the trained query encoder's
  # InfoNCE must be well below the untrained one's.
  step, final, _ = final_state(config, str(tmp_path))
  assert step == 40
  source = data.build_source(config.dataset, "test")
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(config, sample, len(source), source.num_classes)
  initial = jax.device_get(train.create_state(setup, config.seed, sample))
  # one global batch (64) spread over the class-sorted test split
  images = np.stack([source[int(i)]["image"] for i in np.linspace(0, len(source) - 1, 64)])
  loss = jax.jit(setup.method.loss)
  rng = jax.random.PRNGKey(7)

  def infonce(params):
    return float(loss(params["model"], final.batch_stats, final.method_state, images, rng, 40)[0])

  trained, untrained = infonce(final.params), infonce(initial.params)
  assert trained < untrained - 0.3, (trained, untrained)
