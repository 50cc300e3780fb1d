"""salfcbm's localisation and faithfulness metrics against Quantus 0.6 on fixed arrays.

Where Quantus 0.6 is wrong the test pins the correct value (and docs/evaluation.md says what
Quantus does instead). Quantus is a test-only extra (scripts/setup.sh installs it with --no-deps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from salfcbm.evaluation.confidence import average_drop_increase, faithfulness_correlation
from salfcbm.evaluation.localisation import (
    LocalisationMetrics,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)

_WHY = "Quantus 0.6 is a test-only extra: scripts/setup.sh installs it (pip install --no-deps quantus==0.6.0)"


@pytest.fixture
def quantus():
    return pytest.importorskip("quantus", reason=_WHY)

B, H, W = 4, 8, 8


def _fixed() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps without ties (signed and positive) and masks of different sizes, one per image."""
    rng = np.random.default_rng(7)
    a = rng.permutation(B * H * W).reshape(B, 1, H, W).astype(np.float64) / (H * W)  # distinct values
    signed = a - 1.5  # some images mostly negative
    s = np.zeros((B, 1, H, W), dtype=np.float64)
    s[0, 0, 1:4, 1:4] = 1
    s[1, 0, 0:8, 0:3] = 1
    s[2, 0, 5:8, 2:7] = 1
    s[3, 0, 3, 3] = 1
    # make image 0's maximum fall on its mask, image 1's off it
    a[0, 0, 2, 2] = signed[0, 0, 2, 2] = 10.0
    a[1, 0, 7, 7] = signed[1, 0, 7, 7] = 10.0
    return a, signed, s


def _quantus(metric, a: np.ndarray, s: np.ndarray) -> np.ndarray:
    x = np.zeros((a.shape[0], 1, H, W), dtype=np.float32)
    y = np.zeros(a.shape[0], dtype=int)
    out = metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s, channel_first=True)
    return np.asarray(out, dtype=np.float64)


def _ours(fn, a: np.ndarray, s: np.ndarray, **kw) -> np.ndarray:
    return fn(torch.from_numpy(a), torch.from_numpy(s[:, 0] > 0), **kw).numpy()


@pytest.mark.parametrize("which", ["positive", "signed"])
def test_localisation_metrics_agree_with_quantus(which, quantus):
    a, signed, s = _fixed()
    maps = a if which == "positive" else signed
    common = dict(disable_warnings=True, display_progressbar=False, return_aggregate=False, normalise=False)
    pairs = [
        (pointing_game, {}, quantus.PointingGame(**common)),
        (relevance_mass_accuracy, {}, quantus.RelevanceMassAccuracy(**common)),
        (relevance_rank_accuracy, {}, quantus.RelevanceRankAccuracy(**common)),
        (top_k_intersection, {"k": 5}, quantus.TopKIntersection(k=5, **common)),
    ]
    for fn, kw, metric in pairs:
        np.testing.assert_allclose(_ours(fn, maps, s, **kw), _quantus(metric, maps, s), rtol=1e-12,
                                   err_msg=fn.__name__)
    assert _ours(pointing_game, maps, s).tolist()[:2] == [1.0, 0.0]


def test_quantus_default_batch_normalisation_changes_nothing_here_but_scaling_is_irrelevant(quantus):
    """Quantus's default normalise_by_max divides by the batch's max |a|: a positive scale; ours is invariant."""
    a, _, s = _fixed()
    metric = quantus.RelevanceMassAccuracy(disable_warnings=True, return_aggregate=False)
    np.testing.assert_allclose(_ours(relevance_mass_accuracy, a * 3.0, s), _quantus(metric, a, s), rtol=1e-12)


def test_pointing_game_empty_mask_is_undefined_not_a_hit(quantus):
    """Quantus 0.6 writes NaN into a bool array, which makes an empty mask a hit (True)."""
    a, _, s = _fixed()
    s[2] = 0
    ours = _ours(pointing_game, a, s)
    theirs = _quantus(quantus.PointingGame(disable_warnings=True, return_aggregate=False), a, s)
    assert theirs[2] == 1.0  # Quantus's defect, documented in docs/evaluation.md
    assert np.isnan(ours[2])
    np.testing.assert_array_equal(ours[[0, 1, 3]], theirs[[0, 1, 3]])
    lm = LocalisationMetrics(top_k=5)
    lm.update(torch.from_numpy(a), torch.from_numpy(s[:, 0] > 0))
    res = lm.compute()
    assert res["n_empty_masks"] == 1
    assert res["pointing_game"] == pytest.approx(np.mean(ours[[0, 1, 3]]))


def test_relevance_mass_of_a_signed_map_leaves_the_unit_interval_and_relu_restores_it():
    a, signed, s = _fixed()
    mass = _ours(relevance_mass_accuracy, signed, s)
    assert ((mass < 0) | (mass > 1)).any()
    lm = LocalisationMetrics(top_k=5)
    lm.update(torch.from_numpy(signed), torch.from_numpy(s[:, 0] > 0))
    relu_mass = lm.compute()["relevance_mass_relu"]
    assert 0.0 <= relu_mass <= 1.0
    pos = np.clip(signed, 0, None)
    expected = [(pos[i] * s[i]).sum() / pos[i].sum() for i in range(B) if pos[i].sum() > 0]
    assert relu_mass == pytest.approx(np.mean(expected))


