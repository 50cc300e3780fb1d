#!/usr/bin/env bash
# Regenerate the explorer's screenshots in docs/img/app-*.png: the browser test
# (tests/app/test_browser.py) run on a saved model, by default the demo's (run scripts/demo.sh first).
# Needs Chromium at /usr/bin/chromium (apt-get install chromium) and salfcbm[dev].
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-runs/demo/model}
PY=${PYTHON:-.venv/bin/python}
SALFCBM_APP_MODEL="$MODEL" SALFCBM_APP_SCREENSHOTS=docs/img HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False \
  "$PY" -m pytest -q -p no:cacheprovider tests/app/test_browser.py -s
