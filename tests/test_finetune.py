"""Fine-tuning protocol: end-to-end training of a pretrained encoder; LLRD scales."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import models
from sslx.evaluation import finetune
from tests.helpers import tiny_simclr


def test_finetune_a_tiny_checkpoint_changes_encoder_and_beats_chance(tmp_path):
  from sslx import train
  config = tiny_simclr(steps=2, evals={})
  train.train_and_evaluate(config, str(tmp_path))
  from sslx import checkpointing, data, evaluation
  mngr = checkpointing.manager(str(tmp_path), async_save=False)
  xtr, ytr, xte, yte, nc = evaluation.load_eval_data(config)
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  setup = train.build(config, sample, len(xtr), nc)
  state, _ = checkpointing.restore(mngr, mngr.latest_step(),
                                   train.create_state(setup, 0, sample))
  state = jax.device_get(state)
  tr = np.random.default_rng(0).permutation(len(xtr))[:1000]
  te = np.random.default_rng(1).permutation(len(xte))[:300]  # splits may be sorted by class
  ctx = finetune.Context(setup.method, state.params["model"], state.batch_stats,
                         xtr[tr], ytr[tr], xte[te], yte[te], nc)
  results, tuned = finetune.finetune(ctx, dict(steps=30, batch_size=64, lr=3e-3,
                                               mixup_alpha=0.0))
  # 10 classes: chance is 10%. After 30 steps BatchNorm's running statistics (momentum 0.99)
  # still lag, so the held-out figure is noisy; the training batches show the learning.
  assert results["finetune_train_acc"] > 15.0, results
  assert 0.0 <= results["finetune"] <= 100.0
  before = state.params["model"]["encoder"]
  after = tuned["model"]["encoder"]
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before),
                                                     jax.tree.leaves(after))]
  assert all(changed)


def test_protocol_needs_the_context():
  with pytest.raises(ValueError, match="needs the raw images"):
    finetune.run({}, object())


def test_llrd_scales_per_vit_block():
  vit = models.create_model("vit_tiny", patch_size=8, depth=3)
  params = jax.eval_shape(lambda: vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                                           train=False))["params"]
  scales = finetune.llrd_scales(params, 0.5)
  # L = 3 blocks: embeddings 0.5^4, block i 0.5^(3 - i), final norm 1.
  assert all(s == 0.5 ** 4 for s in jax.tree.leaves(scales["patch_embed"]))
  for i in range(3):
    assert set(jax.tree.leaves(scales[f"block{i}"])) == {0.5 ** (3 - i)}
  assert set(jax.tree.leaves(scales["norm"])) == {1.0}
  flat = {jax.tree_util.keystr(p): s for p, s in
          jax.tree_util.tree_flatten_with_path(scales)[0]}
  assert max(flat.values()) == 1.0 and min(flat.values()) == 0.5 ** 4
  # A ConvNet has no blocks: every scale is 1.
  conv = models.create_model("convnet", widths=(4, 8))
  cp = jax.eval_shape(lambda: conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                        train=False))["params"]
  assert set(jax.tree.leaves(finetune.llrd_scales(cp, 0.5))) == {1.0}
