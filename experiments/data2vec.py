r"""data2vec (Baevski et al. 2022) image experiment presets.

  cpu (default): a tiny ViT (dim 96, depth 4, 3 heads, patch 4, mean-pooled features) on the
      embedded 10k-image CIFAR-10 subset; blockwise masking of 60% of the 64 patches, targets
      the average of the teacher's top-2 (of 4) instance-normalised FFN outputs, EMA
      0.99 → 0.999 over the run; a 2-core CPU, a few minutes:
        python -m sslx.main --config=experiments/data2vec.py --workdir=/tmp/data2vec-cpu
      Prints k-NN@20/200 and linear-probe accuracy for the pretrained encoder, the untrained
      one and raw pixels (figures in the lead's BUILD_NOTES.md).
  cifar10: ViT-S/4 on 32 px, 60% blockwise masking, top-K = 6 of 12, instance-norm targets,
      smooth-L1 β 2, EMA 0.999 → 0.9999, batch 512, AdamW lr 1e-3·B/256, β2 0.999,
      weight decay 0.05, 40 warm-up epochs, 800 epochs (the ViT-B recipe scaled to CIFAR).
        python -m sslx.main --config=experiments/data2vec.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...
  imagenet: ViT-B/16, 60% blockwise masking, K = 6, τ 0.9998 → 0.9999, batch 2048, AdamW lr
      2e-3 (1e-3·B/1024), β2 0.999, weight decay 0.05, 40 warm-up epochs, 800 epochs (paper §4.1
      "Computer vision" / App.: 84.2% fine-tuned top-1 for ViT-B).

Flags: presets take extra words, e.g. `experiments/data2vec.py:cpu,steps=50`. Any key can be
overridden with --config.<key>=value; an unknown key fails at once.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="data2vec",
      mask_ratio=0.6,
      top_k=2,
      target_norm="instance",
      loss_beta=2.0,
      ema_decay=0.99,
      ema_end_decay=0.999,
      ema_anneal_steps=0,
    )
  )
  c.model = ml_collections.ConfigDict(
    dict(name="vit_tiny", patch_size=4, dim=96, depth=4, num_heads=3, pool="mean")
  )
  # data2vec (like BEiT) uses random-resized-crop and flip, plus mild colour jitter.
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
    c.method.top_k = 6
    c.method.ema_decay = 0.999
    c.method.ema_end_decay = 0.9999
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=1e-3,
        lr_scaling="linear",
        b1=0.9,
        b2=0.999,
        weight_decay=0.05,
        warmup_epochs=40.0,
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
    c.method.top_k = 6
    c.method.ema_decay = 0.9998
    c.method.ema_end_decay = 0.9999
    c.method.ema_anneal_steps = 100_000
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=1e-3,
        lr_scaling="none",
        b1=0.9,
        b2=0.999,
        weight_decay=0.05,
        warmup_epochs=40.0,
        final_lr_fraction=0.0,
      )
    )
    c.optimizer.base_lr = 2e-3
    c.batch_size = 2048
    c.num_epochs = 800.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    c.eval_baselines = False
    c.eval_train_limit = 100_000
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/data2vec.py; valid: cpu, cifar10, imagenet"
    )
  if preset in ("cifar10", "imagenet"):
    # bf16 matmuls/convolutions (encoder and heads); parameters, normalisation statistics,
    # softmax and losses stay float32 (sslx/models/precision.py)
    c.model.dtype = "bfloat16"
  return config_lib.with_duration(c, opts)
