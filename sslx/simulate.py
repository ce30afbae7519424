r"""An interactive toy of contrastive learning: InfoNCE on a circle.

    python -m sslx simulate --out sim.html        # self-contained page (inline JS, no network)
    python -m sslx simulate --png sim.png --gif sim.gif --temperature 0.15 --steps 1500

The world: `num_classes` blobs of source points x_i in a 2-D input plane (colour = true class;
the algorithm never sees it). Each point owns a free angle θ_i, its embedding
e_i = (cos θ_i, sin θ_i) on the unit circle (normalised 2-D embeddings).

The encoder is the nearest-neighbour lookup: an input v is embedded as e_{nn(v)}, where nn(v) is
the source point closest to v. One step:
  1. draw a batch of B sources; make two views of each, v = x_i + strength · ε (Gaussian noise);
  2. embed the 2B views through the lookup;
  3. take NT-Xent / InfoNCE over the 2B views (SimCLR's loss, temperature τ): each view's
     positive is the other view of its source, the other 2B − 2 views are negatives;
  4. plain SGD on the angles with a fixed learning rate.

Why this shows the dynamics honestly: two views only pull *different* points together when the
noise carries a view across into a neighbour's cell. So the augmentation decides which points
become positives of each other (the "augmentation graph" view of contrastive learning): with
very weak augmentation (≈0.02) every positive pair is the same point twice, only the repulsion
acts and the classes never form (instance discrimination without any semantic pull); with noise
comparable to the spacing of points inside a class, chains of positives run through each class
and classes condense into clusters. τ sets how sharply the repulsion focuses on the nearest
negatives: low τ (0.05) gives sharp clumps that break classes into fragments, τ ≈ 0.1–0.2 gives
clean class clusters, high τ (≥ 0.5) gives soft, weak gradients (they scale as 1/τ) under which
the classes stay blended. The page (JavaScript) and `simulate` (JAX) run the same dynamics.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from sslx import paths


@dataclasses.dataclass(frozen=True)
class SimConfig:
  num_classes: int = 8
  points_per_class: int = 40
  class_std: float = 0.3  # spread of a class's sources in the input plane
  radius: float = 2.0  # class centres sit on a circle of this radius
  temperature: float = 0.15  # τ of InfoNCE
  strength: float = 0.25  # std of the augmentation noise around a source
  batch_size: int = 64  # B sources → 2B views per step
  lr: float = 0.3  # SGD step on the angles (times N / B, so a point moves alike
  # whatever the batch size)
  seed: int = 0


def make_sources(cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
  """Returns (x [N, 2] float32 source points, y [N] int class labels), N = K · n."""
  rng = np.random.default_rng(cfg.seed)
  k = cfg.num_classes
  ang = 2 * np.pi * np.arange(k) / k
  centres = cfg.radius * np.stack([np.cos(ang), np.sin(ang)], 1)
  y = np.repeat(np.arange(k), cfg.points_per_class)
  x = centres[y] + cfg.class_std * rng.standard_normal((len(y), 2))
  return x.astype(np.float32), y.astype(np.int32)


def init_angles(cfg: SimConfig, n: int) -> np.ndarray:
  """[N] angles, uniform on the circle (no structure to begin with)."""
  return np.random.default_rng(cfg.seed + 1).uniform(0, 2 * np.pi, n).astype(np.float32)


def info_nce(theta, idx, temperature):
  """NT-Xent over the views idx [2B] (rows i and i + B are the two views of one source);
  theta [N] the angles. Returns the scalar loss."""
  t = theta[idx]
  m = t.shape[0]
  b = m // 2
  sims = jnp.cos(t[:, None] - t[None, :])  # [2B, 2B] cosine similarity
  logits = jnp.where(jnp.eye(m, dtype=bool), -jnp.inf, sims / temperature)
  pos = jnp.concatenate([jnp.arange(b, m), jnp.arange(b)])
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(logp[jnp.arange(m), pos])


@functools.partial(jax.jit, static_argnames=("batch_size",))
def sgd_step(theta, x, rng, temperature, strength, lr, batch_size: int):
  """One InfoNCE step. theta [N], x [N, 2] → (new theta [N], loss)."""
  n = x.shape[0]
  k_batch, k1, k2 = jax.random.split(rng, 3)
  src = jax.random.permutation(k_batch, n)[:batch_size]
  views = jnp.concatenate(
    [
      x[src] + strength * jax.random.normal(k1, (batch_size, 2)),
      x[src] + strength * jax.random.normal(k2, (batch_size, 2)),
    ]
  )
  # The encoder: each view is embedded by its nearest source point's angle.
  idx = jnp.argmin(jnp.sum((views[:, None, :] - x[None, :, :]) ** 2, -1), axis=1)
  loss, grad = jax.value_and_grad(info_nce)(theta, idx, temperature)
  return theta - lr * (n / batch_size) * grad, loss


def separation_score(theta, labels) -> float:
  """Mean silhouette of the classes on the circle (chord distance): ≈0 for no class
  structure, → 1 for tight, well separated class clusters; fragmented or blended classes
  score in between."""
  theta = np.asarray(theta, np.float64)
  labels = np.asarray(labels)
  e = np.stack([np.cos(theta), np.sin(theta)], 1)
  d = np.sqrt(np.maximum(2.0 - 2.0 * e @ e.T, 0.0))
  classes = np.unique(labels)
  onehot = (labels[:, None] == classes[None, :]).astype(np.float64)  # [N, K]
  counts = onehot.sum(0)
  sums = d @ onehot  # [N, K]
  own = labels[:, None] == classes[None, :]
  a = sums[own] / np.maximum(counts[np.argmax(own, 1)] - 1, 1)
  others = np.where(own, np.inf, sums / counts)
  b = others.min(1)
  return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-12)))


def count_clusters(theta, gap_degrees: float = 10.0) -> int:
  """Number of groups on the circle separated by empty arcs wider than `gap_degrees`
  (0 when the points cover the circle with no such gap)."""
  t = np.sort(np.mod(np.asarray(theta, np.float64), 2 * np.pi))
  gaps = np.diff(np.concatenate([t, [t[0] + 2 * np.pi]]))
  return int((gaps > np.deg2rad(gap_degrees)).sum())


def simulate(cfg: SimConfig = SimConfig(), steps: int = 1500, record_every: int = 0) -> dict:
  """Runs `steps` InfoNCE steps. Returns {"x" [N,2], "labels" [N], "theta" [N] final angles,
  "losses" [steps], "separation" (final score), "clusters", "frames": [(step, theta [N])]
  every `record_every` steps (none if 0)}."""
  x, y = make_sources(cfg)
  theta = jnp.asarray(init_angles(cfg, len(y)))
  xj = jnp.asarray(x)
  rng = jax.random.PRNGKey(cfg.seed)
  b = min(cfg.batch_size, len(y))
  losses, frames = [], [(0, np.asarray(theta))] if record_every else []
  for i in range(steps):
    theta, loss = sgd_step(
      theta, xj, jax.random.fold_in(rng, i), cfg.temperature, cfg.strength, cfg.lr, b
    )
    losses.append(loss)
    if record_every and (i + 1) % record_every == 0:
      frames.append((i + 1, np.asarray(theta)))
  theta = np.asarray(theta)
  return {
    "x": x,
    "labels": y,
    "theta": theta,
    "losses": np.asarray(jnp.stack(losses)),
    "separation": separation_score(theta, y),
    "clusters": count_clusters(theta),
    "frames": frames,
    "config": cfg,
  }


def _draw(fig, x, y, theta, title):
  import matplotlib.pyplot as plt

  fig.clf()
  ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  cmap = plt.get_cmap("tab10")
  ax1.scatter(x[:, 0], x[:, 1], c=[cmap(c % 10) for c in y], s=10)
  ax1.set_title("input plane (colour = true class)")
  ax1.set_aspect("equal")
  ax2.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.8"))
  r = 1.0 + 0.04 * (np.arange(len(y)) % 5)  # small radial jitter: overlaps visible
  ax2.scatter(r * np.cos(theta), r * np.sin(theta), c=[cmap(c % 10) for c in y], s=10)
  ax2.set_xlim(-1.35, 1.35)
  ax2.set_ylim(-1.35, 1.35)
  ax2.set_aspect("equal")
  ax2.axis("off")
  ax2.set_title(title)


def _matplotlib():
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError(
      "sslx.simulate PNG/GIF output needs matplotlib: pip install 'sslx[plots]'"
    ) from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save_png(result: dict, out: str) -> str:
  """Writes the input plane and the final circle embedding side by side."""
  plt = _matplotlib()
  cfg = result["config"]
  fig = plt.figure(figsize=(9, 4.5))
  _draw(
    fig,
    result["x"],
    result["labels"],
    result["theta"],
    f"τ={cfg.temperature:g}, strength={cfg.strength:g}: separation "
    f"{result['separation']:.2f}, {result['clusters']} groups",
  )
  fig.tight_layout()
  paths.save(out, lambda f: fig.savefig(f, format=paths.file_format(out), dpi=80))
  plt.close(fig)
  return out


def save_gif(result: dict, out: str, ms_per_frame: int = 120) -> str:
  """Animates result["frames"] (run `simulate` with record_every > 0)."""
  plt = _matplotlib()
  from PIL import Image

  if not result["frames"]:
    raise ValueError("no frames recorded: call simulate(..., record_every=N) with N > 0")
  cfg = result["config"]
  fig = plt.figure(figsize=(8, 4))
  images = []
  for step, theta in result["frames"]:
    _draw(
      fig,
      result["x"],
      result["labels"],
      theta,
      f"τ={cfg.temperature:g} strength={cfg.strength:g} step {step}",
    )
    fig.canvas.draw()
    images.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
  plt.close(fig)
  paths.save(
    out,
    lambda f: images[0].save(
      f, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0
    ),
  )
  return out


def write_html(out: str, cfg: SimConfig = SimConfig()) -> str:
  """Writes the self-contained interactive page (inline JS and CSS, nothing fetched)."""
  settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
  html = _PAGE.replace("__DEFAULTS__", json.dumps(settings))
  paths.write_text(out, html)
  return out


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>sslx: contrastive learning on a circle</title>
<style>
 body { font-family: sans-serif; margin: 16px; color: #222; max-width: 1000px; }
 .row { display: flex; gap: 16px; flex-wrap: wrap; }
 canvas { border: 1px solid #ccc; background: #fff; }
 .controls { display: grid; grid-template-columns: 180px 240px 60px; gap: 6px 10px;
             align-items: center; margin: 12px 0; }
 .stats span { display: inline-block; min-width: 150px; font-family: monospace; }
 button { margin-right: 6px; padding: 4px 12px; }
 p.note { font-size: 13px; color: #555; }
</style></head>
<body>
<h2>Contrastive learning (InfoNCE) on a circle</h2>
<p class="note">Left: source points in the input plane, coloured by their true class (the
algorithm never sees colours). Right: each point's learned embedding, an angle on the unit circle.
Each step draws a batch of sources, makes two noisy views of each (augmentation), embeds each
view by its nearest source point and takes one SGD step on SimCLR's InfoNCE loss: the two views of
a source attract, all other views in the batch repel. Try τ = 0.05 (sharp, fragmented), 0.15
(clean class clusters), 1.0 (blended); and augmentation 0.02 (never learns classes).</p>
<div class="controls">
 <label for="tau">temperature τ</label>
 <input type="range" id="tau" min="0.05" max="1" step="0.01">
 <span id="tau-value"></span>
 <label for="strength">augmentation strength</label>
 <input type="range" id="strength" min="0" max="1" step="0.01">
 <span id="strength-value"></span>
 <label for="batch">batch size (sources)</label>
 <input type="range" id="batch" min="8" max="256" step="8">
 <span id="batch-value"></span>
</div>
<div>
 <button id="step">step</button><button id="play">play</button><button id="reset">reset</button>
</div>
<div class="stats">
 <span>step <b id="step-count">0</b></span>
 <span>loss <b id="loss-value">-</b></span>
 <span>separation <b id="separation-value">-</b></span>
 <span>groups <b id="clusters-value">-</b></span>
</div>
<div class="row">
 <canvas id="input" width="420" height="420"></canvas>
 <canvas id="circle" width="420" height="420"></canvas>
</div>
<p class="note">separation: mean silhouette of the true classes on the circle (0: no class
structure, 1: tight separated class clusters). groups: clumps on the circle separated by empty
arcs wider than 10°. Same dynamics as <code>sslx.simulate.simulate</code> (JAX).</p>
<script>
"use strict";
const D = __DEFAULTS__;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf"];
let rand, X, Y, theta, N, steps, playing = false, lastLoss = NaN;
const S = {tau: D.temperature, strength: D.strength, batch: D.batch_size};

function mulberry32(a) {
  return function() {
    a |= 0; a = a + 0x6D2B79F5 | 0;
    let t = Math.imul(a ^ a >>> 15, 1 | a);
    t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t;
    return ((t ^ t >>> 14) >>> 0) / 4294967296;
  };
}
function gauss() {
  let u = 0; while (u === 0) u = rand();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}
function reset() {
  rand = mulberry32(D.seed + 12345);
  const K = D.num_classes, n = D.points_per_class;
  X = []; Y = []; theta = [];
  for (let k = 0; k < K; k++) {
    const a = 2 * Math.PI * k / K;
    for (let i = 0; i < n; i++) {
      X.push([D.radius * Math.cos(a) + D.class_std * gauss(),
              D.radius * Math.sin(a) + D.class_std * gauss()]);
      Y.push(k);
    }
  }
  N = X.length;
  for (let i = 0; i < N; i++) theta.push(2 * Math.PI * rand());
  steps = 0; lastLoss = NaN;
  render();
}
function nearest(vx, vy) {
  let best = 0, bd = Infinity;
  for (let j = 0; j < N; j++) {
    const dx = X[j][0] - vx, dy = X[j][1] - vy, d = dx * dx + dy * dy;
    if (d < bd) { bd = d; best = j; }
  }
  return best;
}
// One step: batch of B sources, two noisy views each, NN-lookup encoder, NT-Xent, SGD.
function step() {
  const B = Math.min(S.batch, N), m = 2 * B, tau = S.tau;
  const perm = Array.from({length: N}, (_, i) => i);
  for (let i = 0; i < B; i++) {            // partial Fisher-Yates: B distinct sources
    const j = i + Math.floor(rand() * (N - i));
    const t = perm[i]; perm[i] = perm[j]; perm[j] = t;
  }
  const idx = new Array(m);
  for (let i = 0; i < B; i++) {
    const s = perm[i];
    idx[i] = nearest(X[s][0] + S.strength * gauss(), X[s][1] + S.strength * gauss());
    idx[i + B] = nearest(X[s][0] + S.strength * gauss(), X[s][1] + S.strength * gauss());
  }
  const t = idx.map(i => theta[i]);
  const g = new Float64Array(m);
  const logits = new Float64Array(m);
  let loss = 0;
  for (let a = 0; a < m; a++) {
    const pos = a < B ? a + B : a - B;
    let mx = -Infinity;
    for (let k = 0; k < m; k++) {
      logits[k] = k === a ? -Infinity : Math.cos(t[a] - t[k]) / tau;
      if (logits[k] > mx) mx = logits[k];
    }
    let z = 0;
    for (let k = 0; k < m; k++) if (k !== a) z += Math.exp(logits[k] - mx);
    const lse = mx + Math.log(z);
    loss += (lse - logits[pos]) / m;
    for (let k = 0; k < m; k++) {
      if (k === a) continue;
      // dL/dlogit_ak = (p_ak - [k = pos]) / m; dlogit_ak/dt_a = -sin(t_a - t_k) / tau
      const c = (Math.exp(logits[k] - lse) - (k === pos ? 1 : 0)) / m;
      const s = Math.sin(t[a] - t[k]) / tau;
      g[a] -= c * s; g[k] += c * s;
    }
  }
  const scale = D.lr * N / B;
  for (let a = 0; a < m; a++) theta[idx[a]] -= scale * g[a];
  steps++; lastLoss = loss;
}
function separation() {      // mean silhouette, chord distance on the circle
  const K = D.num_classes, cnt = new Array(K).fill(0);
  for (const y of Y) cnt[y]++;
  let total = 0;
  for (let i = 0; i < N; i++) {
    const sums = new Array(K).fill(0);
    for (let j = 0; j < N; j++) {
      sums[Y[j]] += Math.sqrt(Math.max(2 - 2 * Math.cos(theta[i] - theta[j]), 0));
    }
    const a = sums[Y[i]] / Math.max(cnt[Y[i]] - 1, 1);
    let b = Infinity;
    for (let k = 0; k < K; k++) if (k !== Y[i] && cnt[k] > 0) b = Math.min(b, sums[k] / cnt[k]);
    total += (b - a) / Math.max(a, b, 1e-12);
  }
  return total / N;
}
function groups() {
  const t = theta.map(v => ((v % (2 * Math.PI)) + 2 * Math.PI) % (2 * Math.PI)).sort((a, b) => a - b);
  let c = 0;
  for (let i = 0; i < t.length; i++) {
    const next = i + 1 < t.length ? t[i + 1] : t[0] + 2 * Math.PI;
    if (next - t[i] > 10 * Math.PI / 180) c++;
  }
  return c;
}
function render() {
  for (const k of ["tau", "strength", "batch"]) {
    document.getElementById(k).value = S[k];
    document.getElementById(k + "-value").textContent =
        k === "batch" ? String(S[k]) : Number(S[k]).toFixed(2);
  }
  document.getElementById("step-count").textContent = steps;
  document.getElementById("loss-value").textContent = isNaN(lastLoss) ? "-" : lastLoss.toFixed(3);
  document.getElementById("separation-value").textContent = separation().toFixed(3);
  document.getElementById("clusters-value").textContent = groups();
  const ci = document.getElementById("input").getContext("2d");
  ci.clearRect(0, 0, 420, 420);
  const sc = 420 / (2 * (D.radius + 4 * D.class_std));
  for (let i = 0; i < N; i++) {
    ci.fillStyle = COLORS[Y[i] % 10];
    ci.beginPath(); ci.arc(210 + sc * X[i][0], 210 - sc * X[i][1], 3, 0, 2 * Math.PI); ci.fill();
  }
  ci.strokeStyle = "#000"; ci.setLineDash([3, 3]);   // the augmentation noise (1 std) at point 0
  ci.beginPath(); ci.arc(210 + sc * X[0][0], 210 - sc * X[0][1], Math.max(sc * S.strength, 1),
                         0, 2 * Math.PI); ci.stroke(); ci.setLineDash([]);
  ci.fillStyle = "#555"; ci.font = "12px sans-serif";
  ci.fillText("input plane; dashed: augmentation noise (1 std)", 8, 412);
  const cc = document.getElementById("circle").getContext("2d");
  cc.clearRect(0, 0, 420, 420);
  cc.strokeStyle = "#ddd"; cc.beginPath(); cc.arc(210, 210, 160, 0, 2 * Math.PI); cc.stroke();
  for (let i = 0; i < N; i++) {
    const r = 160 + 6 * (i % 5);                      // small radial jitter: overlaps visible
    cc.fillStyle = COLORS[Y[i] % 10];
    cc.beginPath();
    cc.arc(210 + r * Math.cos(theta[i]), 210 - r * Math.sin(theta[i]), 3, 0, 2 * Math.PI);
    cc.fill();
  }
  cc.fillStyle = "#555"; cc.font = "12px sans-serif";
  cc.fillText("embeddings on the unit circle", 8, 412);
}
function loop() {
  if (!playing) return;
  for (let i = 0; i < 5; i++) step();
  render();
  requestAnimationFrame(loop);
}
for (const k of ["tau", "strength", "batch"]) {
  document.getElementById(k).addEventListener("input", e => {
    S[k] = Number(e.target.value); render();
  });
}
document.getElementById("step").onclick = () => { step(); render(); };
document.getElementById("play").onclick = e => {
  playing = !playing; e.target.textContent = playing ? "pause" : "play";
  if (playing) loop();
};
document.getElementById("reset").onclick = () => reset();
reset();
</script>
</body></html>
"""
