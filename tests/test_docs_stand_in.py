"""The docs' stand-in CLIP (docs/snippets/stand_in.py) is the same model in every process, so a rerun of
``fit`` from a new process finds its own similarity store instead of refusing it (issue 22, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = (
    "import json; from salfcbm.supervision.scorers import CLIPScorer; "
    "print(json.dumps(CLIPScorer('local-dir:tiny-clip', device='cpu').fingerprint(), sort_keys=True))"
)


def _run(code: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_the_stand_in_clip_is_the_same_in_a_new_process(tmp_path):
    snippet = (ROOT / "docs" / "snippets" / "stand_in.py").read_text()
    first = _run(snippet + "\n" + FINGERPRINT, tmp_path)  # the page's first block, then its scorer
    again = _run(FINGERPRINT, tmp_path)  # a new process in the same folder: e.g. fit rerun later
    assert '"weights_sha256"' in first and first == again  # the similarity store's key is the same
