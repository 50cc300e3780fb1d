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
# Quantus 0.6 (test-only: tests/evaluation/test_quantus_crosscheck.py checks salfcbm's metrics against it).
# --no-deps because its metadata requires `opencv-python`, which clashes with the `opencv-python-headless`
# that grad-cam (the baselines extra) requires (both install the `cv2` module); its remaining imports are pure or already here,
# so they are installed by name. Not a pyproject extra for that reason: an extra would pull opencv-python.
if ! .venv/bin/python -c "import quantus" >/dev/null 2>&1; then
  echo "[setup] installing quantus==0.6.0 (test-only, --no-deps) and the packages it imports"
  .venv/bin/pip install -q --no-deps "quantus==0.6.0"
  .venv/bin/pip install -q "scikit-image>=0.19.3" "cachetools" "tqdm>=4.62.3" "pandas>=1.5.3" "scikit-learn>=0.24.2" \
    "scipy>=1.7.3" "matplotlib>=3.3.4"
  .venv/bin/python -c "import cv2" >/dev/null 2>&1 || .venv/bin/pip install -q "opencv-python-headless>=4.5.5.62"
fi
