"""fit's pooled concept activations: pool-then-project against building every concept map (issue 21.4).

With mean pooling, ``mean_{h,w}(W f + b) = W mean_{h,w}(f) + b``: `store_concept_activations` pools the
cached features first and projects once per image; before, it projected every grid cell (all
``M x Hg x Wg`` maps) and pooled them. At ResNet-50's shapes (C = 2048, M = 4,741 concepts, 7x7
grid) on N images this records the FLOPs of both paths (``torch.utils.flop_counter``), their CPU
wall time (median of interleaved rounds, one thread) and the largest difference of the results.

    python benchmarks/bench_concept_activations.py            # N = 256
    python benchmarks/bench_concept_activations.py --quick    # N = 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from salfcbm._utils.io import atomic_write_text  # noqa: E402
from salfcbm.training.batches import map_features  # noqa: E402
from salfcbm.training.features import store_concept_activations  # noqa: E402

C, M, GRID = 2048, 4741, 7


def _setup(n: int, root: Path):
    import salfcbm
    from salfcbm.supervision.store import ShardedStore

    net = torch.nn.Sequential(torch.nn.Conv2d(3, C, 1))
    model = salfcbm.wrap(net, concepts=[f"concept {i}" for i in range(M)], num_classes=10, grid=GRID,
                         input_size=(GRID, GRID))
    store = ShardedStore(root, manifest={"kind": "bench"}, item_shape=(C, GRID, GRID), length=n, shard_size=128)
    g = torch.Generator().manual_seed(0)
    for i in range(store.num_shards):
        a, b = store.shard_range(i)
        store.write_shard(i, torch.randn(b - a, C, GRID, GRID, generator=g).relu())
    return model, store


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "concept_activations.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = 64 if args.quick else 256
    with tempfile.TemporaryDirectory() as tmp:
        model, store = _setup(n, Path(tmp))
        paths = {"pool_then_project": lambda: store_concept_activations(model, store),
                 "every_map": lambda: map_features(model, store, model.pool)}
        flops = {k: _flops(f) for k, f in paths.items()}
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):  # interleaved, so load changes hit both alike
            for k, f in paths.items():
                t = time.process_time()
                f()
                times[k].append(time.process_time() - t)
        diff = (paths["pool_then_project"]() - paths["every_map"]()).abs().max().item()
    cpu = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "shapes": {"N": n, "C": C, "M": M, "grid": [GRID, GRID]},
        "gflops": {k: v / 1e9 for k, v in flops.items()},
        "flops_ratio": flops["every_map"] / flops["pool_then_project"],
        "cpu_seconds_median": cpu,
        "speedup": cpu["every_map"] / cpu["pool_then_project"],
        "max_abs_difference": diff,
        "rounds": args.rounds,
        "threads": 1,
    }
    print(json.dumps(result, indent=2))
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
