r"""CPC (Oord et al. 2018; Hénaff et al. 2019 for images) experiment presets.
Method: sslx/methods/cpc.py; patch encoder and context network: sslx/models/cpc_nets.py.

  cpu (default): the demo. A BN-free 4-conv CNN (widths 16-128) on 8x8 patches (a 7x7 grid
      at stride 4 on 32 px images), each patch resized to 16 px before the encoder so that
      every conv stage works on a map of at least 2x2, a row-causal context of 1 layer,
      predicting rows 2 and 3 ahead (row 1 shares half its pixels with the context's row),
      per-patch colour augmentation and flips, cosine score τ=0.1, 400 steps of batch 128
      (5 epochs), on the embedded 10k-image CIFAR-10 subset:
        python -m sslx.main --config=experiments/cpc.py --workdir=/tmp/cpc-cpu
      Prints k-NN and linear-probe accuracy for the pretrained encoder (mean-pooled patch
      embeddings), the untrained one and raw pixels (the trainer's images/s counts two views
      per image; CPC uses one). First-run figures in docs/results.md: the linear probe is well
      above both baselines, k-NN@20 only just above raw pixels' -- mean-pooled 8 px patches
      keep little of the layout that raw pixels' neighbours use; trained with labels instead
      (tools/label_ceiling.py) the same feature reaches less than CPC's.
  cifar10: the same grid with a wider residual patch encoder (cpc_convnet widths
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
      first_step=2,
      # 8 px patches at 16 px: the last conv stages see 2x2 maps, not 1x1. One context layer
      # predicts as well as three and is cheaper: the saving goes to a larger batch.
      encoder_input_size=16,
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
    # 49 overlapping patches cost ~3x the pixels of the whole image: half the demo CNN's widths.
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
  c.method.update(context_dim=512, context_layers=3, encoder_input_size=0)
  c.optimizer = cl.optimizer("adamw", 2e-4, weight_decay=1e-4, warmup_epochs=5.0)
  cl.cifar10_run(c, batch_size=512, epochs=200)


def imagenet(c, opts):
  c.model = cl.model("cpc_convnet", widths=(64, 128, 256, 512, 1024, 1024), blocks=2)
  c.augment = cl.two_views(256, (0.3, 1.0))
  c.method.update(patch_size=64, patch_stride=32, steps_ahead=5, context_dim=1024)
  c.method.update(context_layers=3, encoder_input_size=0)  # 64 px patches as they are
  c.optimizer = cl.optimizer("adamw", 2e-4, warmup_epochs=1.0)
  cl.imagenet_run(c, batch_size=512, epochs=100)
  c.dataset.image_size = 256


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10, imagenet=imagenet)
