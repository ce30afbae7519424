"""Reference values from the PyTorch peer libraries (lightly 1.5.13, timm 0.9.16) for
tests/test_parity.py.

Runs in the peer environment (`shared/bench/peer_env.sh`), never with sslx's python:

    PEER_PYTHON tests/parity_peer.py INPUTS.npz OUTPUTS.npz

Every input array comes from INPUTS.npz (drawn by the test with numpy), every reference value
goes to OUTPUTS.npz under the same key prefix, so one torch start serves all parity tests.
"""

from __future__ import annotations

import random
import sys
import warnings

import numpy as np

MISSING = 3  # exit status when the peer libraries cannot be imported (the tests skip)

try:
  import torch
  from lightly.loss import (
    DINOLoss,
    KoLeoLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    VICRegLoss,
  )
  from lightly.loss.ibot_loss import IBOTPatchLoss
  from lightly.loss.swav_loss import sinkhorn
  from lightly.models import utils as lightly_utils
  from lightly.utils.scheduler import cosine_schedule
  from timm.layers import drop_path, resample_abs_pos_embed
  from timm.models.vision_transformer import VisionTransformer
except ImportError as e:  # a broken or partial peer environment: say what is missing
  print(f"peer libraries missing: {e}", file=sys.stderr)
  sys.exit(MISSING)

torch.set_default_dtype(torch.float64)  # references in float64; the tests compare float32


def t(a):
  return torch.from_numpy(np.asarray(a, np.float64))


def ntxent(inp, out):
  out["ntxent/loss"] = NTXentLoss(temperature=float(inp["ntxent/temp"]))(
    t(inp["ntxent/z0"]), t(inp["ntxent/z1"])
  ).item()


def memory_bank(inp, out):
  """MoCo: NTXentLoss with a memory bank seeded with our queue; two steps (the first step's
  keys are enqueued before the second)."""
  q, k, bank = inp["bank/q"], inp["bank/k"], inp["bank/queue"]
  loss = NTXentLoss(temperature=float(inp["bank/temp"]), memory_bank_size=bank.shape)
  loss.bank = t(bank)
  loss.bank_ptr.zero_()
  for step in range(q.shape[0]):
    out[f"bank/loss{step}"] = loss(t(q[step]).requires_grad_(), t(k[step])).item()
  out["bank/queue_after"] = loss.bank.numpy()


def negative_cosine(inp, out):
  out["byol/neg_cos"] = NegativeCosineSimilarity()(t(inp["byol/p"]), t(inp["byol/z"])).item()


def dino(inp, out):
  """DINOLoss over `epochs` calls (one per epoch: the teacher-temperature warm-up and the
  center move), teacher [E, G, B, K], student [E, V, B, K]."""
  teacher, student = inp["dino/teacher"], inp["dino/student"]
  cfg = inp["dino/cfg"]  # K, warm τ, τ, warm-up epochs, τ_s, center momentum
  loss = DINOLoss(
    output_dim=int(cfg[0]),
    warmup_teacher_temp=float(cfg[1]),
    teacher_temp=float(cfg[2]),
    warmup_teacher_temp_epochs=int(cfg[3]),
    student_temp=float(cfg[4]),
    center_momentum=float(cfg[5]),
  )
  losses, centers, temps = [], [], []
  for e in range(teacher.shape[0]):
    temps.append(
      float(loss.teacher_temp_schedule[e])
      if e < loss.warmup_teacher_temp_epochs
      else loss.teacher_temp
    )
    losses.append(loss(list(t(teacher[e])), list(t(student[e])), epoch=e).item())
    centers.append(loss.center.reshape(-1).numpy().copy())
  out["dino/loss"], out["dino/center"] = np.array(losses), np.stack(centers)
  out["dino/temp"] = np.array(temps)


def ibot(inp, out):
  """IBOTPatchLoss on the masked positions: teacher/student [S, M, P, K], mask [S, M, h, w]."""
  teacher, student, mask = inp["ibot/teacher"], inp["ibot/student"], inp["ibot/mask"].astype(bool)
  cfg = inp["ibot/cfg"]  # K, τ_t, τ_s, center momentum
  loss = IBOTPatchLoss(
    output_dim=int(cfg[0]),
    teacher_temp=float(cfg[1]),
    student_temp=float(cfg[2]),
    center_momentum=float(cfg[3]),
  )
  losses, centers = [], []
  for s in range(teacher.shape[0]):
    flat = torch.from_numpy(mask[s].reshape(mask.shape[1], -1))
    m = torch.from_numpy(mask[s])
    losses.append(loss(t(teacher[s])[flat], t(student[s])[flat], m).item())
    centers.append(loss.center.value.reshape(-1).numpy().copy())
  out["ibot/loss"], out["ibot/center"] = np.array(losses), np.stack(centers)


