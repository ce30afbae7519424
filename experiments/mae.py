r"""MAE (He et al. 2022) experiment presets.

  cpu (default): a tiny ViT (dim 96, depth 4, 3 heads, patch 4, mean-pooled features) on the
      embedded 10k-image CIFAR-10 subset, 75% masking (the encoder sees 16 of 64 patches + CLS),
      decoder 2 × 64; a 2-core CPU, a few minutes:
        python -m sslx.main --config=experiments/mae.py --workdir=/tmp/mae-cpu
        python -m sslx.visualizers.reconstruction --config=experiments/mae.py \
          --workdir=/tmp/mae-cpu --out=recon.png
      Prints k-NN@20/200 and linear-probe accuracy for the pretrained encoder, the untrained one
      and raw pixels. Expect MAE to be *weak on linear probe / k-NN* (paper §5: MAE features are
      less linearly separable; its strength shows after fine-tuning), more so after minutes.
  cifar10: ViT-S/4 (dim 384, depth 12, 6 heads) on 32 px, decoder 4 × 256 (8 heads), 75%
      masking, norm-pix loss, batch 512, AdamW lr 1.5e-4·B/256, β2 0.95, weight decay 0.05,
      40 warm-up epochs, 800 epochs (the paper's recipe, scaled to CIFAR as e.g. the MAE CIFAR
      reproductions do; ~90%+ fine-tuned top-1 is the usual figure for ViT-S/4):
        python -m sslx.main --config=experiments/mae.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...
  imagenet: ViT-B/16, decoder 8 × 512 (16 heads), 75% masking, norm-pix loss, batch 4096, AdamW
      lr 1.5e-4·B/256, β1 0.9 β2 0.95, weight decay 0.05, 40 warm-up epochs, 800 epochs, crop
      scale 0.2–1 + flip only (paper Table 8 / App. A.1: 83.6% fine-tuned, 68.0% linear).

Flags: presets take extra words, e.g. `experiments/mae.py:cpu,steps=50`. Any key can be
overridden with --config.<key>=value; an unknown key fails at once.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="mae",
      mask_ratio=0.75,
      decoder_dim=64,
      decoder_depth=2,
      decoder_heads=4,
      norm_pix_loss=True,
    )
  )
  c.model = ml_collections.ConfigDict(
    dict(name="vit_tiny", patch_size=4, dim=96, depth=4, num_heads=3, pool="mean")
  )
  # MAE augments with random-resized-crop and flip only (App. A.1).
  c.augment = ml_collections.ConfigDict(
    dict(
      crop_size=32,
      crop_scale=(0.2, 1.0),
      brightness=0.0,
      contrast=0.0,
      saturation=0.0,
      hue=0.0,
      jitter_prob=0.0,
      grayscale_prob=0.0,
      blur_prob=0.0,
      flip_prob=0.5,
      solarize_prob=0.0,
    )
  )
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",
      base_lr=1.5e-3,
      lr_scaling="none",
      b1=0.9,
      b2=0.95,
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
    c.model = ml_collections.ConfigDict(dict(name="vit_small", patch_size=4, pool="mean"))
    c.dataset.name = "image_folder"
    c.method.decoder_dim = 256
    c.method.decoder_depth = 4
    c.method.decoder_heads = 8
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=1.5e-4,
        lr_scaling="linear",
        b1=0.9,
        b2=0.95,
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
    # remat "dots" (encoder and decoder): keeps the token-wise matmul outputs and recomputes
    # attention probabilities, norms and GELUs; at batch 4096 the decoder's [B, 16, 197, 197]
    # attention maps are most of the step's memory (memory plan in BUILD_NOTES.md).
    c.model = ml_collections.ConfigDict(
      dict(name="vit_base", patch_size=16, pool="cls", remat="dots")
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
    c.method.decoder_dim = 512
    c.method.decoder_depth = 8
    c.method.decoder_heads = 16
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=1.5e-4,
        lr_scaling="linear",
        b1=0.9,
        b2=0.95,
        weight_decay=0.05,
        warmup_epochs=40.0,
        final_lr_fraction=0.0,
      )
    )
    c.batch_size = 4096
    c.num_epochs = 800.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    c.eval_baselines = False
    c.eval_train_limit = 100_000
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/mae.py; valid: cpu, cifar10, imagenet"
    )
  if preset in ("cifar10", "imagenet"):
    # bf16 matmuls/convolutions (encoder and heads); parameters, normalisation statistics,
    # softmax and losses stay float32 (sslx/models/precision.py)
    c.model.dtype = "bfloat16"
  return config_lib.with_duration(c, opts)
