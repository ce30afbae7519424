r"""MoCo v1 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation
Learning") experiment presets. Method: sslx/methods/moco.py (`method.version="v1"`): no
projection head (a linear fc to 128 after the pooled features), τ = 0.07, and the paper's
weaker augmentation: random resized crop (scale 0.2-1), grayscale p=0.2, colour jitter 0.4
(brightness, contrast, saturation and hue, always applied), horizontal flip; no blur.

  cpu (default): the demo. The 4-conv CNN on the embedded 10k-image CIFAR-10 subset, 1000
      steps of batch 128 (13 epochs), queue 4096, m = 0.99 (0.999 moves the key encoder too
      little in a run this short), AdamW:
        python -m sslx.main --config=experiments/moco_v1.py --workdir=/tmp/moco_v1-cpu
      Prints k-NN and linear-probe accuracy for the pretrained encoder, the untrained one and
      raw pixels (first-run figures in docs/results.md).
  cifar10: ResNet-18 (CIFAR stem), batch 512, queue 4096, m=0.99, SGD lr 0.06·B/256, weight
      decay 5e-4, 200 epochs (the paper's ImageNet recipe scaled to CIFAR as in lightly's
      benchmark; the trainer's schedule is cosine where the paper drops the lr ×0.1 at epochs
      120 and 160):
        python -m sslx.main --config=experiments/moco_v1.py:cifar10 \
          --config.dataset.path=/data/cifar10 --workdir=...
  imagenet: ResNet-50, batch 256, queue 65,536, m=0.999, SGD lr 0.03 wd 1e-4, 200 epochs:
      the paper's recipe (60.6% linear top-1 reported).

The SGD presets decay every parameter, biases and BatchNorm included, as the official code's
`torch.optim.SGD(model.parameters(), weight_decay=...)` does (`optimizer.decay_all=False`
exempts biases and norms, sslx's default elsewhere).
"""

import ml_collections

from sslx import config_lib as cl


def cpu(opts) -> ml_collections.ConfigDict:
  del opts
  c = cl.base_config(
    # Everything replicated, the queue included (see the module docstring of methods/moco.py).
    method=cl.method(
      "moco",
      version="v1",  # τ = 0.07 and the linear head (methods/moco.py VERSIONS)
      queue_size=4096,
      momentum=0.99,
    ),
    # The paper's v1 augmentation (torchvision ColorJitter(0.4, 0.4, 0.4, 0.4), always on).
    augment=cl.two_views(32, (0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_prob=1.0),
    optimizer=cl.optimizer("adamw", 1e-3, weight_decay=1e-4, warmup_epochs=1.0),
    batch_size=128,
    num_epochs=0.0,
    total_steps=1000,
    log_every_steps=50,
    checkpoint_every_steps=500,
  )
  return c


def cifar10(c, opts):
  c.model = cl.model("resnet18", stem="cifar")
  c.method.queue_size = 4096
  c.method.momentum = 0.99
  c.optimizer = cl.optimizer("sgd", 0.06, lr_scaling="linear", weight_decay=5e-4, decay_all=True)
  cl.cifar10_run(c, batch_size=512, epochs=200)


def imagenet(c, opts):
  c.model = cl.model("resnet50", stem="imagenet")
  c.augment.crop_size = 224
  c.method.queue_size = 65536
  c.method.momentum = 0.999
  c.optimizer = cl.optimizer("sgd", 0.03, lr_scaling="linear", weight_decay=1e-4, decay_all=True)
  cl.imagenet_run(c, batch_size=256, epochs=200)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  return cl.presets(arg, cpu, __file__, cifar10=cifar10, imagenet=imagenet)
