#!/usr/bin/env bash
# The main job: train and explain a SALF-CBM end to end on the built-in procedural scenes (CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
.venv/bin/salfcbm demo --out runs/demo "$@"