class _Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(H * W, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(3, H * W, generator=g))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_faithfulness_correlation_agrees_with_quantus_on_the_same_subsets(quantus):
    torch.manual_seed(0)
    model = _Lin().eval()
    x = np.random.default_rng(1).random((B, 1, H, W)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    a = np.random.default_rng(2).normal(size=(B, 1, H, W)).astype(np.float32)
    n_runs, k = 10, 6
    np.random.seed(123)  # reproduce Quantus's draws from numpy's global generator, in its order:
    subsets = []
    for _ in range(n_runs):
        subsets.append(np.stack([np.random.choice(H * W, k, replace=False) for _ in range(B)]))
        np.random.uniform(size=B)  # its baseline table also fills the unused "uniform" entry every run
    subsets = np.stack(subsets)
    np.random.seed(123)
    metric = quantus.FaithfulnessCorrelation(nr_runs=n_runs, subset_size=k, normalise=False,
                                             disable_warnings=True, return_aggregate=False)
    theirs = np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a, channel_first=True, device="cpu"))
    ours = faithfulness_correlation(model, torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(y),
                                    n_runs=n_runs, subset_size=k, subsets=subsets).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # a linear model explained by weight * input: the drop is exactly the relevance of the subset
    exact = (model.fc.weight.detach()[torch.from_numpy(y)] * torch.from_numpy(x).flatten(1)).view(B, 1, H, W)
    corr = faithfulness_correlation(model, torch.from_numpy(x), exact, torch.from_numpy(y), baseline=0.0,
                                    n_runs=n_runs, subset_size=k)
    assert torch.allclose(corr, torch.ones(B, dtype=torch.float64), atol=1e-6)


def test_average_drop_and_increase_in_confidence_hand_computed():
    """Quantus 0.6 has no Average Drop / IIC: pinned against the formula of Chattopadhyay et al. (2018)."""
    model = _Lin().eval()
    x = torch.from_numpy(np.random.default_rng(3).random((B, 1, H, W)).astype(np.float32))
    sal = torch.from_numpy(np.random.default_rng(4).normal(size=(B, 1, H, W)).astype(np.float32))
    t = torch.tensor([0, 1, 2, 1])
    out = average_drop_increase(model, x, sal, t)
    e = (sal - sal.amin((1, 2, 3), keepdim=True)) / (sal.amax((1, 2, 3), keepdim=True) - sal.amin((1, 2, 3), True))
    with torch.no_grad():
        y = model(x).double().softmax(1)[torch.arange(B), t]
        o = model(x * e).double().softmax(1)[torch.arange(B), t]
    assert torch.allclose(out["drop"], (y - o).clamp(min=0) / y, atol=1e-6)
    assert out["increase"].tolist() == (o > y).double().tolist()
    assert 0 < out["increase"].sum() < B or out["drop"].max() > 0
    model.train()
    average_drop_increase(model, x, sal, t)
    assert model.training  # the model's mode is restored


def test_pointing_game_tolerance_of_zhang_et_al():
    """The paper's tolerance: a maximum 3 px from the object is a miss at 0 px, a hit from 3 px on."""
    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, 4:8, 4:8] = True
    h = torch.zeros(1, 16, 16)
    h[0, 5, 10] = 1.0  # 3 px right of the mask's last column (7)
    assert [pointing_game(h, m, tolerance=t).item() for t in (0, 2, 3, 15)] == [0.0, 0.0, 1.0, 1.0]
    h[0, 10, 10] = 2.0  # diagonal: distance sqrt(3^2 + 3^2) = 4.24
    assert [pointing_game(h, m, tolerance=t).item() for t in (4, 5)] == [0.0, 1.0]


@pytest.mark.skipif(hasattr(np, "trapz"), reason="this numpy still has np.trapz")
def test_quantus_auc_raises_under_numpy_without_trapz_while_salfcbm_integrates(quantus):
    """docs/evaluation.md: Quantus 0.6's AUC helper (region perturbation, selectivity, IROF) needs np.trapz."""
    calculate_auc = quantus.helpers.utils.calculate_auc

    with pytest.raises(AttributeError, match="trapz"):
        calculate_auc(np.array([1.0, 0.5, 0.0]))
    from salfcbm.evaluation.metrics import deletion_insertion

    out = deletion_insertion(_Lin(), torch.rand(1, 1, H, W), torch.rand(1, H, W), n_steps=4, progress=False)
    assert torch.isfinite(out["deletion_auc"]).all()


def test_localisation_metrics_report_how_often_the_signed_mass_is_no_share():
    a, signed, s = _fixed()
    per_image = _ours(relevance_mass_accuracy, signed, s)
    lm = LocalisationMetrics(top_k=5)
    lm.update(torch.from_numpy(signed), torch.from_numpy(s[:, 0] > 0))
    assert lm.compute()["relevance_mass_out_of_range"] == pytest.approx(np.mean((per_image < 0) | (per_image > 1)))
    lm.reset()
    lm.update(torch.from_numpy(a), torch.from_numpy(s[:, 0] > 0))
    assert lm.compute()["relevance_mass_out_of_range"] == 0.0
