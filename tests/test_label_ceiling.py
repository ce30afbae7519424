"""tools/label_ceiling.py: an experiment's evaluated feature trained with labels."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import data, methods
from tests.helpers import REPO, tiny

spec = importlib.util.spec_from_file_location("label_ceiling", f"{REPO}/tools/label_ceiling.py")
label_ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(label_ceiling)


def _images(n: int):
  return data.decode_all(data.EmbeddedSource("train"), indices=np.arange(n))


def test_cpc_readout_fits_the_labels_of_a_few_images():
  # 48 images, 40 steps of 16: the head starts at zero (loss ln 10), and the mean-pooled patch
  # embeddings with it must then fit the images' labels to under half that (0.72 measured).
  # The returned encoder is the trained one; the untrained one is returned as it was.
  c = tiny("cpc", total_steps=40, **{"optimizer.lr": 1e-2, "optimizer.warmup_epochs": 0.0})
  x, y = _images(48)
  method = methods.get("cpc").create(c, 40)
  trained, untrained, losses = label_ceiling.train_with_labels(c, method, x, y, 10, seed=0)
  assert len(losses) == 40
  assert losses[0] == pytest.approx(np.log(10), abs=1e-5)
  assert np.mean(losses[-5:]) < 0.5 * np.log(10)
  init = method.init(jax.random.PRNGKey(0), jnp.asarray(x[:2])).params
  f0 = label_ceiling.features(method, untrained, x[:8])
  np.testing.assert_array_equal(f0, label_ceiling.features(method, init, x[:8]))
  assert np.abs(label_ceiling.features(method, trained, x[:8]) - f0).max() > 1e-2


def test_encoders_with_batch_statistics_are_refused():
  c = tiny("simclr")
  x, y = _images(16)
  method = methods.get("simclr").create(c, 4)
  with pytest.raises(ValueError, match="batch statistics"):
    label_ceiling.train_with_labels(c, method, x, y, 10, seed=0)
