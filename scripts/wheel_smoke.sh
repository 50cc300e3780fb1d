#!/usr/bin/env bash
# CI: build the wheel, install it into a clean venv (no repo on the path) and run the quick start from it:
# `salfcbm demo`, `salfcbm explain` on the demo run, the README's "Use" snippet, and a random-init backbone
# trained with `salfcbm train` then explained (and loaded) in new processes.
# Offline-capable: torch comes the way scripts/setup.sh gets it; the rest from the registry or pip's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${SALFCBM_WHEEL_DIR:-$(mktemp -d /tmp/salfcbm-wheel.XXXXXX)}
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
echo "[wheel] building in $WORK"
.venv/bin/python -m pip wheel -q --no-deps -w "$WORK/dist" . \
  || .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" .
"${PYTHON:-python3}" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" \
  || "$WORK/venv/bin/pip" install -q "torch>=2.1" "torchvision>=0.16"
"$WORK/venv/bin/pip" install -q "$WORK"/dist/salfcbm-*.whl
cd "$WORK"  # away from the checkout: `import salfcbm` must find the installed wheel
"$WORK/venv/bin/python" -c "import salfcbm, sys; assert '$REPO' not in salfcbm.__file__, salfcbm.__file__; print('salfcbm', salfcbm.__version__, 'from', salfcbm.__file__)"
"$WORK/venv/bin/salfcbm" --version
"$WORK/venv/bin/salfcbm" demo --out "$WORK/runs/demo" --quiet ${SALFCBM_WHEEL_DEMO_ARGS:-}
"$WORK/venv/bin/python" - "$WORK" <<'PY'
import sys
from torchvision.utils import save_image
from salfcbm.demo.scenes import SyntheticScenes
save_image(SyntheticScenes(n=1, split="test")[0][0], f"{sys.argv[1]}/scene.png")
PY
"$WORK/venv/bin/salfcbm" explain --model "$WORK/runs/demo" "$WORK/scene.png" --out "$WORK/scene.html"
"$WORK/venv/bin/python" - "$REPO/README.md" <<'PY'
import re, sys
code = re.search(r"## Use\n\n```python\n(.*?)```", open(sys.argv[1]).read(), re.S).group(1)
exec(compile(code, "README.md (Use)", "exec"), {"__name__": "__readme__"})
print("[wheel] README 'Use' snippet ran from the installed wheel")
PY
"$WORK/venv/bin/python" - "$WORK" <<'PY'
# issue 22 item 3: a loaded model is in eval mode and exports as itself with torch.export
import sys, timm, torch, salfcbm
net = timm.create_model("resnet10t", pretrained=False)
salfcbm.wrap(net, concepts=["a", "b"], num_classes=3, input_size=(64, 64), backbone_weights=None).save_pretrained(f"{sys.argv[1]}/tiny")
model = salfcbm.SALFCBM.from_pretrained(f"{sys.argv[1]}/tiny", backbone=net)
assert not model.training and not model.as_classifier().training
x = torch.randn(2, 3, 64, 64)
out = torch.export.export(model, (x,)).module()(x)
torch.testing.assert_close(out.concept_maps, model(x).concept_maps, rtol=1e-4, atol=1e-5)
print("[wheel] torch.export of the model itself:", type(out).__name__)
PY
# the newcomer path: train with a random-init backbone from the CLI, explain it in a new process (its
# weights are saved with the model as backbone.safetensors: no --backbone-weights, no --no-verify-backbone)
mkdir -p "$WORK/own" && cd "$WORK/own"
"$WORK/venv/bin/python" "$REPO/docs/snippets/stand_in.py"  # small image folders, a concept list, a tiny random CLIP
"$WORK/venv/bin/salfcbm" train --backbone timm:test_resnet --backbone-weights none --train my_images/train \
  --val my_images/val --concepts my_concepts.txt --run-dir runs/own --scorer local-dir:tiny-clip --image-size 64 \
  --grid 4 --radius 4 --quick --cutoff 0 --no-filter --device cpu --quiet
test -f runs/own/model/backbone.safetensors
"$WORK/venv/bin/salfcbm" explain --model runs/own/model my_images/test/*/000.png --out own.html --quiet
"$WORK/venv/bin/python" -c "import salfcbm; salfcbm.SALFCBM.from_pretrained('runs/own/model'); print('[wheel] runs/own/model loads in a new process')"
cd "$WORK"
echo "[wheel] ok"
