r"""Rotation prediction (Gidaris et al. 2018, "Unsupervised Representation Learning by
Predicting Image Rotations") experiment presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) on the embedded 10k-image CIFAR-10
      subset, all four rotations of 64 images per step (256 encoder inputs):
        python -m sslx.main --config=experiments/rotation.py --workdir=/tmp/rotation-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features.
      Expected: linear probe above the random-init encoder (measured figures in
      BUILD_NOTES.md; ~3 min on a 2-core CPU with `--config.total_steps=300`).
  cifar10: the paper's CIFAR setting in spirit: a ResNet-18 (CIFAR stem) instead of the
      paper's NIN, SGD momentum 0.9, lr 0.1, weight decay 5e-4, batch 128 (x4 rotations),
      100 epochs, random crop + flip. The paper reports 89.06% for a non-linear classifier on
      the NIN's 2nd block (Table 1); expect the linear probe on ResNet-18's pooled features
      in the 80s:
        python -m sslx.main --config=experiments/rotation.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...

Shortcuts and guards. A rotation can be read off low-level cues instead of semantics:
  * interpolation artefacts of a non-exact rotation -> only multiples of 90° (exact `rot90`,
    a pixel permutation) are used, as in the paper (§2.2);
  * the shape or padding of the rotated image (non-square inputs) -> square crops only;
  * per-image statistics (a rotated copy has the same histogram, so none are available);
  * the image border / black corners -> none exist with 90° rotations.
  What it cannot remove: cues like "sky is up" in texture gradients are partly semantic and
  are what the task relies on; all four rotations of every image are in the same batch so
  no label can be guessed from batch composition.

Flags: presets take extra words, e.g. `experiments/rotation.py:cpu,steps=50`.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(dict(name="rotation", head_hidden=()))
  c.model = ml_collections.ConfigDict(dict(name="convnet", widths=(32, 64, 128, 256)))
  # The paper's CIFAR augmentation: random crop and horizontal flip, no colour jitter.
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
    c.augment.crop_scale = (0.5, 1.0)
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="sgd",
        base_lr=0.1,
        lr_scaling="none",
        weight_decay=5e-4,
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
    raise ValueError(f"unknown preset {preset!r} for experiments/rotation.py; valid: cpu, cifar10")
  return config_lib.with_duration(c, opts)