def koleo(inp, out):
  out["koleo/loss"] = KoLeoLoss()(t(inp["koleo/x"])).item()


def sinkhorn_knopp(inp, out):
  out["sinkhorn/q"] = sinkhorn(
    t(inp["sinkhorn/logits"]), iterations=3, epsilon=float(inp["sinkhorn/temp"])
  ).numpy()


def vicreg(inp, out):
  out["vicreg/loss"] = VICRegLoss()(t(inp["vicreg/z0"]), t(inp["vicreg/z1"])).item()


def schedule(inp, out):
  steps, base = int(inp["schedule/steps"]), float(inp["schedule/base"])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out["schedule/lightly"] = np.array([cosine_schedule(k, steps, base, 1.0) for k in range(steps)])
    # The same formula over one more step: cos(π·k/K), the BYOL/DINO schedule.
    out["schedule/lightly_k_over_K"] = np.array(
      [cosine_schedule(k, steps + 1, base, 1.0) for k in range(steps)]
    )


def mae(inp, out):
  images = t(inp["mae/images"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
  patches = lightly_utils.patchify(images, int(inp["mae/patch"]))
  out["mae/patches"] = patches.numpy()
  out["mae/target"] = lightly_utils.normalize_mean_var(patches, dim=-1).numpy()


def masking(inp, out):
  """Mask counts: random_token_mask (MAE) for each (L, ratio); DINOv2's block masks
  (random_block_mask, the iBOT/DINOv2 collate) over many images; one image of BEiT-style
  blocks (random_block_mask_image) many times."""
  counts = []
  for n, ratio in inp["mask/random_cases"]:
    keep, masked = lightly_utils.random_token_mask((2, int(n) + 1), mask_ratio=float(ratio))
    counts.append(masked.shape[1])
  out["mask/random_counts"] = np.array(counts)
  torch.manual_seed(0)
  random.seed(0)
  h = int(inp["mask/grid"])
  b = int(inp["mask/batch"])
  dinov2 = lightly_utils.random_block_mask((b, h, h), batch_mask_ratio=0.5)
  out["mask/dinov2"] = dinov2.numpy()
  target = int(inp["mask/block_target"])
  blocks = [
    lightly_utils.random_block_mask_image((h, h), num_masks=target, min_num_masks_per_block=16)
    for _ in range(int(inp["mask/block_images"]))
  ]
  out["mask/blocks"] = torch.stack(blocks).numpy()


def vit(inp, out):
  """timm: per-block drop-path rates, drop_path's per-sample scaling, and position-embedding
  resampling (bicubic, no antialias: DINO's interpolate_pos_encoding)."""
  depth, rate = int(inp["vit/depth"]), float(inp["vit/drop_path_rate"])
  model = VisionTransformer(
    img_size=32, patch_size=8, embed_dim=16, depth=depth, num_heads=2, drop_path_rate=rate
  )
  out["vit/block_rates"] = np.array(
    [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks], np.float64
  )
  torch.manual_seed(0)
  x = torch.ones(int(inp["vit/drop_rows"]), 3, 2)
  out["vit/drop_path"] = drop_path(x, float(inp["vit/drop_prob"]), training=True).numpy()
  pos = t(inp["vit/pos"]).float()  # [1, g0·g0, D], no class token
  for name in ("small", "large"):
    size = int(inp[f"vit/grid_{name}"])
    out[f"vit/pos_{name}"] = resample_abs_pos_embed(
      pos, [size, size], num_prefix_tokens=0, interpolation="bicubic", antialias=False
    ).numpy()


PARTS = (
  ntxent,
  memory_bank,
  negative_cosine,
  dino,
  ibot,
  koleo,
  sinkhorn_knopp,
  vicreg,
  schedule,
  mae,
  masking,
  vit,
)


def main(argv):
  if len(argv) != 3:
    raise SystemExit("usage: parity_peer.py INPUTS.npz OUTPUTS.npz")
  inp = dict(np.load(argv[1]))
  out = {}
  for part in PARTS:
    part(inp, out)
  np.savez(argv[2], **{k: np.asarray(v) for k, v in out.items()})


if __name__ == "__main__":
  main(sys.argv)
