r"""Relative patch location (Doersch et al. 2015, "Unsupervised Visual Representation
Learning by Context Prediction") experiment presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) as the siamese patch encoder on the
      embedded 10k-image CIFAR-10 subset at its own 32 px: 8 px patches, 3 px gaps, ±1 px
      jitter, chromatic-aberration projection; every image gives all 8 (centre, neighbour)
      pairs of its grid (`all_neighbours`, its 9 patches encoded once) instead of the paper's
      one; a linear position classifier on 64-d patch embeddings; 24 epochs of batch 64
      (3744 steps):
        python -m sslx.main --config=experiments/relative_patch.py --workdir=/tmp/rp-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features
      (the encoder on the whole 32 px image; first-run figures in docs/results.md).
  cifar10: ResNet-18 (CIFAR stem), images upsampled to 96 px, 22 px patches, 11 px gaps
      and ±2 px jitter (the paper's 96/48/±7 px scaled to fit 3·patch + 2·gap + 2·jitter in
      the image), colour dropping; SGD. No published CIFAR
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

"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method(
      "relative_patch",
      # No upsampling: 3·8 + 2·3 + 2·1 = 32 px. At least 1 px between patches after jitter
      # (2 px gaps with ±2 px jitter let patches touch, and longer training then lowered the
      # probe: edges continuing from one patch into the next).
      image_size=32,
      patch_size=8,
      gap=3,
      jitter=1,
      all_neighbours=True,
      # A linear classifier on two 64-d patch embeddings: the position has to be readable
      # from the embeddings themselves, so the encoder does the work an MLP head would.
      # Linear probe over seeds 0-2: 51.0, 48.2, 50.25 against 49.6, 49.25, 48.55 with a
      # 128-d embedding and a 256-wide hidden layer (untrained: 46.7, 45.2, 45.8).
      tile_dim=64,
      head_hidden=(),
    ),
    # A mild random crop and flip before cutting patches; no colour jitter.
    augment=cl.crop_only(32, (0.6, 1.0)),
    # Linear probe with seeds 0-2: 51.45, 48.7, 48.9 at 24 epochs (untrained 46.7, 45.2, 45.8);
    # 8 epochs 48.25 with seed 0, 16 epochs 50.45 and 48.9 with seeds 0 and 1, 40 epochs 49.8.
    num_epochs=24.0,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("resnet18", stem="cifar")
  c.method.update(
    all_neighbours=False,  # the paper's one pair per image
    image_size=96,
    patch_size=22,
    gap=11,
    jitter=2,
    color_guard="drop",
    tile_dim=512,
    head_hidden=(4096,),
  )
  c.optimizer = cl.optimizer("sgd", 0.01, lr_scaling="linear", weight_decay=5e-4, warmup_epochs=1.0)
  cl.cifar10_run(c, batch_size=256, epochs=200)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10)
