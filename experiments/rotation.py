r"""Rotation prediction (Gidaris et al. 2018, "Unsupervised Representation Learning by
Predicting Image Rotations") experiment presets.

  cpu (default): the 4-conv CNN (widths 32-64-128-256) on the embedded 10k-image CIFAR-10
      subset, all four rotations of 64 images per step (256 encoder inputs), 4 epochs:
        python -m sslx.main --config=experiments/rotation.py --workdir=/tmp/rotation-cpu
      Ends with k-NN and linear probe on the pretrained, untrained and raw-pixel features.
      (first-run figures in docs/results.md).
  cifar10: the paper's CIFAR setting in spirit: a ResNet-18 (CIFAR stem) instead of the
      paper's NIN, SGD momentum 0.9, lr 0.1, weight decay 5e-4, batch 128 (x4 rotations),
      100 epochs, random crop + flip. The paper reports 89.06% for a non-linear classifier on
      the NIN's 2nd block (Table 1); expect the linear probe on ResNet-18's pooled features
      in the 80s:
        python -m sslx.main --config=experiments/rotation.py:cifar10 \
          --config.dataset.path=/data/cifar10-{split}.tar.gz --workdir=...

Shortcuts and guards. A rotation can be read off low-level cues instead of semantics:
  * interpolation artefacts of a non-exact rotation -> only multiples of 90° (exact `rot90`,
    a pixel permutation) are used, as in the paper (§2.2);
  * the shape or padding of the rotated image (non-square inputs) -> square crops only;
  * per-image statistics (a rotated copy has the same histogram, so none are available);
  * the image border / black corners -> none exist with 90° rotations.
  What it cannot remove: cues like "sky is up" in texture gradients are partly semantic and
  are what the task relies on; all four rotations of every image are in the same batch so
  no label can be guessed from batch composition.

"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    method=cl.method("rotation"),
    # The paper's CIFAR augmentation: random crop and horizontal flip, no colour jitter.
    augment=cl.crop_only(32, (0.5, 1.0)),
    num_epochs=4.0,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("resnet18", stem="cifar")
  c.optimizer = cl.optimizer("sgd", 0.1, weight_decay=5e-4, warmup_epochs=1.0)
  cl.cifar10_run(c, batch_size=128, epochs=100)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10)
