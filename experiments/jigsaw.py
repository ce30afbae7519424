r"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations
by Solving Jigsaw Puzzles") experiment presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) as the siamese tile encoder on the
      embedded 10k-image CIFAR-10 subset: images upsampled to 48 px, 3×3 cells of 16 px,
      12 px tiles at random offsets, 100 greedy maximal-Hamming permutations:
        python -m sslx.main --config=experiments/jigsaw.py --workdir=/tmp/jigsaw-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features
      (the encoder applied to the whole 32 px image). Expected: linear probe above the
      random-init encoder (figures in BUILD_NOTES.md).
  cifar10: ResNet-18 (CIFAR stem) tile encoder, images upsampled to 96 px (32 px cells,
      24 px tiles: the paper's 64-in-75 ratio), 1000 permutations as in the paper's main
      run, SGD lr 0.01·B/256, 350k-step-equivalent budget cut to 200 epochs. No published
      CIFAR figure for jigsaw with this protocol; expect well below contrastive methods:
        python -m sslx.main --config=experiments/jigsaw.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...

Shortcuts and guards (paper §3.2):
  * edge continuity / matching low-level texture across tile borders -> random gaps: each
    tile is cut at a random offset inside its cell (`image_size // 3 - tile_size` px slack);
  * shared low-level statistics (mean brightness, contrast gradients across the image) ->
    every tile normalised to zero mean and unit std on its own;
  * an easy-to-tell permutation set (near-identical permutations differ by one swap) ->
    the greedy maximal-average-Hamming set (min distance 2, mean 8.08 for 100, as the
    paper's Table 3), deterministic from `permutation_seed`, carried in every checkpoint
    (`method_state["permutations"]`) and its fingerprint printed at creation;
  * the network seeing two tiles together (and learning absolute position from padding)
    -> a context-free siamese network: tiles are encoded separately, only the fc on the
    concatenation relates them.
  Not guarded here: chromatic aberration (the paper also drops colour / uses grayscale on
  ImageNet; negligible at 32 px CIFAR resolution).

Flags: presets take extra words, e.g. `experiments/jigsaw.py:cpu,steps=50`.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="jigsaw",
      num_permutations=100,
      permutation_seed=0,
      image_size=48,
      tile_size=12,
      tile_dim=128,
      head_hidden=(256,),
    )
  )
  c.model = ml_collections.ConfigDict(dict(name="convnet", widths=(32, 64, 128, 256)))
  # A mild random crop and flip before tiling; no colour jitter (tiles are normalised).
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
      base_lr=3e-3,
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
    c.method.num_permutations = 1000
    c.method.image_size = 96
    c.method.tile_size = 24
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
    raise ValueError(f"unknown preset {preset!r} for experiments/jigsaw.py; valid: cpu, cifar10")
  return config_lib.with_duration(c, opts)
