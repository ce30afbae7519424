"""The PyTorch side of `sslx.weights`, run by a Python environment with torch, timm and/or
torchvision (never imported by sslx itself).

    python torch_weights.py JOBS.json      # writes JOBS.json.out

JOBS.json is a list of jobs, run in order in this one process:

- {"op": "features", "weights": FILE, "meta": {...}, "images": NPY, "out": NPY}: builds the
  model the metadata names, loads FILE with strict=True, writes its features of the uint8
  images [B, H, W, 3] preprocessed with the recorded mean and std.
- {"op": "create", "library": "timm"|"torchvision", "model": NAME, "pretrained": bool,
  "kwargs": {...}, "out": FILE, ["randomize_bn": bool, "images": NPY, "features": NPY]}:
  builds a model (downloading published weights when pretrained), writes its encoder's state
  dict (no classifier) as safetensors, and optionally its features of some images.
- {"op": "convert", "path": PTH, "out": FILE}: a torch state dict file -> safetensors.
"""

import json
import re
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

torch.set_grad_enabled(False)


def build(library, name, kwargs, modifications, pretrained=False):
  if library == "timm":
    import timm

    model = timm.create_model(name, pretrained=pretrained, **kwargs)
  elif library == "torchvision":
    import torchvision

    weights = "DEFAULT" if pretrained else None
    model = getattr(torchvision.models, name)(weights=weights, **kwargs)
  else:
    raise ValueError(f"unknown library {library!r}")
  for mod in modifications:
    attr, expr = mod.split("=", 1)
    if expr == "Identity":
      setattr(model, attr, torch.nn.Identity())
    else:
      m = re.fullmatch(r"Conv2d\((\d+),(\d+),(\d+),(\d+),(\d+),bias=False\)", expr)
      if not m:
        raise ValueError(f"unknown modification {mod!r}")
      a, b, k, s, p = map(int, m.groups())
      setattr(model, attr, torch.nn.Conv2d(a, b, k, s, p, bias=False))
  return model.eval()


def encoder_state(model, library):
  sd = model.state_dict()
  if library == "torchvision":  # the classifier is not part of the encoder
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
  return {k: v.contiguous() for k, v in sd.items()}


def features(model, images_path, mean, std):
  x = torch.from_numpy(np.load(images_path)).float().div(255.0).permute(0, 3, 1, 2)
  x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
  return model(x).numpy()


def randomize_bn(model, seed=0):
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
      m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
      m.weight.copy_(torch.rand(n, generator=g) + 0.5)
      m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def run(job):
  op = job["op"]
  if op == "features":
    meta = job["meta"]
    model = build(meta["library"], meta["model"], meta["kwargs"], meta["modifications"])
    model.load_state_dict(load_file(job["weights"]), strict=True)
    np.save(job["out"], features(model, job["images"], meta["mean"], meta["std"]))
    return {"model": meta["model"]}
  if op == "create":
    torch.manual_seed(job.get("seed", 0))
    mods = ["fc=Identity"] if job["library"] == "torchvision" else []
    model = build(job["library"], job["model"], job["kwargs"], mods, job["pretrained"])
    if job.get("randomize_bn"):
      randomize_bn(model)
    save_file(encoder_state(model, job["library"]), job["out"])
    if job.get("images"):
      mean, std = job.get("mean", (0.0, 0.0, 0.0)), job.get("std", (1.0, 1.0, 1.0))
      np.save(job["features"], features(model, job["images"], mean, std))
    return {"model": job["model"], "class": type(model).__name__}
  if op == "convert":
    sd = torch.load(job["path"], map_location="cpu")
    for key in ("state_dict", "model", "teacher"):
      if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
        sd = sd[key]
        break
    save_file({k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}, job["out"])
    return {"keys": len(sd)}
  raise ValueError(f"unknown op {op!r}")


def main(path):
  with open(path) as f:
    jobs = json.load(f)
  results = [run(job) for job in jobs]
  with open(path + ".out", "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv[1])
