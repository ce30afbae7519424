r"""BEiT stage one: the VQ-VAE image tokenizer (sslx/methods/beit_tokenizer.py).

BEiT (Bao et al. 2022) uses the DALL-E dVAE (8192 codes, trained on 250M images); its weights
cannot be downloaded here, so this trains a small VQ-VAE with one code per ViT patch. Train it
first, then point BEiT at its workdir:

  cpu (default): 32 px, patch 4 → an 8 × 8 code grid, 256 codes of dim 16, widths 64, on
      the embedded 10k-image CIFAR-10 subset, 5 epochs (under a minute on a 2-core CPU). The
      decoder reconstructs each 4 × 4 patch standardised on its own (`method.norm_pix`,
      MAE's target), so the codes name a patch's structure rather than its mean colour, which
      BEiT could read off the neighbouring patches; BEiT's linear probe after 10 epochs on
      these codes is 39.6, against 37.55 on codes of the raw pixels (untrained 36.4):
        python -m sslx.main --config=experiments/beit_tokenizer.py --workdir=/tmp/beit-tok
        python -m sslx.main --config=experiments/beit.py --workdir=/tmp/beit-cpu \
          --config.method.tokenizer_workdir=/tmp/beit-tok
      Expect reconstruction MSE (of the standardised patches) to fall well below 1 and a
      codebook perplexity of tens of codes; k-NN on pooled z_e is printed but is not the point.
  cifar10: the same VQ-VAE wider (128 channels), 1024 codes, 50 epochs, reconstructing the
      pixels as DALL-E's dVAE does (a tokenizer only has to capture local patch structure;
      BEiT §2.1 / Table 6 show tokenizer quality matters less than the masked-prediction
      stage).
  imagenet: patch 16, 8192 codes (DALL-E's vocabulary size), 224 px,
      batch 512, 20 epochs.

`model` is unused by the tokenizer (its architecture is in `method`); it only names the run.
"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method(
      "beit_tokenizer", patch_size=4, codebook_size=256, code_dim=16, hidden=64, norm_pix=True
    ),
    model=cl.model("convnet"),
    augment=cl.crop_only(32, (0.5, 1.0)),
    optimizer=cl.optimizer("adamw", 2e-3, b2=0.99, warmup_epochs=0.1, final_lr_fraction=0.1),
    num_epochs=5.0,
    checkpoint_every_steps=0,
  )
  c.keep_checkpoints = 1
  c.online_probe = ml_collections.ConfigDict(dict(enabled=False, lr=1e-3))
  c.evals = ml_collections.ConfigDict(dict(knn=dict(ks=(20,), temperature=0.07)))
  c.eval_baselines = False
  c.eval_train_limit = 2000
  return c


def cifar10(c, opts):
  c.method.update(hidden=128, codebook_size=1024, norm_pix=False)
  c.optimizer.warmup_epochs = 1.0
  cl.cifar10_run(c, batch_size=256, epochs=50)


def imagenet(c, opts):
  c.augment.crop_size = 224
  c.method.update(patch_size=16, hidden=256, codebook_size=8192, norm_pix=False)
  c.optimizer.warmup_epochs = 1.0
  cl.imagenet_run(c, batch_size=512, epochs=20)
  c.eval_train_limit = 20_000


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10, imagenet=imagenet)
