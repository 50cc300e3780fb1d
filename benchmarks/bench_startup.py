"""Start-up: the CPU time of ``salfcbm --help`` and every sub-command's, and what `wrap` and `from_pretrained` add.

Two measurements, each for this checkout and (with ``--before-rev REV``) for a git revision of this
repository extracted with ``git archive``, in the same run:

* **--help**: CPU seconds (user + system of the child process, ``RUSAGE_CHILDREN``) of
  ``python -m salfcbm.cli [COMMAND] --help``, the fastest of ``--repeats``; next to it the CPU of
  ``python -c pass`` (the interpreter alone) and of ``python -c "import torch"``;
* **wrap and load** of a timm ResNet-50 (random init) at ``--concepts`` concepts (4,741: ImageNet's
  LF-CBM set), in a child process on one thread: CPU seconds of building the bare backbone, of
  ``wrap`` on it, of ``SALFCBM.from_pretrained(dir)`` (the backbone rebuilt from the spec and its saved
  ``backbone.safetensors``, checksums verified) and of ``from_pretrained(dir, backbone=bare)`` after
  building the bare backbone; each as a difference to the bare build (the fastest of ``--repeats``).

Writes ``benchmarks/results/startup.json`` and ``startup.md``::

    python benchmarks/bench_startup.py --before-rev 4191dfa
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["demo", "similarities", "train", "explain", "push", "app", "reproduce"]

_MODEL_CHILD = r"""
import json, sys, tempfile, time, warnings
import torch, timm
torch.set_num_threads(1)
warnings.simplefilter("ignore")
from salfcbm.core.model import SALFCBM, wrap
concepts = [f"concept {i}" for i in range(int(sys.argv[1]))]
repeats = int(sys.argv[2])
def bare():
    return timm.create_model("resnet50", pretrained=False)
def cpu(fn):
    t = time.process_time(); out = fn(); return time.process_time() - t, out
bare()  # first build: imports and allocator warm-up
rows = {"bare": [], "wrap": [], "load_saved": [], "load_given": []}
d = tempfile.mkdtemp()
for _ in range(repeats):
    t, b = cpu(bare); rows["bare"].append(t)
    t, m = cpu(lambda: wrap(b, concepts=concepts, num_classes=1000, backbone_weights=None)); rows["wrap"].append(t)
    m.save_pretrained(d)
    rows["load_saved"].append(cpu(lambda: SALFCBM.from_pretrained(d))[0])
    rows["load_given"].append(cpu(lambda: SALFCBM.from_pretrained(d, backbone=bare(), verify_backbone=False))[0])
print(json.dumps({k: min(v) for k, v in rows.items()}))
"""


def _child_cpu(cmd: list[str], cwd: Path) -> float:
    """CPU seconds (user + system) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(cwd), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def help_cpu(tree: Path, repeats: int) -> dict[str, float]:
    """The fastest CPU time of ``salfcbm [COMMAND] --help`` run from ``tree``, per command."""
    out = {}
    for name, argv in [("salfcbm --help", []), *[(f"salfcbm {c} --help", [c]) for c in COMMANDS]]:
        out[name] = min(_child_cpu([sys.executable, "-m", "salfcbm.cli", *argv, "--help"], tree) for _ in range(repeats))
    return out


def model_cpu(tree: Path, concepts: int, repeats: int) -> dict[str, float]:
    """CPU seconds of the bare build, wrap and the two loads (fastest of ``repeats``), run from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _MODEL_CHILD, str(concepts), str(repeats)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    t = json.loads(res.stdout.strip().splitlines()[-1])
    return {**t, "wrap_minus_bare": t["wrap"], "load_saved_minus_bare": t["load_saved"] - t["bare"],
            "load_given_minus_bare": t["load_given"] - t["bare"]}


def _extract(rev: str, into: Path) -> Path:
    archive = into / "tree.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), rev], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def _table(res: dict) -> str:
    versions = list(res["help"])
    lines = ["# Start-up (CPU seconds: user + system)", "",
             f"{res['machine']['cpu']}; load average {res['machine']['load']}; python -c pass: "
             f"{res['baseline']['python -c pass']:.3f} s, python -c 'import torch': {res['baseline']['import torch']:.3f} s.",
             "", "| command | " + " | ".join(versions) + " |", "|---|" + "---|" * len(versions)]
    for name in res["help"][versions[0]]:
        lines.append(f"| `{name}` | " + " | ".join(f"{res['help'][v][name]:.3f}" for v in versions) + " |")
    lines += ["", f"ResNet-50 (timm, random init) at {res['concepts']:,} concepts, one thread:", "",
              "| step | " + " | ".join(versions) + " |", "|---|" + "---|" * len(versions)]
    labels = {"bare": "build the bare backbone", "wrap_minus_bare": "wrap (added to the bare build)",
              "load_saved_minus_bare": "from_pretrained(dir), saved backbone file, minus the bare build",
              "load_given_minus_bare": "bare build + from_pretrained(dir, backbone=, verify_backbone=False), minus the bare build"}
    for k, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(f"{res['model'][v][k]:.3f}" for v in versions) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before-rev", default=None, help="also measure this git revision (e.g. 4191dfa)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concepts", type=int, default=4741)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup")
    args = ap.parse_args()
    trees = {"this checkout": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        if args.before_rev:
            trees = {args.before_rev: _extract(args.before_rev, Path(tmp)), **trees}
        res = {"concepts": args.concepts, "repeats": args.repeats,
               "machine": {"cpu": platform.processor() or platform.machine(), "load": os.getloadavg()[0]},
               "baseline": {"python -c pass": min(_child_cpu([sys.executable, "-c", "pass"], ROOT) for _ in range(3)),
                            "import torch": min(_child_cpu([sys.executable, "-c", "import torch"], ROOT)
                                                for _ in range(3))},
               "help": {k: help_cpu(t, args.repeats) for k, t in trees.items()},
               "model": {k: model_cpu(t, args.concepts, args.repeats) for k, t in trees.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_table(res))
    print(_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
