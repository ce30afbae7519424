r"""Relative patch location (Doersch et al. 2015, "Unsupervised Visual Representation
Learning by Context Prediction") experiment presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) as the siamese patch encoder on the
      embedded 10k-image CIFAR-10 subset: images upsampled to 48 px, 12 px patches, 4 px
      gaps, ±1 px jitter, chromatic-aberration projection, 8 epochs of batch 64 (1248 steps,
      ~1.5 minutes of training on a quiet 2-core CPU, ~1900 img/s):
        python -m sslx.main --config=experiments/relative_patch.py --workdir=/tmp/rp-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features
      (the encoder on the whole 32 px image). Measured (loss 2.06 -> 1.72; chance is ln 8 = 2.08):
        pretrained   k-NN@20 41.8  k-NN@200 39.2  linear 48.3
        random init  k-NN@20 41.2  k-NN@200 37.3  linear 46.7   (raw pixels 38.8 / 36.8 / 26.7)
      One epoch is not enough: the loss stays near chance and the probe at random init.
  cifar10: ResNet-18 (CIFAR stem), images upsampled to 96 px, 24 px patches, 12 px gaps
      (the paper's gap = patch/2), ±3 px jitter, colour dropping; SGD. No published CIFAR
      figure for this protocol:
        python -m sslx.main --config=experiments/relative_patch.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...

Shortcuts and guards (paper §3.1):
  * boundary patterns and textures continuing from one patch into the next -> the `gap`
    between patches;
  * long lines that still line up across the gap -> random `jitter` of every patch;
  * chromatic aberration (lenses shift green against magenta toward the image edge, which
    tells a patch's absolute position) -> `color_guard`: "project" (project out the
    green–magenta axis, the paper's first fix) or "drop" (keep one random channel, the rest
    Gaussian noise: colour dropping);
  * the network seeing both patches together -> a siamese encoder (late fusion, fc only).
  Each guard is a config option with a test that it acts (tests/test_relative_patch.py).

Flags: presets take extra words, e.g. `experiments/relative_patch.py:cpu,steps=50`.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="relative_patch",
      image_size=48,
      patch_size=12,
      gap=4,
      jitter=1,
      color_guard="project",
      tile_dim=128,
      head_hidden=(256,),
    )
  )
  c.model = ml_collections.ConfigDict(dict(name="convnet", widths=(32, 64, 128, 256)))
  # A mild random crop and flip before cutting patches; no colour jitter.
  c.augment = ml_collections.ConfigDict(
    dict(
      crop_size=32,
      crop_scale=(0.6, 1.0),
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
      weight_decay=1e-4,
      warmup_epochs=0.2,
      final_lr_fraction=0.0,
      momentum=0.9,
      trust_coefficient=0.001,
    )
  )
  c.batch_size = 64
  c.num_epochs = 8.0

  if preset == "cpu":
    pass
  elif preset == "cifar10":
    c.model = ml_collections.ConfigDict(dict(name="resnet18", stem="cifar"))
    c.dataset.name = "image_folder"
    c.method.image_size = 96
    c.method.patch_size = 24
    c.method.gap = 12
    c.method.jitter = 3
    c.method.color_guard = "drop"
    c.method.tile_dim = 512
    c.method.head_hidden = (4096,)
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="sgd",
        base_lr=0.01,
        lr_scaling="linear",
        weight_decay=5e-4,
        momentum=0.9,
        warmup_epochs=1.0,
        final_lr_fraction=0.0,
        trust_coefficient=0.001,
      )
    )
    c.batch_size = 256
    c.num_epochs = 200.0
    c.checkpoint_every_steps = 2000
    c.log_every_steps = 100
    c.eval_baselines = False
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/relative_patch.py; valid: cpu, cifar10"
    )
  return config_lib.with_duration(c, opts)
