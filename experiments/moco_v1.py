r"""MoCo v1 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation
Learning") experiment presets. Method: sslx/methods/moco.py (`method.version="v1"`): no
projection head (a linear fc to 128 after the pooled features), τ = 0.07, and the paper's
weaker augmentation: random resized crop (scale 0.2-1), grayscale p=0.2, colour jitter 0.4
(brightness, contrast, saturation and hue, always applied), horizontal flip; no blur.

  cpu (default): the demo. The 4-conv CNN on the embedded 10k-image CIFAR-10 subset, 600
      steps of batch 128 (7.7 epochs), queue 4096, m = 0.99 (0.999 moves the key encoder too
      little in 600 steps), AdamW:
        python -m sslx.main --config=experiments/moco_v1.py --workdir=/tmp/moco_v1-cpu
      Prints k-NN and linear-probe accuracy for the pretrained encoder, the untrained one and
      raw pixels. Measured on a 2-core CPU shared with other jobs (load ~12; ~120 train
      images/s, about 5 minutes when the machine is free):
        pretrained   k-NN@20 48.0  k-NN@200 47.8  linear 51.2
        random init  k-NN@20 39.8  k-NN@200 35.4  linear 45.0   (raw pixels 38.8 / 36.8 / 26.7)
  cifar10: ResNet-18 (CIFAR stem), batch 512, queue 4096, m=0.99, SGD lr 0.06·B/256, weight
      decay 5e-4, 200 epochs (the paper's ImageNet recipe scaled to CIFAR as in lightly's
      benchmark; the trainer's schedule is cosine where the paper drops the lr ×0.1 at epochs
      120 and 160):
        python -m sslx.main --config=experiments/moco_v1.py:cifar10 \
          --config.dataset.path=/data/cifar10 --workdir=...
  imagenet: ResNet-50, batch 256, queue 65,536, m=0.999, SGD lr 0.03 wd 1e-4, 200 epochs:
      the paper's recipe (60.6% linear top-1 reported).

Flags: presets take extra words, e.g. `experiments/moco_v1.py:cpu,steps=50`. Any key can be
overridden with --config.<key>=value; an unknown key fails at once.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()
  # Everything replicated, the queue included (see the module docstring of methods/moco.py).

  c.method = ml_collections.ConfigDict(
    dict(
      name="moco",
      version="v1",
      temperature=0.07,
      projector_hidden=(),
      projector_dim=128,
      projector_bn=False,
      queue_size=4096,
      momentum=0.99,
      momentum_schedule="constant",
      symmetric=False,
    )
  )
  c.model = ml_collections.ConfigDict(dict(name="convnet", widths=(32, 64, 128, 256)))
  # The paper's v1 augmentation (torchvision ColorJitter(0.4, 0.4, 0.4, 0.4), always on).
  c.augment = ml_collections.ConfigDict(
    dict(
      crop_size=32,
      crop_scale=(0.2, 1.0),
      brightness=0.4,
      contrast=0.4,
      saturation=0.4,
      hue=0.4,
      jitter_prob=1.0,
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
  c.batch_size = 128
  c.num_epochs = 0.0
  c.total_steps = 600
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500

  if preset == "cpu":
    pass
  elif preset == "cifar10":
    c.model = ml_collections.ConfigDict(dict(name="resnet18", stem="cifar"))
    c.dataset.name = "image_folder"
    c.method.queue_size = 4096
    c.method.momentum = 0.99
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="sgd",
        base_lr=0.06,
        lr_scaling="linear",
        weight_decay=5e-4,
        momentum=0.9,
        warmup_epochs=0.0,
        final_lr_fraction=0.0,
      )
    )
    c.batch_size = 512
    c.total_steps = 0
    c.num_epochs = 200.0
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
    c.augment.crop_size = 224
    c.method.queue_size = 65536
    c.method.momentum = 0.999
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="sgd",
        base_lr=0.03,
        lr_scaling="linear",
        weight_decay=1e-4,
        momentum=0.9,
        warmup_epochs=0.0,
        final_lr_fraction=0.0,
      )
    )
    c.batch_size = 256
    c.total_steps = 0
    c.num_epochs = 200.0
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
    c.eval_baselines = False
    c.eval_train_limit = 100_000
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/moco_v1.py; valid: cpu, cifar10, imagenet"
    )
  if preset in ("cifar10", "imagenet"):
    # bf16 matmuls/convolutions (encoder and heads); parameters, normalisation statistics,
    # softmax and losses stay float32 (sslx/models/precision.py)
    c.model.dtype = "bfloat16"
  return config_lib.with_duration(c, opts)
