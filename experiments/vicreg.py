r"""VICReg (Bardes, Ponce & LeCun 2022) experiment presets.

  cpu (default): the 4-conv CNN of the SimCLR demo (widths 32-64-128-256) with a 3-layer
      expander 512-512-512 on the embedded 10k-image CIFAR-10 subset, batch 64, AdamW 2e-3,
      8 epochs (1248 steps):
        python -m sslx.main --config=experiments/vicreg.py --workdir=/tmp/vicreg-cpu
      Prints k-NN@20/200 and linear-probe accuracy for the pretrained encoder, the untrained
      one and raw pixels (first-run figures in docs/results.md).
  cifar10: ResNet-18 (CIFAR stem), expander 2048-2048-2048, λ = μ = 25, ν = 1, LARS lr 0.3
      (× B/256), weight decay 1e-4, batch 512, 1000 epochs, solarize p 0.1 on both views, no
      blur — the solo-learn CIFAR recipe (~92% linear reported there after 1000 epochs):
        python -m sslx.main --config=experiments/vicreg.py:cifar10 \
          --config.dataset.path=/data/cifar10 --workdir=...
  imagenet: ResNet-50, expander 8192-8192-8192, batch 2048, LARS base lr 0.2 (× B/256),
      weight decay 1e-6, 1000 epochs, BYOL augmentations (paper §4.1 and Appendix C:
      73.2% linear).
"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method("vicreg", expander_hidden=(512, 512), expander_dim=512),
    # Two views, BYOL-style asymmetric solarization; no blur at 32x32.
    augment=cl.multi_crop(32, (0.2, 1.0)),
    # Batch 64: on a 2-core CPU more (smaller) steps learn faster per minute than batch 256.
    num_epochs=8.0,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("resnet18", stem="cifar")
  c.augment.global_crop_scale = (0.08, 1.0)
  c.augment.global_solarize_prob = (0.1, 0.1)
  c.method.update(expander_hidden=(2048, 2048), expander_dim=2048)
  c.optimizer = cl.optimizer(
    "lars", 0.3, lr_scaling="linear", weight_decay=1e-4, warmup_epochs=10.0, trust_coefficient=0.02
  )
  cl.cifar10_run(c, batch_size=512, epochs=1000)


def imagenet(c, opts):
  c.model = cl.model("resnet50", stem="imagenet")
  c.augment = cl.multi_crop(224, (0.08, 1.0), global_blur=(1.0, 0.1))
  c.method = cl.method("vicreg")  # the paper's 8192-wide expander
  c.optimizer = cl.optimizer(
    "lars", 0.2, lr_scaling="linear", weight_decay=1e-6, warmup_epochs=10.0
  )
  cl.imagenet_run(c, batch_size=2048, epochs=1000)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10, imagenet=imagenet)
