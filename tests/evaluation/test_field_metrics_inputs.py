"""Bad input to the field's metrics is a salfcbm InputError naming the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from salfcbm.errors import InputError
from salfcbm.evaluation.benchmark import BenchmarkMethod, run_attribution_benchmark
from salfcbm.evaluation.confidence import average_drop_increase, faithfulness_correlation
from salfcbm.evaluation.localisation import LocalisationMetrics, pointing_game, top_k_intersection

NET = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pointing_game(torch.rand(2, 8, 8), torch.ones(3, 8, 8, dtype=torch.bool)), "one mask per heatmap"),
        (lambda: pointing_game(torch.rand(1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool), tolerance=-1), "tolerance"),
        (lambda: pointing_game(torch.rand(1, 8, 8), torch.full((1, 8, 8), 2.0)), "Binarise"),
        (lambda: top_k_intersection(torch.rand(1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool), k=65), "k"),
        (lambda: pointing_game([[0.0]], torch.ones(1, 1, 1, dtype=torch.bool)), "torch.Tensor"),
        (lambda: LocalisationMetrics(top_k=1.5), "fraction"),
        (lambda: LocalisationMetrics().compute(), "before any update"),
        (lambda: average_drop_increase(NET, torch.rand(2, 3, 8, 8), torch.rand(3, 8, 8)), "one map per image"),
        (lambda: faithfulness_correlation(NET, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), n_runs=1), "n_runs"),
        (lambda: faithfulness_correlation(NET, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), subset_size=64),
         "subset_size"),
        (lambda: faithfulness_correlation(NET, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), n_runs=2,
                                          subsets=torch.zeros(3, 1, 2, dtype=torch.long)), "subsets"),
        (lambda: faithfulness_correlation(NET, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), baseline="grey"),
         "baseline"),
    ],
)
def test_bad_input_is_an_input_error(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_benchmark_refuses_one_faithfulness_run():
    m = {"net": BenchmarkMethod(lambda x, t: torch.rand(x.shape[0], 1, 8, 8), NET)}
    with pytest.raises(InputError, match="faithfulness_runs"):
        run_attribution_benchmark(m, torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool),
                                  faithfulness_runs=1, progress=False, reference=None)


def test_inputs_are_not_changed():
    x, s = torch.rand(2, 3, 8, 8), torch.randn(2, 1, 8, 8)
    x0, s0 = x.clone(), s.clone()
    average_drop_increase(NET, x, s)
    faithfulness_correlation(NET, x, s, n_runs=3, subset_size=4)
    LocalisationMetrics().update(s, torch.ones(2, 8, 8, dtype=torch.bool))
    assert torch.equal(x, x0) and torch.equal(s, s0)
