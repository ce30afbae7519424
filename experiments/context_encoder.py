r"""Context encoder (Pathak et al. 2016, "Context Encoders: Feature Learning by
Inpainting") experiment presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) as the encoder, channel-wise fc,
      up-convolutions to the 16×16 central region of the embedded 10k-image CIFAR-10
      images (hole 14×14: 1 px overlap weighted ×10), loss 0.999·L2 + 0.001·adversarial with
      the discriminator trained in the same step, 5 epochs:
        python -m sslx.main --config=experiments/context_encoder.py --workdir=/tmp/ce-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features
      (the encoder on the whole, unmasked image). Expected: linear probe above the
      random-init encoder (first-run figures in docs/results.md). Render inpaintings with
        python -m sslx.visualizers.inpainting --config=experiments/context_encoder.py \
          --workdir=/tmp/ce-cpu --out=/tmp/inpaint.png
      `--config.method.mask_mode=random_block` selects the random-block variant.
  cifar10: ResNet-18 (CIFAR stem) encoder, Adam 2e-4 (the paper's lr, β1 0.5 not exposed
      by the trainer's AdamW), batch 128, 100 epochs. No published CIFAR probe figure:
        python -m sslx.main --config=experiments/context_encoder.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...

Shortcuts and guards (paper §3.3):
  * copying the hole's boundary pixels inward / matching low-level edges at a sharp mask
    boundary -> the prediction overlaps the context by `overlap` px with ×10 weight, so the
    seam must agree with the context, not just the hole's edge;
  * the fixed central hole lets the encoder specialise to its boundary (features that do not
    transfer: the paper's observation for the central mask) -> `mask_mode=random_block`;
  * blurry mean predictions that need no understanding (pure L2) -> the 0.001 adversarial
    term;
  * evaluation never sees masks: `encode` is the encoder on the whole, unmasked image.

"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method("context_encoder"),
    augment=cl.crop_only(32, (0.5, 1.0)),
    num_epochs=5.0,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("resnet18", stem="cifar")
  c.method.decoder_base = 64
  c.optimizer = cl.optimizer("adamw", 2e-4, warmup_epochs=1.0)
  cl.cifar10_run(c, batch_size=128, epochs=100)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10)
