"""Encoder weights out of sslx and into it: timm / torchvision parameter names, safetensors files.

Out (`export_encoder`): the encoder `method.encode` evaluates, found inside the method's
parameters by shape and confirmed by recomputing its features, written as a safetensors file in
one of three layouts:

- ``timm``: ViTs as timm's ``VisionTransformer`` (``vit_*`` models), ResNets as timm's
  ``resnet*``;
- ``torchvision``: ResNets as torchvision's ``resnet*``;
- ``safetensors``: sslx's own parameter paths (``params/block0/attn/qkv/kernel``,
  ``batch_stats/...``), which `init_from=file:` reads back into any encoder of that config.

Beside the weights (in the file's metadata and in ``<out>.json``) go the target library, the
model's name and constructor arguments, the changes to make to the constructed model before
loading (e.g. ``fc=Identity``: the file holds the encoder without a classifier) and the
preprocessing (mean, std over [0, 1] pixels; input size).

Layout conversions (PyTorch <- sslx):

- dense ``kernel [in, out]`` -> ``weight [out, in]``; conv ``kernel [kh, kw, in, out]`` ->
  ``weight [out, in, kh, kw]`` (the ViT's patch embedding is stored conv-shaped already);
- BatchNorm ``scale, bias, mean, var`` -> ``weight, bias, running_mean, running_var`` and a
  ``num_batches_tracked`` of 0;
- sslx's ViT gives the CLS token no position embedding (``cls + pos[0]`` is one free vector):
  timm's ``pos_embed`` gets a zero row for it on export, and on import the CLS token becomes
  ``cls_token + pos_embed[0]``.

In (`init_from`): ``timm:<name>`` / ``torchvision:<name>`` build the model (with its published
weights) in a Python environment with torch (`peer_python`) and hand its state dict over as a
safetensors file; ``file:<path>`` reads a safetensors file in any of the three layouts (or a
PyTorch ``.pth``/``.pt``/``.bin`` state dict, converted by the peer). The weights replace every
copy of the encoder in the train state (an EMA teacher starts equal to its student, as at
initialisation).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from sslx import models
from sslx.methods import base
from sslx.models.resnet import ResNet
from sslx.models.vit import ViT

FORMATS = ("timm", "torchvision", "safetensors")
PEER_SCRIPT = os.path.join(os.path.dirname(__file__), "torch_weights.py")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_VIT_TIMM_BASE = {
  # timm registry names whose defaults the recorded kwargs override entirely
  "vit_tiny": "vit_tiny_patch16_224",
  "vit_small": "vit_small_patch16_224",
  "vit_base": "vit_base_patch16_224",
  "vit_large": "vit_large_patch16_224",
  "vit_huge": "vit_huge_patch14_224",
  "vit_giant": "vit_giant_patch14_224",
}
_RESNETS = {((2, 2, 2, 2), "basic"): "resnet18", ((3, 4, 6, 3), "basic"): "resnet34"}
_RESNETS[((3, 4, 6, 3), "bottleneck")] = "resnet50"


class NoCounterpart(ValueError):
  """The encoder has no equivalent model in the requested library."""


# --------------------------------------------------------------------------------------------
# Which library can take which encoder


def _vit_problem(enc: ViT) -> str | None:
  if enc.gelu_approximate:
    return "gelu_approximate=True (tanh GELU) has no timm ViT with the same maths"
  return None


def _resnet_problem(enc: ResNet) -> str | None:
  key = (tuple(enc.stage_sizes), enc.block)
  if key not in _RESNETS:
    return f"stage_sizes {tuple(enc.stage_sizes)} / {enc.block} blocks is not resnet18/34/50"
  if tuple(enc.widths) != (64, 128, 256, 512):
    return f"widths {tuple(enc.widths)} differ from the libraries' (64, 128, 256, 512)"
  if enc.bn_epsilon != 1e-5:
    return f"bn_epsilon={enc.bn_epsilon} differs from PyTorch's BatchNorm2d eps 1e-5"
  return None


def formats_for(encoder: nn.Module) -> tuple[str, ...]:
  """The export formats that can take `encoder` (safetensors always can)."""
  if isinstance(encoder, ViT) and _vit_problem(encoder) is None:
    return ("timm", "safetensors")
  if isinstance(encoder, ResNet) and _resnet_problem(encoder) is None:
    return ("timm", "torchvision", "safetensors")
  return ("safetensors",)


def check_format(encoder: nn.Module, fmt: str, model_name: str) -> None:
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}: valid formats are {', '.join(FORMATS)}")
  ok = formats_for(encoder)
  if fmt in ok:
    return
  why = ""
  if isinstance(encoder, ViT):
    why = _vit_problem(encoder) or "torchvision's ViTs use other parameter names; use timm"
  elif isinstance(encoder, ResNet):
    why = _resnet_problem(encoder) or ""
  else:
    why = f"{type(encoder).__name__} is an sslx-only architecture"
  raise NoCounterpart(
    f"model {model_name!r} cannot be exported as {fmt}: {why}. "
    f"Formats that can take {model_name!r}: {', '.join(ok)}"
  )


def describe(encoder: nn.Module, fmt: str, image_size: int, model_name: str = "") -> dict:
  """Target model name, constructor kwargs and post-construction changes for `fmt`."""
  if fmt == "safetensors":
    return {"library": "sslx", "model": type(encoder).__name__, "kwargs": {}, "modifications": []}
  if isinstance(encoder, ViT):
    kwargs = dict(
      img_size=image_size,
      patch_size=encoder.patch_size,
      embed_dim=encoder.dim,
      depth=encoder.depth,
      num_heads=encoder.num_heads,
      mlp_ratio=float(encoder.mlp_ratio),
      num_classes=0,
      global_pool="token" if encoder.pool == "cls" else "avg",
      class_token=True,
      fc_norm=False,  # sslx normalises the tokens, then pools
    )
    name = _VIT_TIMM_BASE.get(model_name, "vit_base_patch16_224")
    return {"library": "timm", "model": name, "kwargs": kwargs, "modifications": []}
  name = _RESNETS[(tuple(encoder.stage_sizes), encoder.block)]
  mods = []
  if encoder.stem == "cifar":
    mods += [f"conv1=Conv2d(3,{encoder.widths[0]},3,1,1,bias=False)", "maxpool=Identity"]
  if fmt == "timm":
    return {"library": "timm", "model": name, "kwargs": {"num_classes": 0}, "modifications": mods}
  return {
    "library": "torchvision",
    "model": name,
    "kwargs": {},
    "modifications": mods + ["fc=Identity"],
  }


# --------------------------------------------------------------------------------------------
# Name and layout mapping


def _dense_out(p, prefix):
  return {f"{prefix}.weight": np.asarray(p["kernel"]).T, f"{prefix}.bias": np.asarray(p["bias"])}


def _ln_out(p, prefix):
  return {f"{prefix}.weight": np.asarray(p["scale"]), f"{prefix}.bias": np.asarray(p["bias"])}


def _conv_out(kernel):
  return np.ascontiguousarray(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))


def vit_to_timm(params) -> dict:
  d = params["cls_token"].shape[-1]
  out = {
    "cls_token": np.asarray(params["cls_token"]),
    "pos_embed": np.concatenate(
      [np.zeros((1, 1, d), np.float32), np.asarray(params["pos_embed"])], 1
    ),
    "patch_embed.proj.weight": _conv_out(params["patch_embed"]["kernel"]),
    "patch_embed.proj.bias": np.asarray(params["patch_embed"]["bias"]),
  }
  out.update(_ln_out(params["norm"], "norm"))
  i = 0
  while f"block{i}" in params:
    b, t = params[f"block{i}"], f"blocks.{i}"
    out.update(_ln_out(b["norm1"], f"{t}.norm1"))
    out.update(_dense_out(b["attn"]["qkv"], f"{t}.attn.qkv"))
    out.update(_dense_out(b["attn"]["proj"], f"{t}.attn.proj"))
    out.update(_ln_out(b["norm2"], f"{t}.norm2"))
    out.update(_dense_out(b["mlp"]["fc1"], f"{t}.mlp.fc1"))
    out.update(_dense_out(b["mlp"]["fc2"], f"{t}.mlp.fc2"))
    i += 1
  return out


def _resnet_names(params) -> list[tuple[str, str]]:
  """(sslx module name, PyTorch module prefix) for every conv/BN of a ResNet."""
  pairs = [("stem_conv", "conv1"), ("stem_bn", "bn1")]
  for name in sorted(params):
    if not name.startswith("stage"):
      continue
    stage, block = name[len("stage") :].split("_block")
    t = f"layer{stage}.{int(block) - 1}"
    for sub in params[name]:
      if sub == "proj_conv":
        pairs.append((f"{name}/proj_conv", f"{t}.downsample.0"))
      elif sub == "proj_bn":
        pairs.append((f"{name}/proj_bn", f"{t}.downsample.1"))
      else:
        pairs.append((f"{name}/{sub}", f"{t}.{sub}"))
  return pairs


def _get(tree, path):
  for k in path.split("/"):
    tree = tree[k]
  return tree


def resnet_to_torch(params, batch_stats) -> dict:
  out = {}
  for ours, theirs in _resnet_names(params):
    p = _get(params, ours)
    if "kernel" in p:
      out[f"{theirs}.weight"] = _conv_out(p["kernel"])
    else:
      s = _get(batch_stats, ours)
      out[f"{theirs}.weight"] = np.asarray(p["scale"])
      out[f"{theirs}.bias"] = np.asarray(p["bias"])
      out[f"{theirs}.running_mean"] = np.asarray(s["mean"])
      out[f"{theirs}.running_var"] = np.asarray(s["var"])
      out[f"{theirs}.num_batches_tracked"] = np.zeros((), np.int64)
  return out


def _take(sd: dict, key: str, used: set):
  if key not in sd:
    raise KeyError(key)
  used.add(key)
  return np.asarray(sd[key], np.float32)


def _dense_in(sd, prefix, used):
  return {
    "kernel": _take(sd, f"{prefix}.weight", used).T,
    "bias": _take(sd, f"{prefix}.bias", used),
  }


def _ln_in(sd, prefix, used):
  return {"scale": _take(sd, f"{prefix}.weight", used), "bias": _take(sd, f"{prefix}.bias", used)}


def _conv_in(w):
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def timm_to_vit(sd: dict, like) -> dict:
  """timm ViT state dict -> sslx ViT params shaped as `like` (position embeddings resized
  bicubically to `like`'s grid when the checkpoint's differs)."""
  used: set = set()
  pos = _take(sd, "pos_embed", used)
  cls = _take(sd, "cls_token", used)
  n = pos.shape[1]
  if math.isqrt(n - 1) ** 2 == n - 1:  # a position for the CLS token: fold it in
    cls, pos = cls + pos[:, :1], pos[:, 1:]
  want = like["pos_embed"].shape
  if pos.shape != want:
    g0, g1 = math.isqrt(pos.shape[1]), math.isqrt(want[1])
    grid = pos.reshape(1, g0, g0, -1)
    pos = np.asarray(jax.image.resize(grid, (1, g1, g1, want[2]), "bicubic")).reshape(want)
  out = {
    "cls_token": cls,
    "pos_embed": pos,
    "patch_embed": {
      "kernel": _conv_in(_take(sd, "patch_embed.proj.weight", used)),
      "bias": _take(sd, "patch_embed.proj.bias", used),
    },
    "norm": _ln_in(sd, "norm", used),
  }
  i = 0
  while f"blocks.{i}.norm1.weight" in sd:
    t = f"blocks.{i}"
    out[f"block{i}"] = {
      "norm1": _ln_in(sd, f"{t}.norm1", used),
      "attn": {
        "qkv": _dense_in(sd, f"{t}.attn.qkv", used),
        "proj": _dense_in(sd, f"{t}.attn.proj", used),
      },
      "norm2": _ln_in(sd, f"{t}.norm2", used),
      "mlp": {
        "fc1": _dense_in(sd, f"{t}.mlp.fc1", used),
        "fc2": _dense_in(sd, f"{t}.mlp.fc2", used),
      },
    }
    i += 1
  _check_unused(sd, used, ("head.", "fc_norm."))
  if "mask_token" in like:
    out["mask_token"] = np.asarray(like["mask_token"])
  return out


def torch_to_resnet(sd: dict, like_params, like_stats) -> tuple[dict, dict]:
  used: set = set()
  params, stats = {}, {}
  for ours, theirs in _resnet_names(like_params):
    lp = _get(like_params, ours)
    if "kernel" in lp:
      params[ours] = {"kernel": _conv_in(_take(sd, f"{theirs}.weight", used))}
    else:
      params[ours] = {
        "scale": _take(sd, f"{theirs}.weight", used),
        "bias": _take(sd, f"{theirs}.bias", used),
      }
      stats[ours] = {
        "mean": _take(sd, f"{theirs}.running_mean", used),
        "var": _take(sd, f"{theirs}.running_var", used),
      }
      used.add(f"{theirs}.num_batches_tracked")
  _check_unused(sd, used, ("fc.",))
  return _nest(params), _nest(stats)


def _nest(flat: dict) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _check_unused(sd, used, ignore_prefixes):
  left = sorted(k for k in sd if k not in used and not k.startswith(ignore_prefixes))
  if left:
    raise ValueError(
      f"the checkpoint has parameters the sslx encoder has no place for: {left[:8]}"
      f"{' ...' if len(left) > 8 else ''} (layer scale, register tokens or other extras)"
    )


# --------------------------------------------------------------------------------------------
# Finding the evaluated encoder inside a method's variables


def encoder_module(config) -> nn.Module:
  return models.create_model(config.model.name, **base.model_kwargs(config.model))


def _shapes(tree):
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _subtrees(tree, want: dict, path=()):
  """Paths of dict subtrees of `tree` holding every leaf path of `want` with its shape."""
  if not isinstance(tree, dict) or not want:
    return []
  found = []
  flat = _shapes(tree)
  # a ViT's position embedding is sized by the training crop: any length matches
  if all(flat.get(k) == s or (k[-1] == "pos_embed" and k in flat) for k, s in want.items()):
    found.append(path)
  for k, v in tree.items():
    if isinstance(v, dict):
      found += _subtrees(v, want, path + (k,))
  return found


def _at(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _replace(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _replace(tree[path[0]], path[1:], value)
  return out


def _merge(old, new):
  """`new`'s leaves over `old` (keys only in `old`, e.g. a ViT's mask token, are kept)."""
  if not isinstance(old, dict):
    return new
  return {k: (_merge(v, new[k]) if k in new else v) for k, v in old.items()}


def _encoder_template(encoder, image_size):
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  v = jax.eval_shape(lambda x: encoder.init(jax.random.PRNGKey(0), x, train=False), x)
  return nn.unbox(v.get("params", {})), nn.unbox(v.get("batch_stats", {}))


def _to_dict(tree):
  return jax.tree.map(np.asarray, jax.device_get(_plain(tree)))


def _plain(tree):
  if hasattr(tree, "items") and not isinstance(tree, dict):
    tree = dict(tree)
  if isinstance(tree, dict):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def find_encoder(method, encoder, params, batch_stats, images: np.ndarray, atol=1e-5):
  """(params, batch_stats) of the encoder `method.encode` evaluates, located in the method's
  variables by shape and confirmed by equal features on `images`."""
  params, batch_stats = _to_dict(params), _to_dict(batch_stats)
  tp, ts = _encoder_template(encoder, images.shape[1])
  p_paths = _subtrees(params, _shapes(tp))
  s_paths = _subtrees(batch_stats, _shapes(ts)) if ts else [None]
  if not p_paths or not s_paths:
    raise ValueError(
      f"no subtree of the method's parameters has the shapes of config.model "
      f"({type(encoder).__name__}); is the config the one the checkpoint was trained with?"
    )
  want = np.asarray(jax.jit(method.encode)(params, batch_stats, jnp.asarray(images)))
  x = method.encoder_input(jnp.asarray(images))
  for pp in p_paths:
    for sp in s_paths:
      ep = _pick(_at(params, pp), tp)
      es = {} if sp is None else _pick(_at(batch_stats, sp), ts)
      got = np.asarray(_features(encoder, ep, es, x))
      if got.shape == want.shape and np.allclose(got, want, atol=atol, rtol=1e-4):
        return ep, es
  raise ValueError(
    "found parameters shaped like config.model, but none gives the features method.encode "
    "gives: the method evaluates something other than its plain encoder"
  )


def _pick(tree, template):
  return {k: (_pick(tree[k], v) if isinstance(v, dict) else tree[k]) for k, v in template.items()}


def _features(encoder, params, batch_stats, x):
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return jax.jit(lambda v, x: encoder.apply(v, x, train=False)["pre_logits"])(variables, x)


def encoder_features(encoder, params, batch_stats, images, mean, std) -> np.ndarray:
  """sslx's features of uint8 images [B, H, W, 3] with the recorded preprocessing."""
  x = (jnp.asarray(images, jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)
  return np.asarray(_features(encoder, params, batch_stats, x))


# --------------------------------------------------------------------------------------------
# Files


def to_state_dict(encoder, fmt: str, params, batch_stats) -> dict:
  if fmt == "safetensors":
    flat = {
      "params/" + "/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()
    }
    for k, v in traverse_util.flatten_dict(batch_stats or {}).items():
      flat["batch_stats/" + "/".join(k)] = np.asarray(v)
    return flat
  if isinstance(encoder, ViT):
    return vit_to_timm(params)
  return resnet_to_torch(params, batch_stats)


def export(
  encoder, model_name: str, fmt: str, params, batch_stats, preprocess, image_size, out
) -> dict:
  """Writes the encoder to `out` (safetensors) and `out + ".json"`; returns the metadata."""
  check_format(encoder, fmt, model_name)
  sd = {
    k: np.ascontiguousarray(v) for k, v in to_state_dict(encoder, fmt, params, batch_stats).items()
  }
  meta = dict(
    describe(encoder, fmt, image_size, model_name),
    format=fmt,
    sslx_model=model_name,
    mean=list(preprocess.mean),
    std=list(preprocess.std),
    input_size=[3, image_size, image_size],
  )
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  safetensors.numpy.save_file(sd, out, metadata={"sslx": json.dumps(meta)})
  with open(out + ".json", "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def read_state_dict(path: str) -> dict:
  return dict(safetensors.numpy.load_file(path))


def layout_of(sd: dict) -> str:
  if any(k.startswith("params/") for k in sd):
    return "sslx"
  if "patch_embed.proj.weight" in sd:
    return "timm_vit"
  if "layer1.0.conv1.weight" in sd:
    return "torch_resnet"
  raise ValueError(f"unrecognised weights layout (first keys: {sorted(sd)[:5]})")


def load_into(encoder, sd: dict, like_params, like_stats) -> tuple[dict, dict]:
  """The encoder's (params, batch_stats) from a state dict in any supported layout, checked
  leaf by leaf against the shapes of `like_*` (the config's encoder)."""
  kind = layout_of(sd)
  if kind == "sslx":
    flat_p = {tuple(k.split("/")[1:]): v for k, v in sd.items() if k.startswith("params/")}
    flat_s = {tuple(k.split("/")[1:]): v for k, v in sd.items() if k.startswith("batch_stats/")}
    params, stats = (
      traverse_util.unflatten_dict(flat_p),
      traverse_util.unflatten_dict(flat_s) if flat_s else {},
    )
  elif kind == "timm_vit":
    if not isinstance(encoder, ViT):
      raise ValueError(f"the weights are a timm ViT but config.model is {type(encoder).__name__}")
    params, stats = timm_to_vit(sd, like_params), {}
  else:
    if not isinstance(encoder, ResNet):
      raise ValueError(f"the weights are a ResNet but config.model is {type(encoder).__name__}")
    params, stats = torch_to_resnet(sd, like_params, like_stats)
  for name, got, like in (("params", params, like_params), ("batch_stats", stats, like_stats)):
    g, w = _shapes(got), _shapes(like)
    missing = sorted("/".join(k) for k in w if k not in g and k[-1] != "mask_token")
    wrong = sorted(f"{'/'.join(k)} {g[k]} vs {w[k]}" for k in w if k in g and g[k] != w[k])
    if missing or wrong:
      raise ValueError(
        f"the weights do not fit config.model ({name}): missing {missing[:6]}, "
        f"shapes (weights vs config) {wrong[:6]}; set config.model's size options to match"
      )
  return _merge(_plain(like_params), params), (
    _merge(_plain(like_stats), stats) if like_stats else {}
  )


# --------------------------------------------------------------------------------------------
# The PyTorch side


def find_peer_python(explicit: str | None = None) -> str | None:
  for cand in (explicit, os.environ.get("SSLX_PEER_PYTHON")):
    if cand:
      return cand
  here = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".peer-venv", "bin", "python"
  )
  return here if os.path.exists(here) else None


def run_peer(peer_python: str, jobs: list[dict], timeout: int = 600) -> list[dict]:
  """Runs `jobs` (see torch_weights.py) in one subprocess of `peer_python`."""
  if not peer_python:
    raise ValueError(
      "this needs a Python environment with torch (and timm / torchvision): give "
      "--peer_python (export) or config.peer_python / SSLX_PEER_PYTHON (init_from)"
    )
  with tempfile.TemporaryDirectory() as tmp:
    spec = os.path.join(tmp, "jobs.json")
    with open(spec, "w") as f:
      json.dump(jobs, f)
    proc = subprocess.run(
      [peer_python, PEER_SCRIPT, spec], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
      raise RuntimeError(f"{peer_python} {PEER_SCRIPT} failed:\n{proc.stderr[-4000:]}")
    with open(spec + ".out") as f:
      return json.load(f)


def verify(
  peer_python: str, out: str, meta: dict, images: np.ndarray, sslx_feats: np.ndarray
) -> dict:
  """Reloads `out` in the target library (strict) and compares its features on `images`."""
  with tempfile.TemporaryDirectory() as tmp:
    img = os.path.join(tmp, "images.npy")
    np.save(img, images)
    feats = os.path.join(tmp, "feats.npy")
    run_peer(peer_python, [dict(op="features", weights=out, meta=meta, images=img, out=feats)])
    theirs = np.load(feats)
  diff = (
    float(np.max(np.abs(theirs - sslx_feats))) if theirs.shape == sslx_feats.shape else float("inf")
  )
  return {
    "max_abs_diff": diff,
    "library": meta["library"],
    "model": meta["model"],
    "kwargs": meta["kwargs"],
    "modifications": meta["modifications"],
    "feature_shape": list(theirs.shape),
  }


def fetch(
  peer_python: str, spec: str, pretrained: bool = True, kwargs: dict | None = None, out_dir=None
) -> str:
  """`timm:<name>` / `torchvision:<name>` / `file:<path>` -> a safetensors file path."""
  kind, _, name = spec.partition(":")
  if kind == "file" and not name.endswith(_TORCH_SUFFIXES):
    if not os.path.exists(name):
      raise FileNotFoundError(f"init_from={spec!r}: no file {name}")
    return name
  if kind not in ("timm", "torchvision", "file") or not name:
    raise ValueError(
      f"init_from={spec!r}: expected timm:<model>, torchvision:<model> or file:<path>"
    )
  out_dir = out_dir or tempfile.mkdtemp(prefix="sslx-init-")
  out = os.path.join(out_dir, "weights.safetensors")
  job = dict(
    op="create", library=kind, model=name, pretrained=pretrained, kwargs=kwargs or {}, out=out
  )
  if kind == "file":
    job = dict(op="convert", path=name, out=out)
  run_peer(peer_python, [job])
  return out


def init_variables(config, encoder, spec: str, params, batch_stats, method_state, peer_python=None):
  """Replaces every copy of the encoder in (params, batch_stats, method_state) by the weights
  `spec` names. Returns the three trees."""
  tp, ts = _encoder_template(encoder, config.dataset.image_size)
  trees = [_to_dict(params), _to_dict(batch_stats), _to_dict(method_state)]
  p_paths = _subtrees(trees[0], _shapes(tp))
  if not p_paths:
    raise ValueError(
      f"init_from={spec!r}: no copy of config.model found in the method's parameters"
    )
  like_p = _pick(_at(trees[0], p_paths[0]), tp)
  s_paths = _subtrees(trees[1], _shapes(ts)) if ts else []
  like_s = _pick(_at(trees[1], s_paths[0]), ts) if s_paths else {}
  path = fetch(find_peer_python(peer_python), spec)
  new_p, new_s = load_into(encoder, read_state_dict(path), like_p, like_s)
  for i, tree in enumerate(trees):
    for target, want in ((new_p, tp), (new_s, ts)):
      if want and isinstance(tree, dict):
        for p in _subtrees(tree, _shapes(want)):
          trees[i] = _replace(trees[i], p, _merge(_at(trees[i], p), target))
  return tuple(trees)


def _zeros(tree):
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)
