"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"; v2: Chen et al. 2020b).

Two augmented views of every image go through the encoder in ONE forward pass, so BatchNorm
statistics are taken over all 2N views of the global batch (the paper's global BN: under jit
over a sharded batch XLA reduces across devices). A projection head maps the encoder's
`pre_logits` to the space where NT-Xent is taken; evaluation uses the features *before* the
projector (paper §4.2).

Config (`config.method`):
  temperature:      τ of NT-Xent (0.5 in the paper at batch 4096; 0.2 for CIFAR recipes)
  projector_hidden: hidden widths of the MLP head: (2048,) is v1's 2-layer head,
                    (2048, 2048) v2's 3-layer head
  projector_dim:    output width (128)
  projector_bn:     BatchNorm in the projector's hidden layers (True)
  projector_out_bn: BatchNorm on the projector's output (True): the official code's last
                    layer is a bias-free Linear followed by BatchNorm with a learned scale
                    and no shift (`linear_layer(use_bias=False, use_bn=True)`, v1 and v2)
  grad_cache_chunk: 0, or the number of views embedded at a time (GradCache, Gao et al. 2021):
                    the loss and its gradient w.r.t. the embeddings are taken over the whole
                    batch, but activations exist for one chunk at a time, so a 4096-image batch
                    runs on a device that holds a 256-image chunk. BatchNorm statistics are
                    then per chunk (as in GradCache); with LayerNorm models the gradients equal
                    the unchunked step (tested). Must be even and divide 2 x batch_size.

GradCache here is `lax.scan` over chunks with a `jax.checkpoint`ed body: the forward keeps
only each chunk's embeddings, and reverse mode recomputes one chunk's forward at a time and
backpropagates the full-batch embedding gradient through it — the paper's two passes,
expressed through JAX's autodiff rather than by hand.

Chunk composition (`grad_cache_order`): the views are image-major (rows 2i, 2i + 1 from image
i), and chunks are not cut from them directly. A chunk of consecutive rows would hold both
views of its images, and its BatchNorm statistics would be a signature shared by each anchor
and its positive and by no negative (the leak MoCo's shuffle BN removes); cut view by view,
chunk b would hold view 1 of images I_b and chunk b + B/c view 2 of the *same* images, the
same signature spread over two chunks. The rows are permuted before chunking instead: chunk
k holds view 1 of the k-th block of c/2 consecutive images and view 2 of the images
i ≡ k (mod n), n the number of chunks. The view-1 sets of the chunks are disjoint, so are the
view-2 sets, no two chunks hold the same image set, and every two chunks share about the same
number of images (exactly c/n when n divides c/2), the pair holding an image's two views no
more than any other pair. The embeddings are put back in the original order before the loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sslx import augment, losses, multicrop
from sslx.methods import base, common
from sslx.methods.common import EncoderWithHead


def grad_cache_order(batch: int, chunk: int) -> np.ndarray:
  """[2·batch] row order of the image-major views (row 2i + v = view v of image i) for
  GradCache chunks of `chunk` rows (see the module docstring): chunk k = rows
  [k·c, (k + 1)·c) of the result = view 1 of images [k·c/2, (k + 1)·c/2) followed by view 2
  of the images i ≡ k (mod n)."""
  n = 2 * batch // chunk
  if chunk % 2 or n * chunk != 2 * batch:
    raise ValueError(
      f"method.grad_cache_chunk={chunk} must be even and divide the {2 * batch} views of a "
      "batch (2 x batch_size)"
    )
  half = chunk // 2
  view1 = 2 * np.arange(batch).reshape(n, half)
  # images by residue mod n: [0, n, 2n, ..., 1, n + 1, ...] cut into n runs of c/2
  view2 = 1 + 2 * np.argsort(np.arange(batch) % n, kind="stable").reshape(n, half)
  return np.concatenate([view1, view2], axis=1).reshape(-1)


@dataclasses.dataclass(frozen=True)
class SimCLR(base.Method):
  net: EncoderWithHead
  view: augment.ViewParams | None
  preprocess: base.Preprocess
  temperature: float
  grad_cache_chunk: int = 0

  def init(self, rng, images) -> base.Variables:
    x = self.preprocess(images[:2])
    if self.view is not None:
      size = self.view.crop_size
      x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
    variables = self.net.init(rng, x, train=False)
    return base.Variables(variables["params"], variables.get("batch_stats", {}), {})

  def loss(self, params, batch_stats, method_state, images, rng, step):
    del step  # SimCLR has no schedule inside the loss.
    views = base.two_views(rng, images, self.view, self.preprocess)
    (features, z), new_batch_stats = self.embed(params, batch_stats, views)
    loss, acc = losses.nt_xent(z, self.temperature)
    metrics = {
      "loss": loss,
      "contrastive_acc": acc,
      "embedding_std": jnp.mean(jnp.std(losses.l2_normalize(z), axis=0)),
    }
    return loss, base.LossAux(
      new_batch_stats, method_state, metrics, multicrop.first_view(features, 2)
    )

  def embed(self, params, batch_stats, views):
    """((features [2B, D], z [2B, d]), new batch_stats), whole or in GradCache chunks."""

    def apply(bs, x):
      out, updates = self.net.apply(
        {"params": params, "batch_stats": bs}, x, train=True, mutable=["batch_stats"]
      )
      return out, updates.get("batch_stats", bs)

    chunk = self.grad_cache_chunk
    if not chunk or chunk >= views.shape[0]:
      return apply(batch_stats, views)
    order = grad_cache_order(views.shape[0] // 2, chunk)
    inverse = np.argsort(order)
    chunks = views[order].reshape((views.shape[0] // chunk, chunk) + views.shape[1:])
    body = jax.checkpoint(lambda bs, x: apply(bs, x)[::-1])  # (new bs, out)
    new_bs, (features, z) = jax.lax.scan(body, batch_stats, chunks)
    features = features.reshape((-1,) + features.shape[2:])[inverse]
    return (features, z.reshape((-1,) + z.shape[2:])[inverse]), new_bs


# The paper's ImageNet head (§B.1): a 2048-wide MLP to 128, BatchNorm after each layer, the
# output's included; τ = 0.1. grad_cache_chunk > 0 embeds the views in chunks (GradCache).
# fmt: off
DEFAULTS = dict(
  temperature=0.1, projector_hidden=(2048,), projector_dim=128, projector_bn=True,
  projector_out_bn=True, grad_cache_chunk=0,
)
# fmt: on


def create(config, total_steps: int) -> SimCLR:
  del total_steps  # no schedule inside SimCLR's loss
  m = config.method
  out_bn = bool(m.projector_out_bn)
  net = common.encoder_with_head(
    config,
    use_bn=bool(m.projector_bn),
    last_bias=not out_bn,
    last_bn=out_bn,
    last_bn_scale=True,
  )
  return SimCLR(
    net=net,
    view=base.view_params(config.augment),
    preprocess=base.Preprocess.from_config(config.dataset),
    temperature=float(m.temperature),
    grad_cache_chunk=int(m.grad_cache_chunk),
  )
