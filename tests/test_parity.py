"""Parity with a peer library: sslx's losses, schedules and masking against lightly 1.5.13
(and the ViT's drop-path and position-embedding resampling against timm 0.9.16), PyTorch on
CPU, on the same inputs.

The peer runs in its own environment (`shared/bench/peer_env.sh` builds it; `.ci/run` builds
`.peer-venv`), found from $SSLX_PEER_PYTHON or the repository's `.peer-venv/bin/python`;
without one these tests skip, saying why. One subprocess (tests/parity_peer.py) computes every
reference value in float64 (torch starts once); sslx computes in float32 and must agree to
1e-5 where the maths is the same. Where lightly departs from the official code, the paper's
code wins and the test says so in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import losses, masking
from sslx.methods import byol, common, dino, dinov2, mae, vicreg
from sslx.models import vit as vit_lib

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5
LARGEST = {}  # name -> largest |sslx − peer| (printed with `pytest -s`)


def peer_python() -> tuple[str | None, str]:
  """(path, "") of the peer python, or (None, why not)."""
  env = os.environ.get("SSLX_PEER_PYTHON")
  if env:
    if Path(env).is_file():
      return env, ""
    return None, f"SSLX_PEER_PYTHON={env} does not exist"
  local = REPO / ".peer-venv" / "bin" / "python"
  if local.is_file():
    return str(local), ""
  return None, (
    "no peer PyTorch environment: set SSLX_PEER_PYTHON or build .peer-venv with "
    "`bash ../shared/bench/peer_env.sh .peer-venv` (what .ci/run does)"
  )


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_inputs() -> dict:
  rng = np.random.default_rng(0)
  f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
  inp = {}
  inp["ntxent/z0"], inp["ntxent/z1"], inp["ntxent/temp"] = f32(8, 16), f32(8, 16), 0.5
  inp["bank/q"], inp["bank/k"] = f32(2, 8, 16), f32(2, 8, 16)
  inp["bank/queue"], inp["bank/temp"] = unit(f32(32, 16)), 0.2
  inp["byol/p"], inp["byol/z"] = f32(8, 16), f32(8, 16)
  # DINO: 7 epochs of K = 32 logits, G = 2 teacher and V = 5 student views of B = 4 images;
  # τ_t warms up 0.04 → 0.07 over 4 epochs.
  inp["dino/teacher"], inp["dino/student"] = f32(7, 2, 4, 32), f32(7, 5, 4, 32)
  inp["dino/cfg"] = np.array([32, 0.04, 0.07, 4, 0.1, 0.9])
  # iBOT: 2 steps of M = 3 crops of a 3x3 patch grid, K = 16; crop 2 of step 0 has no mask.
  inp["ibot/teacher"], inp["ibot/student"] = f32(2, 3, 9, 16), f32(2, 3, 9, 16)
  mask = rng.random((2, 3, 3, 3)) < 0.4
  mask[0, 2] = False
  mask[1, :, 0, 0] = True
  inp["ibot/mask"], inp["ibot/cfg"] = mask, np.array([16, 0.07, 0.1, 0.9])
  inp["koleo/x"] = f32(12, 8)
  inp["sinkhorn/logits"], inp["sinkhorn/temp"] = unit(f32(24, 10)), 0.05
  inp["vicreg/z0"], inp["vicreg/z1"] = f32(16, 8), f32(16, 8) + 0.5 * f32(16, 8)
  inp["schedule/steps"], inp["schedule/base"] = 50, 0.996
  inp["mae/images"], inp["mae/patch"] = f32(2, 16, 16, 3), 4
  # (L patches, ratio): the MAE presets' grids at 75%.
  inp["mask/random_cases"] = np.array([[16, 0.75], [64, 0.75], [196, 0.75]])
  inp["mask/grid"], inp["mask/batch"] = 14, 512
  inp["mask/block_target"], inp["mask/block_images"] = 78, 128  # BEiT: 40% of 14x14
  inp["vit/depth"], inp["vit/drop_path_rate"] = 6, 0.3
  inp["vit/drop_rows"], inp["vit/drop_prob"] = 20000, 0.25
  inp["vit/pos"] = f32(1, 49, 8)  # a 7x7 grid
  inp["vit/grid_small"], inp["vit/grid_large"] = 3, 10
  return inp


@pytest.fixture(scope="session")
def peer(tmp_path_factory):
  """(inputs, references): every reference value from one peer subprocess."""
  python, why = peer_python()
  if python is None:
    pytest.skip(why)
  inp = make_inputs()
  d = tmp_path_factory.mktemp("parity")
  np.savez(d / "inputs.npz", **{k: np.asarray(v) for k, v in inp.items()})
  proc = subprocess.run(
    [python, str(REPO / "tests" / "parity_peer.py"), str(d / "inputs.npz"), str(d / "out.npz")],
    capture_output=True,
    text=True,
    timeout=600,
    env={k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))},
  )
  if proc.returncode == 3:  # parity_peer.MISSING
    pytest.skip(f"{python} lacks the peer libraries: {proc.stderr.strip()[-500:]}")
  if proc.returncode:
    pytest.fail(f"the peer script failed ({python}):\n{proc.stderr[-4000:]}")
  return inp, dict(np.load(d / "out.npz"))


def close(name, ours, ref, tol=TOL):
  """|ours − ref| <= tol·(1 + |ref|) elementwise; records the largest difference."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
  diff = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
  LARGEST[name] = diff
  print(f"parity {name}: largest difference {diff:.2e}", file=sys.stderr)
  np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol, err_msg=name)


