r"""DINOv2-style (Oquab et al. 2023: DINO + iBOT + KoLeo) experiment presets.

  cpu (default): the tiny ViT of the DINO cpu preset (dim 96, depth 4, 3 heads, patch 4) on
      the embedded 10k-image CIFAR-10 subset, 2 global 32 px + 4 local 16 px crops, K = 1024
      for both heads (shared), masking p = 0.5 with ratio U(0.1, 0.5), KoLeo 0.1, running
      centers; a 2-core CPU, a few minutes:
        python -m sslx.main --config=experiments/dinov2.py --workdir=/tmp/dinov2-cpu
      Prints k-NN@20/200 and linear-probe accuracy for the pretrained encoder, the untrained
      one and raw pixels; the pretrained k-NN beats random init (figures in BUILD_NOTES.md).
      Sinkhorn-Knopp centering: --config.method.centering=sinkhorn_knopp.
  cifar10: ViT-S/4 on 32 px, 2×32 + 8×16 crops, K = 4096, batch 512, AdamW 5e-4·B/256,
      200 epochs, τ_t 0.04 → 0.07 over 30%, teacher momentum 0.992 → 1, Sinkhorn-Knopp.
  imagenet: ViT-L/16 on ImageNet-1k, 2×224 + 8×96 crops, K = 65,536, separate iBOT head,
      Sinkhorn-Knopp, KoLeo 0.1, drop-path 0.3 (0.4 for g), momentum 0.992, 100 epochs — the
      paper's training hyper-parameters (§4, Appendix B). The paper's own figures are for
      LVD-142M pretraining, so none is quoted for ImageNet-1k.

Sizes: `variant=S|B|L|g` (and `patch=P`) picks ViT-S/B/L/g, e.g.
`experiments/dinov2.py:imagenet,variant=g,patch=14`. ViT-g (dim 1536, 40 blocks, 24 heads)
is built as `vit_huge` with those widths and a GELU MLP of ratio 4, which has the same
parameter count as the paper's SwiGLU FFN (3 × 1536 × 4096).

Flags: presets take extra words, e.g. `experiments/dinov2.py:cpu,steps=50`. Any key can be
overridden with --config.<key>=value; an unknown key fails at once.
"""

import ml_collections

