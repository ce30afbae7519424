r"""MoCo v2 (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning")
experiment presets. Method: sslx/methods/moco.py (`method.version="v2"`).

  cpu (default): the demo. The 4-conv CNN on the embedded 10k-image CIFAR-10 subset, 1000
      steps of batch 128 (13 epochs), queue 4096, m = 0.99 (0.999 moves the key encoder too
      little in a run this short), a 512-wide MLP head, AdamW:
        python -m sslx.main --config=experiments/moco_v2.py --workdir=/tmp/moco_v2-cpu
      Prints k-NN and linear-probe accuracy for the pretrained encoder, the untrained one and
      raw pixels (first-run figures in docs/results.md).
  cifar10: ResNet-18 (CIFAR stem), batch 512, queue 4096, τ=0.1, symmetric loss, m=0.99,
      SGD lr 0.06·B/128 with weight decay 5e-4 and a cosine schedule, 200 epochs: lightly's
      CIFAR-10 benchmark recipe (k-NN 0.847 at 200 epochs, batch 512, reported there):
        python -m sslx.main --config=experiments/moco_v2.py:cifar10 \
          --config.dataset.path=/data/cifar10 --workdir=...
  imagenet: ResNet-50, batch 256, queue 65,536, τ=0.2, m=0.999, SGD lr 0.03 wd 1e-4, cosine,
      200 epochs: the paper's recipe (67.5% linear top-1 reported).

The SGD presets decay every parameter, biases and BatchNorm included, as the official code's
`torch.optim.SGD(model.parameters(), weight_decay=...)` does (`optimizer.decay_all=False`
exempts biases and norms, sslx's default elsewhere).
"""

import ml_collections

from sslx import config_lib as cl

v1 = cl.sibling(__file__, "moco_v1")


def cpu(opts) -> ml_collections.ConfigDict:
  """MoCo v1's cpu preset with v2's changes: an MLP head, τ = 0.2, SimCLR's augmentation
  (+ blur in v2, off at 32 px: see sslx/augment.py)."""
  c = v1.cpu(opts)
  c.method.update(version="v2", temperature=0.2, projector_hidden=(512,))
  c.augment = cl.two_views(32, (0.2, 1.0))
  return c


def cifar10(c, opts):
  """lightly's CIFAR-10 recipe: τ = 0.1, symmetric loss, SGD 0.12·B/256."""
  v1.cifar10(c, opts)
  c.method.update(temperature=0.1, symmetric=True)
  c.optimizer.base_lr = 0.12


def imagenet(c, opts):
  v1.imagenet(c, opts)
  c.augment = cl.two_views(224, (0.2, 1.0), blur_prob=0.5)
  c.method.projector_hidden = (2048,)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10, imagenet=imagenet)