# --------------------------------------------------------------------------------- losses


def test_nt_xent_simclr(peer):
  inp, ref = peer
  # image-major, as sslx stacks views: rows 2i and 2i + 1 are image i's two views
  z = jnp.stack([inp["ntxent/z0"], inp["ntxent/z1"]], axis=1).reshape(
    -1, inp["ntxent/z0"].shape[-1]
  )
  close("nt_xent", losses.nt_xent(z, inp["ntxent/temp"])[0], ref["ntxent/loss"])


def test_nt_xent_with_a_memory_bank_is_moco_info_nce_over_the_fifo_queue(peer):
  """lightly's NTXentLoss with a memory bank, seeded with our queue: each step's loss is
  InfoNCE of q against k and the queue (sslx.losses.info_nce as MoCo builds it), and the
  bank advances as MoCo's FIFO queue does (the first step's keys over rows 0..B−1)."""
  inp, ref = peer
  queue, ptr = jnp.asarray(inp["bank/queue"]), 0
  for step in range(2):
    q = losses.l2_normalize(jnp.asarray(inp["bank/q"][step]))
    k = losses.l2_normalize(jnp.asarray(inp["bank/k"][step]))
    sims = jnp.concatenate([jnp.sum(q * k, -1, keepdims=True), q @ queue.T], axis=1)
    close(f"moco_bank_step{step}", losses.info_nce(sims, inp["bank/temp"]), ref[f"bank/loss{step}"])
    queue = jax.lax.dynamic_update_slice(queue, k, (ptr, 0))
    ptr = (ptr + k.shape[0]) % queue.shape[0]
  close("moco_bank_queue", queue, ref["bank/queue_after"])


def test_byol_regression_loss_is_two_plus_two_negative_cosine(peer):
  """BYOL eq. 2 is ||p̄ − z̄||² = 2 − 2·cos; lightly's NegativeCosineSimilarity is −cos."""
  inp, ref = peer
  ours = jnp.mean(byol.regression_loss(jnp.asarray(inp["byol/p"]), jnp.asarray(inp["byol/z"])))
  close("byol", ours, 2.0 + 2.0 * ref["byol/neg_cos"])


