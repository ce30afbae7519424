r"""VICReg (Bardes, Ponce & LeCun 2022) experiment presets.

  cpu (default): the 4-conv CNN of the SimCLR demo (widths 32-64-128-256) with a 3-layer
      expander 512-512-512 on the embedded 10k-image CIFAR-10 subset, batch 64, AdamW 2e-3,
      3 epochs (468 steps):
        python -m sslx.main --config=experiments/vicreg.py --workdir=/tmp/vicreg-cpu
      Prints k-NN@20/200 and linear-probe accuracy for the pretrained encoder, the untrained
      one and raw pixels. Measured with --config.total_steps=400 (7m46s in all on a shared
      2-core CPU, 148 img/s): k-NN@20/200 45.3/42.7 vs 41.2/37.3 at random init, linear
      50.7 vs 46.7.
  cifar10: ResNet-18 (CIFAR stem), expander 2048-2048-2048, λ = μ = 25, ν = 1, LARS lr 0.3
      (× B/256), weight decay 1e-4, batch 512, 1000 epochs, solarize p 0.1 on both views, no
      blur — the solo-learn CIFAR recipe (~92% linear reported there after 1000 epochs):
        python -m sslx.main --config=experiments/vicreg.py:cifar10 \
          --config.dataset.path=/data/cifar10 --workdir=...
  imagenet: ResNet-50, expander 8192-8192-8192, batch 2048, LARS base lr 0.2 (× B/256),
      weight decay 1e-6, 1000 epochs, BYOL augmentations (paper §4.1 and Appendix C:
      73.2% linear).

Flags: presets take extra words, e.g. `experiments/vicreg.py:cpu,steps=50`. Any key can be
overridden with --config.<key>=value; an unknown key fails at once.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="vicreg",
      expander_hidden=(512, 512),
      expander_dim=512,
      sim_coeff=25.0,
      std_coeff=25.0,
      cov_coeff=1.0,
      gamma=1.0,
      eps=1e-4,
      collapse_std=0.05,
    )
  )
  c.model = ml_collections.ConfigDict(dict(name="convnet", widths=(32, 64, 128, 256)))
  # Two views, BYOL-style asymmetric solarization; no blur at 32x32.
  c.augment = ml_collections.ConfigDict(
    dict(
      global_crop_size=32,
      global_crop_scale=(0.2, 1.0),
      global_blur_prob=(0.0, 0.0),
      global_solarize_prob=(0.0, 0.2),
      num_local_crops=0,
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
      base_lr=2e-3,
      lr_scaling="none",
      weight_decay=1e-4,
      warmup_epochs=0.2,
      final_lr_fraction=0.0,
      momentum=0.9,
      trust_coefficient=0.001,
    )
  )
  # Batch 64: on a 2-core CPU more (smaller) steps learn faster per minute than batch 256.
  c.batch_size = 64
  c.num_epochs = 3.0

  if preset == "cpu":
    pass
  elif preset == "cifar10":
    c.model = ml_collections.ConfigDict(dict(name="resnet18", stem="cifar"))
    c.dataset.name = "image_folder"
    c.augment.global_crop_scale = (0.08, 1.0)
    c.augment.global_solarize_prob = (0.1, 0.1)
    c.method.expander_hidden = (2048, 2048)
    c.method.expander_dim = 2048
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="lars",
        base_lr=0.3,
        lr_scaling="linear",
        weight_decay=1e-4,
        momentum=0.9,
        trust_coefficient=0.02,
        warmup_epochs=10.0,
        final_lr_fraction=0.0,
      )
    )
    c.batch_size = 512
    c.num_epochs = 1000.0
    c.checkpoint_every_steps = 2000
    c.log_every_steps = 100
    c.eval_baselines = False
  elif preset == "imagenet":
    c.model = ml_collections.ConfigDict(dict(name="resnet50", stem="imagenet"))
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
    c.augment = ml_collections.ConfigDict(
      dict(
        global_crop_size=224,
        global_crop_scale=(0.08, 1.0),
        global_blur_prob=(1.0, 0.1),
        global_solarize_prob=(0.0, 0.2),
        num_local_crops=0,
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        jitter_prob=0.8,
        grayscale_prob=0.2,
        flip_prob=0.5,
      )
    )
    c.method.expander_hidden = (8192, 8192)
    c.method.expander_dim = 8192
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="lars",
        base_lr=0.2,
        lr_scaling="linear",
        weight_decay=1e-6,
        momentum=0.9,
        trust_coefficient=0.001,
        warmup_epochs=10.0,
        final_lr_fraction=0.0,
      )
    )
    c.batch_size = 2048
    c.num_epochs = 1000.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    c.eval_baselines = False
    c.eval_train_limit = 100_000
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/vicreg.py; valid: cpu, cifar10, imagenet"
    )
  if preset in ("cifar10", "imagenet"):
    # bf16 matmuls/convolutions (encoder and heads); parameters, normalisation statistics,
    # softmax and losses stay float32 (sslx/models/precision.py)
    c.model.dtype = "bfloat16"
  return config_lib.with_duration(c, opts)
