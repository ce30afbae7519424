#!/usr/bin/env bash
# Builds a second PyTorch peer with current releases (torch 2.13 CPU, timm 1.0.31, torchvision
# 0.29.1) in DIR, so the weight tests can check that exported files load in them too:
#
#   bash tools/current_peer_env.sh .peer-current
#   SSLX_PEER_PYTHON=.peer-current/bin/python python -m pytest -q tests/test_weights.py
#
# PyPI's torchvision wheel is built against CUDA torch and its custom ops (nms, roi_align, ...)
# cannot load beside the CPU torch; ResNets and ViTs use none of them, so a sitecustomize.py
# skips the two modules that register those ops and the rest of torchvision imports normally.
set -euo pipefail
dir="${1:?usage: current_peer_env.sh DIR}"
python3 -m venv "$dir"
"$dir/bin/pip" install -q torch==2.13.0
"$dir/bin/pip" install -q --no-deps timm==1.0.31 torchvision==0.29.1 safetensors==0.8.0 \
  pyyaml numpy pillow
site="$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat > "$site/sitecustomize.py" <<'PY'
import sys
import types

for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
  sys.modules[_name] = types.ModuleType(_name)
PY
"$dir/bin/python" -c "import timm, torchvision; print('peer:', 'timm', timm.__version__, 'torchvision', torchvision.__version__)"