def test_dino_loss_center_update_and_teacher_temperature_warmup(peer):
  """DINOLoss called once per epoch: the linspace warm-up of τ_t, the centred/sharpened
  teacher, the loss over the (i, j ≠ i) view pairs, and the center after every call."""
  inp, ref = peer
  k, warm, temp, warm_epochs, s_temp, momentum = inp["dino/cfg"]
  epochs, g, b, _ = inp["dino/teacher"].shape
  v = inp["dino/student"].shape[1]
  center = jnp.zeros((1, int(k)), jnp.float32)
  got_loss, got_center, got_temp = [], [], []
  for e in range(epochs):
    tau = dino.teacher_temperature(e, epochs, warm, temp, warm_epochs / epochs)
    # lightly's views come view by view; sslx's rows are image-major (row i·V + v)
    teacher = jnp.asarray(inp["dino/teacher"][e].swapaxes(0, 1).reshape(g * b, -1))
    student = jnp.asarray(inp["dino/student"][e].swapaxes(0, 1).reshape(v * b, -1))
    probs = dino.teacher_softmax(teacher, center, tau)
    got_loss.append(dino.cross_view_loss(student, probs, g, float(s_temp)))
    center = dino.update_center(center, teacher, float(momentum))
    got_center.append(center[0])
    got_temp.append(tau)
  close("dino_temperature", got_temp, ref["dino/temp"])
  close("dino_loss", got_loss, ref["dino/loss"])
  close("dino_center", got_center, ref["dino/center"])


def test_ibot_patch_loss_and_patch_center(peer):
  """iBOT's masked-patch loss (per-crop mean over masked patches, crops without a mask count
  as 0) and the patch center over the masked teacher patches, two steps."""
  inp, ref = peer
  k, t_temp, s_temp, momentum = inp["ibot/cfg"]
  steps, m, p, _ = inp["ibot/teacher"].shape
  center = jnp.zeros((1, int(k)), jnp.float32)
  got_loss, got_center = [], []
  for s in range(steps):
    mask = jnp.asarray(inp["ibot/mask"][s].reshape(m, p))
    teacher = jnp.asarray(inp["ibot/teacher"][s].reshape(m * p, -1))
    probs = dino.teacher_softmax(teacher, center, float(t_temp)).reshape(m, p, -1)
    got_loss.append(dinov2.ibot_loss(jnp.asarray(inp["ibot/student"][s]), probs, mask, s_temp))
    center = dinov2.update_patch_center(center, teacher, mask.reshape(-1), float(momentum))
    got_center.append(center[0])
  close("ibot_loss", got_loss, ref["ibot/loss"])
  close("ibot_center", got_center, ref["ibot/center"])


def test_koleo(peer):
  inp, ref = peer
  close("koleo", dinov2.koleo_loss(jnp.asarray(inp["koleo/x"])), ref["koleo/loss"])


def test_sinkhorn_knopp(peer):
  """lightly's SwAV sinkhorn skips the official `Q /= K` after the prototype normalisation;
  the sample normalisation that follows cancels it, so the result is the same."""
  inp, ref = peer
  q = dinov2.sinkhorn_knopp(jnp.asarray(inp["sinkhorn/logits"]), inp["sinkhorn/temp"], 3)
  close("sinkhorn_knopp", q, ref["sinkhorn/q"])


def test_vicreg(peer):
  inp, ref = peer
  loss, _ = vicreg.vicreg_loss(jnp.asarray(inp["vicreg/z0"]), jnp.asarray(inp["vicreg/z1"]))
  close("vicreg", loss, ref["vicreg/loss"])


# ------------------------------------------------------------------------------ schedules


def test_cosine_momentum_schedule(peer):
  """lightly departs from BYOL/DINO here: its cosine runs over k/(K−1) (1.0 at the last step);
  the papers' and their code's τ_k uses k/K, which lightly gives with one more step."""
  inp, ref = peer
  steps, base = int(inp["schedule/steps"]), float(inp["schedule/base"])
  ours = [common.cosine_momentum(k, steps, base) for k in range(steps)]
  close("cosine_momentum", ours, ref["schedule/lightly_k_over_K"])
  assert np.max(np.abs(np.asarray(ours) - ref["schedule/lightly"])) > 1e-5  # the departure


