"""Evaluation encodes with the network each paper evaluates (DINO/DINOv2: the teacher; BYOL:
the online network; data2vec: the student), and results.json names it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import evaluation, methods, sharding, train
from sslx.state import TrainState
from tests.helpers import experiment
from tests.test_dino import tiny_dino


def fake_state(v):
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params={"model": v.params},
    batch_stats=v.batch_stats,
    opt_state=None,
    method_state=v.method_state,
    rng=jax.random.PRNGKey(0),
  )


def eval_data(n=16, m=8):
  rng = np.random.default_rng(0)
  xtr = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
  xte = rng.integers(0, 256, (m, 32, 32, 3), np.uint8)
  return xtr, np.arange(n) % 2, xte, np.arange(m) % 2, 2


def evaluated_features(monkeypatch, config, method, state, data):
  """(the features run_all extracted for the test split, run_all's results)."""
  seen = []
  real = evaluation.extract_split

  def spy(encode_fn, images, mesh, *args, **kwargs):
    out = real(encode_fn, images, mesh, *args, **kwargs)
    seen.append(out[0])
    return out

  monkeypatch.setattr(evaluation, "extract_split", spy)
  mesh = sharding.make_mesh([("data", 1)])
  results = evaluation.run_all(config, method, state, mesh, eval_data=data)
  return seen[1], results  # [train, test] of the trained encoder


@pytest.mark.parametrize("choice", ["teacher", "student"])
def test_dino_evaluates_the_teacher_by_default(monkeypatch, choice):
  config = tiny_dino()
  config.eval_baselines = False
  config.evals = {"knn": {"ks": (3,), "temperature": 0.07}}
  if choice == "student":
    config.method.eval_encoder = "student"
  method = methods.get("dino").create(config, total_steps=10)
  assert method.eval_encoder == choice
  data = eval_data()
  v = method.init(jax.random.PRNGKey(0), jnp.asarray(data[0][:2]))
  # a teacher that differs from the student
  other = method.init(jax.random.PRNGKey(1), jnp.asarray(data[0][:2]))
  v = v._replace(
    method_state=dict(v.method_state, teacher={"params": other.params, "batch_stats": {}})
  )
  feats, results = evaluated_features(monkeypatch, config, method, fake_state(v), data)
  teacher = method.encode(other.params, {}, jnp.asarray(data[2]))
  student = method.encode(v.params, {}, jnp.asarray(data[2]))
  expected, wrong = (teacher, student) if choice == "teacher" else (student, teacher)
  np.testing.assert_allclose(feats, expected, atol=1e-5)
  assert float(np.abs(feats - np.asarray(wrong)).max()) > 1e-3
  assert results["eval_encoder"] == choice


def test_each_method_names_the_encoder_it_evaluates():
  byol = methods.get("byol").create(experiment("byol"), total_steps=10)
  d2v = methods.get("data2vec").create(experiment("data2vec"), total_steps=10)
  simclr = methods.get("simclr").create(experiment("simclr"), total_steps=10)
  assert (byol.eval_encoder, d2v.eval_encoder, simclr.eval_encoder) == (
    "online",
    "student",
    "online",
  )
  p, b, s = {"encoder": 1}, {"x": 2}, {"teacher": 3, "target": {"params": {}, "batch_stats": {}}}
  for method in (byol, d2v, simclr):
    assert method.eval_variables(p, b, s) == (p, b)
  c = experiment("data2vec")
  c.method.eval_encoder = "teacher"
  teacher = methods.get("data2vec").create(c, total_steps=10)
  assert teacher.eval_variables(p, b, s)[0] == {"encoder": 3}
  c.method.eval_encoder = "ema"
  with pytest.raises(ValueError, match="eval_encoder='ema'"):
    methods.get("data2vec").create(c, total_steps=10)


@pytest.mark.slow
def test_results_json_names_the_evaluated_encoder(tmp_path):
  config = tiny_dino(steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["eval_encoder"] == "teacher" and "knn@5" in saved
