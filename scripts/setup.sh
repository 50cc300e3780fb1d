#!/usr/bin/env bash
# Create .venv (once) and install salfcbm with its development extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch + torchvision (a few minutes the first time)"
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" \
    || .venv/bin/pip install -q "torch>=2.1" "torchvision>=0.16"
fi
if ! .venv/bin/python -c "import salfcbm, pytest, captum, pytorch_grad_cam, mkdocs" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.salfcbm-installed ]; then
  echo "[setup] installing salfcbm[dev]"
  .venv/bin/pip install -q -e ".[dev]"
  touch .venv/.salfcbm-installed
fi
