r"""BEiT stage one: the VQ-VAE image tokenizer (sslx/methods/beit_tokenizer.py).

BEiT (Bao et al. 2022) uses the DALL-E dVAE (8192 codes, trained on 250M images); its weights
cannot be downloaded here, so this trains a small VQ-VAE with one code per ViT patch. Train it
first, then point BEiT at its workdir:

  cpu (default): 32 px, patch 4 → an 8 × 8 code grid, 256 codes of dim 16, widths 64, on
      the embedded 10k-image CIFAR-10 subset; a couple of minutes on a 2-core CPU:
        python -m sslx.main --config=experiments/beit_tokenizer.py --workdir=/tmp/beit-tok
        python -m sslx.main --config=experiments/beit.py --workdir=/tmp/beit-cpu \
          --config.method.tokenizer_workdir=/tmp/beit-tok
      Expect reconstruction MSE (normalised pixels) to fall well below 1 and a codebook
      perplexity of tens of codes; k-NN on pooled z_e is printed but is not the point.
  cifar10: the same VQ-VAE wider (128 channels), 1024 codes, 50 epochs (a tokenizer only has
      to capture local patch structure; BEiT §2.1 / Table 6 show tokenizer quality matters
      less than the masked-prediction stage).
  imagenet: patch 16, 8192 codes (DALL-E's vocabulary size), 224 px,
      batch 512, 20 epochs.

`model` is unused by the tokenizer (its architecture is in `method`); it only names the run.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="beit_tokenizer",
      patch_size=4,
      codebook_size=256,
      code_dim=16,
      hidden=64,
      beta=0.25,
      ema_decay=0.99,
      dead_threshold=0.03,
    )
  )
  c.model = ml_collections.ConfigDict(dict(name="convnet"))
  c.augment = ml_collections.ConfigDict(
    dict(
      crop_size=32,
      crop_scale=(0.5, 1.0),
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
      base_lr=2e-3,
      lr_scaling="none",
      b1=0.9,
      b2=0.99,
      weight_decay=0.0,
      warmup_epochs=0.1,
      final_lr_fraction=0.1,
    )
  )
  c.batch_size = 64
  c.num_epochs = 1.0
  c.checkpoint_every_steps = 0
  c.keep_checkpoints = 1
  c.online_probe = ml_collections.ConfigDict(dict(enabled=False, lr=1e-3))
  c.evals = ml_collections.ConfigDict(dict(knn=dict(ks=(20,), temperature=0.07)))
  c.eval_baselines = False
  c.eval_train_limit = 2000

  if preset == "cpu":
    pass
  elif preset == "cifar10":
    c.dataset.name = "image_folder"
    c.method.hidden = 128
    c.method.codebook_size = 1024
    c.batch_size = 256
    c.num_epochs = 50.0
    c.optimizer.warmup_epochs = 1.0
    c.checkpoint_every_steps = 2000
    c.log_every_steps = 100
  elif preset == "imagenet":
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
    c.method.patch_size = 16
    c.method.hidden = 256
    c.method.codebook_size = 8192
    c.batch_size = 512
    c.num_epochs = 20.0
    c.optimizer.warmup_epochs = 1.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    c.eval_train_limit = 20_000
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/beit_tokenizer.py; valid: cpu, cifar10, imagenet"
    )
  return config_lib.with_duration(c, opts)