# ----------------------------------------------------------------------------------- MAE


def test_mae_patchify_and_normalised_pixel_target(peer):
  inp, ref = peer
  images, p = jnp.asarray(inp["mae/images"]), int(inp["mae/patch"])
  close("mae_patchify", vit_lib.patchify(images, p), ref["mae/patches"])
  close("mae_norm_pix_target", mae.patch_targets(images, p, True), ref["mae/target"])


# ------------------------------------------------------------------------------- masking


def test_random_masking_counts(peer):
  """MAE's random masking keeps int(L·(1 − r)) patches; at the presets' grids and 75% sslx
  masks the same number (r·L is an integer there)."""
  inp, ref = peer
  ours = []
  for n, ratio in inp["mask/random_cases"]:
    mask = masking.random_masking(jax.random.PRNGKey(0), 2, int(n), float(ratio)).mask
    assert np.all(np.asarray(mask).sum(1) == np.asarray(mask).sum(1)[0])
    ours.append(int(np.asarray(mask).sum(1)[0]))
  close("random_mask_counts", ours, ref["mask/random_counts"], tol=0)


def neighbour_fraction(masks: np.ndarray) -> float:
  """Mean over masked patches of the fraction of their 4 neighbours (inside the grid) that are
  masked: ~the mask ratio for scattered patches, near 1 for compact blocks."""
  m = masks.astype(np.float64)
  pad = np.pad(m, ((0, 0), (1, 1), (1, 1)))
  ones = np.pad(np.ones_like(m), ((0, 0), (1, 1), (1, 1)))
  nb = pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:]
  cnt = ones[:, :-2, 1:-1] + ones[:, 2:, 1:-1] + ones[:, 1:-1, :-2] + ones[:, 1:-1, 2:]
  return float(np.sum(m * nb / cnt) / np.sum(m))


def test_block_masking_ratio_and_shape(peer):
  """BEiT's blockwise masking (lightly's random_block_mask_image is the same algorithm): blocks
  of >= 16 patches added until 40% of 14x14 is masked. The released code may stop short of the
  target; sslx completes it exactly (static shapes), so its ratio is the target and lightly's
  is at most 2 points under it; both are equally compact blocks."""
  inp, ref = peer
  h, target = int(inp["mask/grid"]), int(inp["mask/block_target"])
  theirs = ref["mask/blocks"]
  ours = np.asarray(
    masking.blockwise_masking(jax.random.PRNGKey(0), theirs.shape[0], (h, h), target / h**2)
  ).reshape(-1, h, h)
  assert np.all(ours.sum((1, 2)) == target)
  their_ratio = theirs.sum((1, 2)).mean() / h**2
  assert target / h**2 - 0.02 <= their_ratio <= target / h**2
  LARGEST["block_mask_ratio (statistical)"] = abs(target / h**2 - their_ratio)
  assert abs(neighbour_fraction(ours) - neighbour_fraction(theirs)) < 0.05


def test_dinov2_masks_per_image_probability_and_ratio(peer):
  """DINOv2 masks half the global crops, each with a ratio spread over U(0.1, 0.5). lightly
  (as DINOv2's collate) masks exactly int(B/2) crops with ratios stratified over the range,
  as blocks; sslx masks each crop with probability 0.5 at a uniform ratio, at random
  positions (a documented simplification): the fractions agree in distribution."""
  inp, ref = peer
  theirs = ref["mask/dinov2"].reshape(ref["mask/dinov2"].shape[0], -1)
  n = theirs.shape[1]
  ours = np.asarray(dinov2.random_token_masks(jax.random.PRNGKey(0), 4096, n, 0.5, (0.1, 0.5)))
  our_on, their_on = ours.any(1), theirs.any(1)
  assert their_on.mean() == pytest.approx(0.5, abs=1e-9)
  assert our_on.mean() == pytest.approx(0.5, abs=0.03)
  our_ratio = ours[our_on].mean(1).mean()
  their_ratio = theirs[their_on].mean(1).mean()
  LARGEST["dinov2_mask_ratio (statistical)"] = abs(our_ratio - their_ratio)
  assert abs(our_ratio - their_ratio) < 0.03


