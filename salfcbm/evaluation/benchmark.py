"""Benchmark SALF-CBM heatmaps against attribution baselines (paper section 4.2, Table 2 and figure 4).

One import path for the benchmark's pieces, each in its own module:

* `salfcbm.evaluation.methods`: `BenchmarkMethod` and the factory `build_methods`;
* `salfcbm.evaluation.runner`: `run_attribution_benchmark` (the protocol is documented there);
* `salfcbm.evaluation.result`: `BenchmarkResult`, `METRIC_COLUMNS`, `FIELD_METRIC_COLUMNS`;
* `salfcbm.evaluation.timing`: `forward_speed` (and `time_attribution`);
* `salfcbm.evaluation.plots`: `plot_attribution_examples` (paper figure 4).

The checks that need the demo world's ground truth (`class_evidence_masks`, `explanation_mask_check`,
`presence_check`) live in `salfcbm.demo.checks`.

The command-line front end is ``benchmarks/bench_attribution.py``.
"""

from salfcbm.evaluation.deletion import constant_substrate
from salfcbm.evaluation.methods import BenchmarkMethod, build_methods
from salfcbm.evaluation.plots import plot_attribution_examples
from salfcbm.evaluation.result import FIELD_METRIC_COLUMNS, METRIC_COLUMNS, BenchmarkResult
from salfcbm.evaluation.runner import run_attribution_benchmark
from salfcbm.evaluation.timing import forward_speed

__all__ = [
    "FIELD_METRIC_COLUMNS",
    "METRIC_COLUMNS",
    "BenchmarkMethod",
    "BenchmarkResult",
    "build_methods",
    "constant_substrate",
    "forward_speed",
    "plot_attribution_examples",
    "run_attribution_benchmark",
]
