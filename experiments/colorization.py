r"""Colorization (Zhang, Isola & Efros 2016, "Colorful Image Colorization") experiment
presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) on the L channel of the embedded
      10k-image CIFAR-10 subset, two up-convolutions to 8×8 (1/4 resolution), 261 computed
      ab bins, soft targets (5 nearest, σ=5), rebalancing λ=0.5 from a running prior:
        python -m sslx.main --config=experiments/colorization.py --workdir=/tmp/color-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features
      (the encoder on the L channel of the whole image). Expected: linear probe above the
      random-init encoder (figures in BUILD_NOTES.md). Render colorizations with
        python -m sslx.visualizers.colorization --config=experiments/colorization.py \
          --workdir=/tmp/color-cpu --out=/tmp/color.png
  cifar10: ResNet-18 (CIFAR stem) on L, Adam lr 3e-4 (the paper uses Adam, β1 0.9,
      β2 0.99, wd 1e-3), batch 128, 100 epochs. No published CIFAR probe figure for this
      protocol:
        python -m sslx.main --config=experiments/colorization.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...

Shortcuts and guards:
  * predicting the desaturated mean colour (the L2-regression failure mode the paper shows)
    -> classification over ab bins with class rebalancing (λ = 0.5), so rare saturated
    colours are not ignored;
  * reading colour from the input -> the network only ever receives L (no colour leaks:
    the input is computed from Lab, not a grayscale that keeps chroma-dependent luma);
  * low-level cues (colour follows local texture) are partly unavoidable; the probe uses the
    encoder's pooled features of L only, so the representation must carry them itself.

Flags: presets take extra words, e.g. `experiments/colorization.py:cpu,steps=50`.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="colorization",
      rebalance_lambda=0.5,
      temperature=0.38,
      soft_k=5,
      soft_sigma=5.0,
      decoder_widths=(128, 64),
    )
  )
  c.model = ml_collections.ConfigDict(dict(name="convnet", widths=(32, 64, 128, 256)))
  # Crop and flip only: colour augmentation would change the targets.
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
      weight_decay=1e-4,
      warmup_epochs=0.2,
      final_lr_fraction=0.0,
      momentum=0.9,
      trust_coefficient=0.001,
    )
  )
  c.batch_size = 64
  c.num_epochs = 1.0

  if preset == "cpu":
    pass
  elif preset == "cifar10":
    c.model = ml_collections.ConfigDict(dict(name="resnet18", stem="cifar"))
    c.dataset.name = "image_folder"
    c.method.decoder_widths = (256,)  # ResNet-18 (CIFAR stem) ends at 4x4: one 2x up to 8x8
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=3e-4,
        lr_scaling="none",
        weight_decay=1e-3,
        momentum=0.9,
        warmup_epochs=1.0,
        final_lr_fraction=0.0,
        trust_coefficient=0.001,
      )
    )
    c.batch_size = 128
    c.num_epochs = 100.0
    c.checkpoint_every_steps = 2000
    c.log_every_steps = 100
    c.eval_baselines = False
  else:
    raise ValueError(
      f"unknown preset {preset!r} for experiments/colorization.py; valid: cpu, cifar10"
    )
  return config_lib.with_duration(c, opts)
