r"""Colorization (Zhang, Isola & Efros 2016, "Colorful Image Colorization") experiment
presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) on the L channel of the embedded
      10k-image CIFAR-10 subset, two up-convolutions to 8×8 (1/4 resolution), 261 computed
      ab bins, soft targets (5 nearest, σ=5), rebalancing λ=0.5 from a running prior, 5 epochs:
        python -m sslx.main --config=experiments/colorization.py --workdir=/tmp/color-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features
      (the encoder on the L channel of the whole image). Expected: linear probe above the
      random-init encoder (first-run figures in docs/results.md). Render colorizations with
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

"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method("colorization", decoder_widths=(128, 64)),
    # Crop and flip only: colour augmentation would change the targets.
    augment=cl.crop_only(32, (0.5, 1.0)),
    num_epochs=5.0,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("resnet18", stem="cifar")
  c.method.decoder_widths = (256,)  # ResNet-18 (CIFAR stem) ends at 4x4: one 2x up to 8x8
  c.optimizer = cl.optimizer("adamw", 3e-4, weight_decay=1e-3, warmup_epochs=1.0)
  cl.cifar10_run(c, batch_size=128, epochs=100)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10)