from sslx import config_lib

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


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0, variant="", patch=0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="dinov2",
      out_dim=1024,
      patch_out_dim=1024,
      separate_ibot_head=False,
      hidden_dim=512,
      bottleneck_dim=128,
      head_layers=3,
      head_bn=False,
      norm_last_layer=True,
      freeze_last_layer_steps=0,
      student_temp=0.1,
      teacher_temp=0.04,
      warmup_teacher_temp=0.04,
      warmup_teacher_temp_fraction=0.0,
      center_momentum=0.9,
      base_momentum=0.99,
      centering="center",
      sinkhorn_iterations=3,
      dino_loss_weight=1.0,
      ibot_loss_weight=1.0,
      koleo_loss_weight=0.1,
      mask_probability=0.5,
      mask_ratio=(0.1, 0.5),
      collapse_std=0.05,
    )
  )
  # Patch 8 on 32 px (a 4x4 grid; 2x2 on the 16 px local crops): ~4x cheaper than patch 4,
  # so ~4x more steps fit a few CPU minutes, which is what the ViT needs to beat random init.
  c.model = ml_collections.ConfigDict(
    dict(name="vit_tiny", patch_size=8, dim=96, depth=4, num_heads=3)
  )
  c.augment = ml_collections.ConfigDict(
    dict(
      global_crop_size=32,
      global_crop_scale=(0.3, 1.0),
      global_blur_prob=(0.0, 0.0),
      global_solarize_prob=(0.0, 0.2),
      num_local_crops=4,
      local_crop_size=16,
      local_crop_scale=(0.05, 0.3),
      local_blur_prob=0.0,
      local_solarize_prob=0.0,
      brightness=0.4,
      contrast=0.4,
      saturation=0.2,
      hue=0.1,
      jitter_prob=0.8,
      grayscale_prob=0.2,
      flip_prob=0.5,
    )
  )
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",
      base_lr=5e-4,
      lr_scaling="none",
      weight_decay=0.04,
      warmup_epochs=0.2,
      final_lr_fraction=0.0,
      momentum=0.9,
      trust_coefficient=0.001,
    )
  )
  c.batch_size = 64
  c.num_epochs = 2.5

  if preset == "cpu":
    if opts.variant:
      c.model = _vit(opts.variant, opts.patch or 8)
  elif preset == "cifar10":
    c.model = _vit(opts.variant or "S", opts.patch or 4, drop_path_rate=0.1)
    c.dataset.name = "image_folder"
    c.method.out_dim = c.method.patch_out_dim = 4096
    c.method.hidden_dim = 2048
    c.method.bottleneck_dim = 256
    c.method.centering = "sinkhorn_knopp"
    c.method.teacher_temp = 0.07
    c.method.warmup_teacher_temp_fraction = 0.3
    c.method.base_momentum = 0.992
    c.method.freeze_last_layer_steps = 97
    c.augment.global_crop_scale = (0.32, 1.0)
    c.augment.num_local_crops = 8
    c.augment.local_crop_scale = (0.05, 0.32)
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=5e-4,
        lr_scaling="linear",
        weight_decay=0.04,
        warmup_epochs=10.0,
        final_lr_fraction=2e-3,
      )
    )
    c.batch_size = 512
    c.num_epochs = 200.0
    c.checkpoint_every_steps = 2000
    c.log_every_steps = 100
    c.eval_baselines = False
  elif preset == "imagenet":
    variant = opts.variant or "L"
    c.model = _vit(variant, opts.patch or 16, drop_path_rate=0.4 if variant == "g" else 0.3)
    c.dataset = ml_collections.ConfigDict(
      dict(
        name="tfds",
        tfds_name="imagenet2012",
        data_dir="",
        path="",
        train_split="train",
        eval_split="validation",
        image_size=224,
        num_workers=8,
        normalization="imagenet",
      )
    )
    patch = c.model.patch_size
    c.augment = ml_collections.ConfigDict(
      dict(
        global_crop_size=224,
        global_crop_scale=(0.32, 1.0),
        global_blur_prob=(1.0, 0.1),
        global_solarize_prob=(0.0, 0.2),
        num_local_crops=8,
        local_crop_size=98 if patch == 14 else 96,
        local_crop_scale=(0.05, 0.32),
        local_blur_prob=0.5,
        local_solarize_prob=0.0,
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        jitter_prob=0.8,
        grayscale_prob=0.2,
        flip_prob=0.5,
      )
    )
    c.method.out_dim = c.method.patch_out_dim = 65536
    c.method.separate_ibot_head = True
    c.method.hidden_dim = 2048
    c.method.bottleneck_dim = 256
    c.method.centering = "sinkhorn_knopp"
    c.method.teacher_temp = 0.07
    c.method.warmup_teacher_temp_fraction = 0.3
    c.method.base_momentum = 0.992
    c.method.freeze_last_layer_steps = 625  # one epoch at batch 2048
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=5e-4,
        lr_scaling="linear",
        weight_decay=0.04,
        warmup_epochs=10.0,
        final_lr_fraction=2e-3,
      )
    )
    c.batch_size = 2048
    c.num_epochs = 100.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    c.eval_baselines = False
    c.eval_train_limit = 100_000
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/dinov2.py; valid: cpu, cifar10, imagenet"
    )
  if preset in ("cifar10", "imagenet"):
    # bf16 matmuls/convolutions (encoder and heads); parameters, normalisation statistics,
    # softmax and losses stay float32 (sslx/models/precision.py)
    c.model.dtype = "bfloat16"
  return config_lib.with_duration(c, opts)
