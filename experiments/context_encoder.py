r"""Context encoder (Pathak et al. 2016, "Context Encoders: Feature Learning by
Inpainting") experiment presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) as the encoder, channel-wise fc,
      up-convolutions to the 16×16 central region of the embedded 10k-image CIFAR-10
      images (hole 14×14: 1 px overlap weighted ×10), loss 0.999·L2 + 0.001·adversarial with
      the discriminator trained in the same step:
        python -m sslx.main --config=experiments/context_encoder.py --workdir=/tmp/ce-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features
      (the encoder on the whole, unmasked image). Expected: linear probe above the
      random-init encoder (figures in BUILD_NOTES.md). Render inpaintings with
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

Flags: presets take extra words, e.g. `experiments/context_encoder.py:cpu,steps=50`.
"""

import ml_collections

from sslx import config_lib


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  preset, opts = config_lib.split_arg(arg, steps=0, epochs=0.0)
  c = config_lib.base_config()

  c.method = ml_collections.ConfigDict(
    dict(
      name="context_encoder",
      mask_mode="center",
      overlap=1,
      overlap_weight=10.0,
      num_blocks=4,
      rec_weight=0.999,
      adv_weight=0.001,
      decoder_base=32,
      disc_widths=(32, 64, 128),
    )
  )
  c.model = ml_collections.ConfigDict(dict(name="convnet", widths=(32, 64, 128, 256)))
  # Crop and flip only.
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
    c.method.decoder_base = 64
    c.optimizer = ml_collections.ConfigDict(
      dict(
        name="adamw",
        base_lr=2e-4,
        lr_scaling="none",
        weight_decay=0.0,
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
      f"unknown preset {preset!r} for experiments/context_encoder.py; valid: cpu, cifar10"
    )
  return config_lib.with_duration(c, opts)