# ----------------------------------------------------------------------------------- ViT


def test_drop_path_rates_and_per_sample_scaling(peer):
  """Stochastic depth as timm: block i drops with rate·i/(depth − 1) and a dropped residual
  is zeroed per sample while kept ones are scaled by 1/(1 − p)."""
  inp, ref = peer
  depth, rate = int(inp["vit/depth"]), float(inp["vit/drop_path_rate"])
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, vit_lib.Block) and context.method_name == "__call__":
      rates.append(context.module.drop_path)
    return next_fun(*args, **kwargs)

  model = vit_lib.ViT(patch_size=8, dim=16, depth=depth, num_heads=2, drop_path_rate=rate)
  x = jnp.zeros((1, 32, 32, 3))
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, x, train=False))
  close("drop_path_rates", rates, ref["vit/block_rates"])
  p = float(inp["vit/drop_prob"])
  ones = jnp.ones((int(inp["vit/drop_rows"]), 3, 2))
  block = vit_lib.Block(dim=2, num_heads=1, mlp_dim=2, drop_path=p)
  ours = np.asarray(
    block.apply(
      {}, ones, True, method=vit_lib.Block._drop_path, rngs={"dropout": jax.random.PRNGKey(0)}
    )
  )
  theirs = ref["vit/drop_path"]
  for out in (ours, theirs):  # one value per sample: 0 or 1/(1 − p)
    per_sample = out.reshape(out.shape[0], -1)
    assert np.all(per_sample == per_sample[:, :1])
    np.testing.assert_allclose(np.unique(per_sample), [0.0, 1.0 / (1.0 - p)], rtol=1e-6)
  kept = lambda out: float(np.mean(out[:, 0, 0] > 0))  # noqa: E731
  assert abs(kept(ours) - kept(theirs)) < 0.02  # both ~0.75 over 20,000 samples


def resampled_pos_embed(pos: np.ndarray, size: int) -> np.ndarray:
  """The ViT's position embedding for a `size`x`size` grid, read through the public forward: a
  depth-0 ViT with a zero patch embedding outputs LayerNorm(pos) at the patch tokens."""
  g0, dim = int(round(np.sqrt(pos.shape[1]))), pos.shape[-1]
  model = vit_lib.ViT(patch_size=4, dim=dim, depth=0, num_heads=1)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4 * g0, 4 * g0, 3)), train=False)
  )
  params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes["params"])
  params = dict(
    params, pos_embed=jnp.asarray(pos), norm={"scale": jnp.ones(dim), "bias": jnp.zeros(dim)}
  )
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)["patch_tokens"])
  return np.asarray(apply(params, jnp.zeros((1, 4 * size, 4 * size, 3))))


def layer_norm(x, eps=1e-6):
  x = np.asarray(x, np.float64)
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


@pytest.mark.parametrize("which", ["small", "large"])
def test_position_embedding_resampling_matches_timm_bicubic(peer, which):
  """A 7x7 embedding resampled to 3x3 (local crops: downsampling) and 10x10 (upsampling) as
  DINO's interpolate_pos_encoding: bicubic, no antialias."""
  inp, ref = peer
  ours = resampled_pos_embed(inp["vit/pos"], int(inp[f"vit/grid_{which}"]))
  close(f"pos_embed_{which}", ours, layer_norm(ref[f"vit/pos_{which}"]), tol=1e-4)
