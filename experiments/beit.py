r"""BEiT (Bao et al. 2022) stage-two experiment presets (train the tokenizer first).

  cpu (default): a tiny ViT (dim 96, depth 4, 3 heads, patch 4, mean-pooled features) on the
      embedded 10k-image CIFAR-10 subset; blockwise masking of 40% of the 64 patches (exactly
      26), predicting the 256-code VQ-VAE tokens of experiments/beit_tokenizer.py (codes of
      per-patch standardised pixels), 12 epochs:
        python -m sslx.main --config=experiments/beit_tokenizer.py --workdir=/tmp/beit-tok
        python -m sslx.main --config=experiments/beit.py --workdir=/tmp/beit-cpu \
          --config.method.tokenizer_workdir=/tmp/beit-tok
      Prints k-NN@20/200 and linear-probe accuracy for the pretrained encoder, the untrained
      one and raw pixels. Like MAE, BEiT's features are weak on linear probe (paper Table 4:
      56.7% for ViT-B at ImageNet); its point is fine-tuning.
  cifar10: ViT-S/4 on 32 px, 40% blockwise masking (min block 4 patches on the 8 × 8 grid),
      batch 512, AdamW lr 5e-4·B/256, β2 0.999, weight decay 0.05 (not on the position
      embedding and CLS token, as the released pretraining code's `no_weight_decay()`), gradient
      clipping at global norm 3, 10 warm-up epochs, 800 epochs, tokenizer from
      experiments/beit_tokenizer.py:cifar10.
  imagenet: ViT-B/16 with layer scale (init 0.1) and a relative position bias shared by the
      blocks, 75 of 196 patches masked blockwise (min block 16; `mask_ratio=75/196`, the
      released code's count — 0.4 would mask 78), batch 2048, AdamW lr 1.5e-3, β2 0.999,
      weight decay 0.05 (likewise not on the position embedding and CLS token), gradient
      clipping at global norm 3, 10 warm-up epochs, 800 epochs, drop path 0.1 (paper App. F /
      Table 9: 83.2% fine-tuned top-1 with the DALL-E tokenizer). sslx keeps the absolute
      position embedding beside the relative bias.
"""

import ml_collections

from sslx import config_lib as cl

# Parameters BEiT's pretraining keeps out of weight decay besides biases and norms (the released
# code's `no_weight_decay()`); the cpu preset decays every matrix, as the other demos do.
NO_DECAY = ("pos_embed", "cls_token")


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method("beit", tokenizer_workdir="/tmp/beit-tok", mask_ratio=0.4, min_block=8),
    model=cl.model("vit_tiny", patch_size=4, dim=96, depth=4, num_heads=3, pool="mean"),
    # BEiT uses random-resized-crop and flip, plus mild colour jitter.
    augment=cl.two_views(32, (0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.0), grayscale_prob=0.0),
    optimizer=cl.optimizer("adamw", 1e-3, weight_decay=0.05, warmup_epochs=0.5),
    batch_size=128,
    # linear probe 40.1 at 12 epochs, 39.6 at 10 (untrained 36.4)
    num_epochs=12.0,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("vit_small", patch_size=4, pool="mean", drop_path_rate=0.1)
  c.method.min_block = 4
  c.optimizer = cl.optimizer(
    "adamw",
    5e-4,
    lr_scaling="linear",
    weight_decay=0.05,
    warmup_epochs=10.0,
    grad_clip_norm=3.0,
    no_decay=NO_DECAY,
  )
  cl.cifar10_run(c, batch_size=512, epochs=800)


def imagenet(c, opts):
  c.model = cl.model(
    "vit_base",
    patch_size=16,
    pool="mean",
    drop_path_rate=0.1,
    layer_scale=0.1,
    rel_pos_bias=True,
  )
  c.augment.crop_size = 224
  c.augment.crop_scale = (0.08, 1.0)
  c.method.min_block = 16
  c.method.mask_ratio = 75 / 196  # BEiT's num_mask_patches=75 on the 14 × 14 grid
  c.optimizer = cl.optimizer(
    "adamw", 1.5e-3, weight_decay=0.05, warmup_epochs=10.0, grad_clip_norm=3.0, no_decay=NO_DECAY
  )
  cl.imagenet_run(c, batch_size=2048, epochs=800)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10, imagenet=imagenet)
