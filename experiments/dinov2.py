r"""DINOv2-style (Oquab et al. 2023: DINO + iBOT + KoLeo) experiment presets.

  cpu (default): DINO's demo (the 4-conv CNN, 2 global 32 px + 4 local 16 px crops, a head
      with BatchNorm, teacher momentum 0.98, AdamW 2e-3, 8 epochs) with DINOv2's three
      terms on the embedded 10k-image CIFAR-10 subset: K = 1024 for both heads (shared), iBOT
      on the CNN's last-block cells (a 4x4 grid of 8 px cells; masking p = 0.5 with ratio
      U(0.1, 0.5), masked cells painted with a learned colour), KoLeo 0.1, running centers:
        python -m sslx.main --config=experiments/dinov2.py --workdir=/tmp/dinov2-cpu
      Prints k-NN@20/200 and linear-probe accuracy for the teacher, the untrained encoder and
      raw pixels (first-run figures in docs/results.md).
      Sinkhorn-Knopp centering: --config.method.centering=sinkhorn_knopp.
  vit: the tiny ViT of DINO's vit preset (dim 96, depth 4, 3 heads, patch 8), DINO's ViT
      head, teacher momentum 0.99, AdamW 5e-4, 5 epochs, and the teacher's attention maps of
      test images at the end (attention.png). In 10 CPU minutes a ViT this small stays below
      raw pixels on k-NN, so it is not the default.
  cifar10: ViT-S/4 on 32 px, 2×32 + 8×16 crops, K = 4096, batch 512, AdamW 5e-4·B/256,
      weight decay cosine 0.04 → 0.4, gradient clipping at global norm 3, 200 epochs, τ_t 0.04 → 0.07 over 30%, teacher momentum 0.992 → 1, Sinkhorn-Knopp.
  imagenet: ViT-L/16 on ImageNet-1k, 2×224 + 8×96 crops, K = 65,536, separate iBOT head,
      Sinkhorn-Knopp, KoLeo 0.1, drop-path 0.3 (0.4 for g), momentum 0.992, weight decay
      cosine 0.04 → 0.4, gradient clipping 3.0, 100 epochs — the paper's training
      hyper-parameters (§4, Appendix B). Every preset evaluates the teacher
      (`method.eval_encoder="teacher"`, as the paper). The paper's own figures are for
      LVD-142M pretraining, so none is quoted for ImageNet-1k.

Sizes: `variant=S|B|L|g` (and `patch=P`) picks ViT-S/B/L/g, e.g.
`experiments/dinov2.py:imagenet,variant=g,patch=14`. ViT-g (dim 1536, 40 blocks, 24 heads)
is built as `vit_huge` with those widths and a GELU MLP of ratio 4, which has the same
parameter count as the paper's SwiGLU FFN (3 × 1536 × 4096).
"""

import ml_collections

from sslx import config_lib as cl

dino = cl.sibling(__file__, "dino")

# variant -> (registered model, overrides)
VARIANTS = {
  "S": ("vit_small", {}),
  "B": ("vit_base", {}),
  "L": ("vit_large", {}),
  "g": ("vit_huge", dict(dim=1536, depth=40, num_heads=24, mlp_ratio=4.0)),
}


def _vit(variant: str, patch: int, **extra) -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r}; valid: {sorted(VARIANTS)}")
  name, overrides = VARIANTS[variant]
  return ml_collections.ConfigDict(dict(name=name, patch_size=patch, **overrides, **extra))


def cpu(opts) -> ml_collections.ConfigDict:
  c = dino.cpu(opts)  # DINO's demo: the CNN, multi-crop views, optimizer and length
  c.method = cl.method(
    "dinov2",
    out_dim=1024,
    patch_out_dim=1024,
    hidden_dim=512,
    bottleneck_dim=128,
    teacher_temp=0.04,
    # As DINO's CNN demo: BatchNorm in the head keeps the CNN's teacher from drifting to
    # uniform outputs, and a teacher of a few epochs follows the student at 0.98.
    head_bn=True,
    base_momentum=0.98,
  )
  if opts.variant:
    vit(c, opts)
  return c


cpu.OPTS = dict(variant="", patch=0)


def vit(c, opts):
  """The tiny ViT of DINO's vit preset (dim 96, depth 4, 3 heads, patch 8; or `variant=`),
  with DINO's ViT head, teacher momentum 0.99 and AdamW 5e-4, 5 epochs: attention maps."""
  c.model = cl.model("vit_tiny", patch_size=8, dim=96, depth=4, num_heads=3)
  if opts.variant:
    c.model = _vit(opts.variant, opts.patch or 8)
  c.method.update(head_bn=False, base_momentum=0.99)
  c.optimizer.base_lr = 5e-4
  c.num_epochs = 5.0


def _paper_recipe(c, out_dim: int):
  """DINOv2's head sizes, Sinkhorn-Knopp centering, τ_t warm-up 0.04 → 0.07 over the first
  30%, teacher momentum 0.992 → 1, AdamW 5e-4·B/256 with 10 warm-up epochs."""
  c.method.update(
    out_dim=out_dim,
    patch_out_dim=out_dim,
    hidden_dim=2048,
    bottleneck_dim=256,
    head_bn=False,
    centering="sinkhorn_knopp",
    teacher_temp=0.07,
    warmup_teacher_temp_fraction=0.3,
    base_momentum=0.992,
  )
  c.optimizer = dino.paper_optimizer()


def cifar10(c, opts):
  c.model = _vit(opts.variant or "S", opts.patch or 4, drop_path_rate=0.1)
  _paper_recipe(c, out_dim=4096)
  c.method.freeze_last_layer_steps = 97
  c.augment.update(global_crop_scale=(0.32, 1.0), num_local_crops=8, local_crop_scale=(0.05, 0.32))
  cl.cifar10_run(c, batch_size=512, epochs=200)


def imagenet(c, opts):
  variant = opts.variant or "L"
  c.model = _vit(variant, opts.patch or 16, drop_path_rate=0.4 if variant == "g" else 0.3)
  c.augment = cl.multi_crop(
    224,
    (0.32, 1.0),
    num_local=8,
    local_size=98 if c.model.patch_size == 14 else 96,
    local_scale=(0.05, 0.32),
    global_blur=(1.0, 0.1),
    local_blur=0.5,
  )
  _paper_recipe(c, out_dim=65536)
  c.method.separate_ibot_head = True
  c.method.freeze_last_layer_steps = 625  # one epoch at batch 2048
  cl.imagenet_run(c, batch_size=2048, epochs=100)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, vit=vit, cifar10=cifar10, imagenet=imagenet)
