r"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations
by Solving Jigsaw Puzzles") experiment presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) as the siamese tile encoder on the
      embedded 10k-image CIFAR-10 subset: images upsampled to 48 px, 3×3 cells of 16 px,
      12 px tiles at random offsets, 1000 greedy maximal-Hamming permutations (the paper's
      main run; 100, its ablation's set, learns less here: linear probe 47.45 against 49.0),
      16 epochs:
        python -m sslx.main --config=experiments/jigsaw.py --workdir=/tmp/jigsaw-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features
      (the encoder applied to the whole image at the tiles' scale: resized to 48 px, see
      `method.whole_image`). Expected: linear probe above the random-init encoder
      (first-run figures in docs/results.md).
  cifar10: ResNet-18 (CIFAR stem) tile encoder, images upsampled to 96 px (32 px cells,
      24 px tiles: the paper's 64-in-75 ratio; evaluated at 96 px too), the cpu preset's
      1000 permutations, SGD lr 0.01·B/256, 350k-step-equivalent budget cut to 200 epochs.
      No published CIFAR figure for jigsaw with this protocol; expect well below
      contrastive methods:
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

"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method("jigsaw", num_permutations=1000, tile_dim=128, head_hidden=(256,)),
    # A mild random crop and flip before tiling; no colour jitter (tiles are normalised).
    augment=cl.crop_only(32, (0.6, 1.0)),
    optimizer=cl.optimizer("adamw", 3e-3, weight_decay=1e-4, warmup_epochs=0.2),
    num_epochs=16.0,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("resnet18", stem="cifar")
  c.method.update(image_size=96, tile_size=24, tile_dim=512, head_hidden=(4096,))
  c.optimizer = cl.optimizer("sgd", 0.01, lr_scaling="linear", weight_decay=5e-4, warmup_epochs=1.0)
  cl.cifar10_run(c, batch_size=256, epochs=200)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10)
