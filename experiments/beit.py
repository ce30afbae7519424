r"""BEiT (Bao et al. 2022) stage-two experiment presets (train the tokenizer first).

  cpu (default): a tiny ViT (dim 96, depth 4, 3 heads, patch 4, mean-pooled features) on the
      embedded 10k-image CIFAR-10 subset; blockwise masking of 40% of the 64 patches (exactly
      26), predicting the 256-code VQ-VAE tokens of experiments/beit_tokenizer.py:
        python -m sslx.main --config=experiments/beit_tokenizer.py --workdir=/tmp/beit-tok
        python -m sslx.main --config=experiments/beit.py --workdir=/tmp/beit-cpu \
          --config.method.tokenizer_workdir=/tmp/beit-tok
      Prints k-NN@20/200 and linear-probe accuracy for the pretrained encoder, the untrained
      one and raw pixels. Like MAE, BEiT's features are weak on linear probe (paper Table 4:
      56.7% for ViT-B at ImageNet); its point is fine-tuning.
  cifar10: ViT-S/4 on 32 px, 40% blockwise masking (min block 4 patches on the 8 × 8 grid),
      batch 512, AdamW lr 5e-4·B/256, β2 0.999, weight decay 0.05,
      10 warm-up epochs, 800 epochs, tokenizer from experiments/beit_tokenizer.py:cifar10.
  imagenet: ViT-B/16, 75 of 196 patches masked blockwise (min block 16), batch 2048, AdamW lr
      1.5e-3, β2 0.999, weight decay 0.05, 10 warm-up epochs, 800 epochs, drop path 0.1
      (paper App. F / Table 9: 83.2% fine-tuned top-1 with the DALL-E tokenizer).

Flags: presets take extra words, e.g. `experiments/beit.py:cpu,steps=50`. Any key can be
overridden with --config.<key>=value; an unknown key fails at once.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(name="beit", tokenizer_workdir="/tmp/beit-tok", mask_ratio=0.4, min_block=8)
  )
  c.model = ml_collections.ConfigDict(
    dict(name="vit_tiny", patch_size=4, dim=96, depth=4, num_heads=3, pool="mean")
  )
  # BEiT uses random-resized-crop and flip, plus mild colour jitter.
  c.augment = ml_collections.ConfigDict(
    dict(
      crop_size=32,
      crop_scale=(0.2, 1.0),
      brightness=0.4,
      contrast=0.4,
      saturation=0.4,
      hue=0.0,
      jitter_prob=0.8,
      grayscale_prob=0.0,
      blur_prob=0.0,
      flip_prob=0.5,
      solarize_prob=0.0,
    )
  )
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",
      base_lr=1e-3,
      lr_scaling="none",
      b1=0.9,
      b2=0.999,
      weight_decay=0.05,
      warmup_epochs=0.5,
      final_lr_fraction=0.0,
    )
  )
  c.batch_size = 128
  c.num_epochs = 4.0

  if preset == "cpu":
    pass
  elif preset == "cifar10":
    c.model = ml_collections.ConfigDict(
      dict(name="vit_small", patch_size=4, pool="mean", drop_path_rate=0.1)
    )
    c.dataset.name = "image_folder"
    c.method.min_block = 4
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=5e-4,
        lr_scaling="linear",
        b1=0.9,
        b2=0.999,
        weight_decay=0.05,
        warmup_epochs=10.0,
        final_lr_fraction=0.0,
      )
    )
    c.batch_size = 512
    c.num_epochs = 800.0
    c.checkpoint_every_steps = 2000
    c.log_every_steps = 100
    c.eval_baselines = False
  elif preset == "imagenet":
    c.model = ml_collections.ConfigDict(
      dict(name="vit_base", patch_size=16, pool="mean", drop_path_rate=0.1)
    )
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
    c.augment.crop_size = 224
    c.augment.crop_scale = (0.08, 1.0)
    c.method.min_block = 16
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=1.5e-3,
        lr_scaling="none",
        b1=0.9,
        b2=0.999,
        weight_decay=0.05,
        warmup_epochs=10.0,
        final_lr_fraction=0.0,
      )
    )
    c.batch_size = 2048
    c.num_epochs = 800.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    c.eval_baselines = False
    c.eval_train_limit = 100_000
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/beit.py; valid: cpu, cifar10, imagenet"
    )
  if preset in ("cifar10", "imagenet"):
    # bf16 matmuls/convolutions (encoder and heads); parameters, normalisation statistics,
    # softmax and losses stay float32 (sslx/models/precision.py)
    c.model.dtype = "bfloat16"
  return config_lib.with_duration(c, opts)
