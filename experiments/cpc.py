r"""CPC (Oord et al. 2018; Hénaff et al. 2019 for images) experiment presets.
Method: sslx/methods/cpc.py; patch encoder and context network: sslx/models/cpc_nets.py.

  cpu (default): the demo. A BN-free 4-conv CNN (widths 16-128) on 16x16 patches at stride 4
      (a 5x5 grid on 32 px images), a row-causal context of 1 layer predicting rows 3 and 4
      ahead (row 3 shares a quarter of its pixels with the context's row, row 4 none) in all
      four directions (Hénaff et al.'s CPC v2), per-patch colour augmentation and flips, cosine
      score τ=0.1, 400 steps of batch 128 (5 epochs), on the embedded 10k-image CIFAR-10 subset:
        python -m sslx.main --config=experiments/cpc.py --workdir=/tmp/cpc-cpu
      Prints k-NN and linear-probe accuracy for the pretrained encoder (mean-pooled patch
      embeddings), the untrained one and raw pixels (the trainer's images/s counts two views
      per image; CPC uses one). First-run figures in docs/results.md. A mean of patch
      embeddings keeps little of the layout raw pixels' neighbours use: on 8 px patches even
      training with labels (tools/label_ceiling.py) stays under raw pixels' k-NN; 16 px
      patches, a quarter of the image each, raise that ceiling, and the four directions give
      their smaller grid as many targets per image as one direction on the 7x7 grid.
  cifar10: Oord et al.'s proportions, 8 px patches at stride 4 (a 7x7 grid; rows 2 and 3 ahead,
      top to bottom), with a wider residual patch encoder (cpc_convnet widths
      (64, 128, 256, 512), 2 blocks per stage), context 512, batch 512, Adam 2e-4 (Hénaff et
      al.'s optimiser), 200 epochs:
        python -m sslx.main --config=experiments/cpc.py:cifar10 \
          --config.dataset.path=/data/cifar10 --workdir=...
  imagenet: Oord et al.'s grid: 64 px patches at stride 32 on 256 px crops (7x7), K = 5 rows.
"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method(
      "cpc",
      # 16 px patches, a quarter of the 32 px image each, at stride 4: a 5x5 grid. Rows 3 and
      # 4 ahead: the nearest shares a quarter of its pixels with the context's row (rows 2-4,
      # half shared, learn less). On the grid's 5 rows one direction has few targets; four
      # directions (CPC v2) give 60 predictions per image. One context layer predicts as well
      # as three and is cheaper.
      patch_size=16,
      patch_stride=4,
      first_step=3,
      steps_ahead=4,
      directions=4,
      context_layers=1,
      # Cosine score at τ=0.1 instead of the paper's zᵀ W_k c (temperature=0): see
      # methods/cpc.py; in the demo it is what makes the features beat random init on k-NN.
      temperature=0.1,
      # Each patch its own colour jitter, colour dropping and horizontal flip (Hénaff et al.
      # 2019 §4.1).
      patch_augment=dict(
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        jitter_prob=0.8,
        grayscale_prob=0.5,
        blur_prob=0.0,
        flip_prob=0.5,
      ),
    ),
    # 25 overlapping patches cost ~6x the pixels of the whole image: half the demo CNN's widths.
    model=cl.model("cpc_convnet", widths=(16, 32, 64, 128), blocks=1),
    batch_size=128,
    # One view of the whole image before the patches are cut.
    augment=cl.two_views(32, (0.3, 1.0)),
    optimizer=cl.optimizer("adamw", 2e-3, weight_decay=1e-4, warmup_epochs=0.15),
    num_epochs=0.0,
    total_steps=400,
    log_every_steps=25,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("cpc_convnet", widths=(64, 128, 256, 512), blocks=2)
  c.method.update(patch_size=8, patch_stride=4, first_step=2, steps_ahead=3, directions=1)
  c.method.update(context_dim=512, context_layers=3)
  c.optimizer = cl.optimizer("adamw", 2e-4, weight_decay=1e-4, warmup_epochs=5.0)
  cl.cifar10_run(c, batch_size=512, epochs=200)


def imagenet(c, opts):
  c.model = cl.model("cpc_convnet", widths=(64, 128, 256, 512, 1024, 1024), blocks=2)
  c.augment = cl.two_views(256, (0.3, 1.0))
  c.method.update(patch_size=64, patch_stride=32, first_step=2, steps_ahead=5, directions=1)
  c.method.update(context_dim=1024, context_layers=3)
  c.optimizer = cl.optimizer("adamw", 2e-4, warmup_epochs=1.0)
  cl.imagenet_run(c, batch_size=512, epochs=100)
  c.dataset.image_size = 256


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10, imagenet=imagenet)
