r"""SimCLR (Chen et al. 2020) experiment presets.

  cpu (default): the demo. A 4-conv CNN on the embedded 10k-image CIFAR-10 subset, on a
      2-core CPU in under 10 minutes including compile and evaluation:
        python -m sslx.main --config=experiments/simclr.py --workdir=/tmp/sslx-demo
      Prints k-NN and linear-probe accuracy for the pretrained encoder, the untrained one
      and raw pixels (figures in BUILD_NOTES.md).
  cifar10: ResNet-18 (CIFAR stem), batch 512, LARS, 1000 epochs, τ=0.2 — the solo-learn
      recipe; ~92% k-NN / 91% linear reported there on the original CIFAR-10:
        python -m sslx.main --config=experiments/simclr.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...
  imagenet: ResNet-50, batch 4096, LARS lr 0.3·B/256, τ=0.1, 100 epochs (paper Table B.1).

Flags: presets take extra words, e.g. `experiments/simclr.py:cpu,steps=50`. Any key can be
overridden with --config.<key>=value; an unknown key fails at once.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="simclr",
      temperature=0.2,
      projector_hidden=(512,),
      projector_dim=128,
      projector_bn=True,
      grad_cache_chunk=0,
    )
  )
  c.model = ml_collections.ConfigDict(dict(name="convnet", widths=(32, 64, 128, 256)))
  # CIFAR recipe: no blur at 32x32; colour jitter strength s=0.5 (0.4/0.4/0.4/0.1).
  c.augment = ml_collections.ConfigDict(
    dict(
      crop_size=32,
      crop_scale=(0.2, 1.0),
      brightness=0.4,
      contrast=0.4,
      saturation=0.4,
      hue=0.1,
      jitter_prob=0.8,
      grayscale_prob=0.2,
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
      weight_decay=1e-4,
      warmup_epochs=1.0,
      final_lr_fraction=0.0,
      momentum=0.9,
      trust_coefficient=0.001,
    )
  )
  c.batch_size = 256
  c.num_epochs = 6.0

  if preset == "cpu":
    pass
  elif preset == "cifar10":
    c.model = ml_collections.ConfigDict(dict(name="resnet18", stem="cifar"))
    c.dataset.name = "image_folder"
    c.augment.crop_scale = (0.08, 1.0)
    c.method.temperature = 0.2
    c.method.projector_hidden = (2048,)
    c.method.projector_dim = 256
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="lars",
        base_lr=0.4,
        lr_scaling="linear",
        weight_decay=1e-5,
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
        crop_size=224,
        crop_scale=(0.08, 1.0),
        brightness=0.8,
        contrast=0.8,
        saturation=0.8,
        hue=0.2,
        jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=0.5,
        flip_prob=0.5,
        solarize_prob=0.0,
      )
    )
    c.method.temperature = 0.1
    c.method.projector_hidden = (2048,)
    c.method.projector_dim = 128
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="lars",
        base_lr=0.3,
        lr_scaling="linear",
        weight_decay=1e-6,
        momentum=0.9,
        trust_coefficient=0.001,
        warmup_epochs=10.0,
        final_lr_fraction=0.0,
      )
    )
    c.batch_size = 4096
    c.num_epochs = 100.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    c.eval_baselines = False
    c.eval_train_limit = 100_000
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/simclr.py; valid: cpu, cifar10, imagenet"
    )
  if preset in ("cifar10", "imagenet"):
    # bf16 matmuls/convolutions (encoder and heads); parameters, normalisation statistics,
    # softmax and losses stay float32 (sslx/models/precision.py)
    c.model.dtype = "bfloat16"
  return config_lib.with_duration(c, opts)
