"""GradCache (Gao et al. 2021) in SimCLR: chunked embedding, full-batch loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import methods, train
from sslx.methods import simclr
from tests.helpers import tiny_simclr


def vit_simclr(chunk: int):
  # LayerNorm everywhere (no BatchNorm): chunking must not change the gradients at all.
  c = tiny_simclr()
  c.model = {"name": "vit_tiny", "patch_size": 8, "dim": 32, "depth": 1, "num_heads": 2}
  c.method.projector_bn = False
  c.method.grad_cache_chunk = chunk
  return methods.get("simclr").create(c, total_steps=10)


def test_chunked_gradients_equal_unchunked():
  images = jax.random.randint(jax.random.PRNGKey(0), (8, 32, 32, 3), 0, 256).astype(jnp.uint8)
  whole, chunked = vit_simclr(0), vit_simclr(4)
  v = whole.init(jax.random.PRNGKey(1), images)

  def grads(method):
    fn = lambda p: method.loss(p, v.batch_stats, {}, images, jax.random.PRNGKey(2), 0)[0]
    return jax.jit(jax.value_and_grad(fn))(v.params)

  (l0, g0), (l1, g1) = grads(whole), grads(chunked)
  assert float(l0) == pytest.approx(float(l1), rel=1e-6)
  # Equal up to float32 summation order (per-chunk VJPs are summed in another order): an
  # element that is a near-cancelling sum of terms the size of its leaf's largest entry can
  # move by ~1e-6 of that size, so the absolute tolerance scales with the leaf. A lost or
  # double-counted chunk changes gradients by their own magnitude.
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_chunk_must_divide_the_views():
  method = vit_simclr(5)
  images = jnp.zeros((8, 32, 32, 3), jnp.uint8)
  v = method.init(jax.random.PRNGKey(0), images)
  with pytest.raises(ValueError, match="grad_cache_chunk=5 must be even and divide the 16 views"):
    method.loss(v.params, v.batch_stats, {}, images, jax.random.PRNGKey(0), 0)
  with pytest.raises(ValueError, match="grad_cache_chunk=6 must be even and divide"):
    simclr.grad_cache_order(8, 6)


@pytest.mark.parametrize("batch,chunk", [(64, 16), (64, 8), (48, 12), (8, 4)])
def test_chunks_do_not_share_their_image_set(batch, chunk):
  order = simclr.grad_cache_order(batch, chunk)
  assert sorted(order.tolist()) == list(range(2 * batch))  # a permutation of the rows
  n = 2 * batch // chunk
  rows = order.reshape(n, chunk)
  image, view = rows // 2, rows % 2  # image-major rows: 2i + v
  sets = [set(image[k].tolist()) for k in range(n)]
  v1 = [set(image[k][view[k] == 0].tolist()) for k in range(n)]
  v2 = [set(image[k][view[k] == 1].tolist()) for k in range(n)]
  for k in range(n):
    assert len(v1[k]) == len(v2[k]) == chunk // 2  # half of each view in every chunk
    for j in range(k + 1, n):
      # the view-1 sets are disjoint, so are the view-2 sets, and no two chunks hold the
      # same image set
      assert not v1[k] & v1[j] and not v2[k] & v2[j]
      assert sets[k] != sets[j]
  # every pair of chunks overlaps about equally: the chunks holding an image's two views
  # share no more images than any two chunks do
  overlap = np.array([[len(sets[k] & sets[j]) for j in range(n)] for k in range(n)])
  off = overlap[~np.eye(n, dtype=bool)]
  assert off.max() - off.min() <= 2, overlap
  where = {}
  for k in range(n):
    for i, v in zip(image[k], view[k]):
      where[(int(i), int(v))] = k
  for i in range(batch):
    a, b = where[(i, 0)], where[(i, 1)]
    if a != b:
      assert overlap[a, b] <= off.max()
  # for contrast: chunks cut straight from the image-major rows would hold both views of
  # their images (the chunk's BatchNorm statistics shared by an anchor and its positive only)
  naive = np.arange(2 * batch).reshape(n, chunk)
  assert set((naive[0] // 2).tolist()) == set((naive[0] // 2)[0::2].tolist())


def temp_bytes(batch: int, chunk: int) -> int:
  """XLA's temporary-buffer estimate of one compiled train step on one device."""
  c = tiny_simclr(batch=batch)
  c.mesh = [("data", 1)]
  c.model.widths = (16, 32)
  c.method.grad_cache_chunk = chunk
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(c, sample, num_examples=10 * batch, num_classes=10)
  state = jax.eval_shape(lambda: train.create_state(setup, 0, sample))
  batch_spec = {
    "image": jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.uint8),
    "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
  }
  compiled = train.compile_step(setup, probe_enabled=True).lower(state, batch_spec).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_large_batch_needs_about_one_chunks_memory():
  small = temp_bytes(64, 0)  # what a device must hold for a 64-image step
  big = temp_bytes(1024, 0)  # the 1024-image step, unchunked
  cached = temp_bytes(1024, 128)  # the 1024-image step in chunks of 128 views (64 images)
  assert big > 8 * small
  assert cached < 3 * small, (small, big, cached)
