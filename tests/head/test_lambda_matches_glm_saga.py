"""LF-CBM's ``--lam`` means what GLM-SAGA makes of it (issue 18, item 7).

LF-CBM (``train_cbm.py``) sets ``metadata['max_reg']['nongrouped'] = args.lam`` and calls
``glm_saga(linear, loader, 0.1, n_iters, 0.99, epsilon=1, k=1, do_zero=False, metadata=metadata)``.
GLM-SAGA (``glm_saga/elasticnet.py``) then builds its path as transcribed in `_glm_saga_lams` and
minimises ``mean CE + lam * alpha * ||W||_1 + 0.5 * lam * (1 - alpha) * ||W||^2``, salfcbm's objective.
So ``HeadConfig(lam=l)`` must solve at GLM-SAGA's ``lam``, not at ``l``.
"""

from __future__ import annotations

import math

import pytest
import torch

from salfcbm.head.solver import kkt_violation, lambda_max
from salfcbm.training.pipeline import HeadConfig, fit_head, lam_for_solver


def _glm_saga_lams(max_reg: float, alpha: float, epsilon: float = 1, k: int = 1) -> list[float]:
    """GLM-SAGA ``glm_saga()``: ``max_lam = max_reg / max(0.001, alpha)``, ``min_lam = epsilon * max_lam``,
    ``lams = logspace(log10(max_lam), log10(min_lam), k)`` (``do_zero=False``: no 0 appended)."""
    max_lam = max_reg / max(0.001, alpha)
    min_lam = epsilon * max_lam
    return torch.logspace(math.log10(max_lam), math.log10(min_lam), k, dtype=torch.float64).tolist()


@pytest.mark.parametrize("lam,alpha", [(7e-4, 0.99), (2e-3, 0.5), (1e-3, 1e-4)])
def test_fixed_lam_is_solved_where_glm_saga_solves_lfcbm_lam(lam, alpha):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 12, generator=g)
    y = (x[:, :3] + 0.5 * torch.randn(300, 3, generator=g)).argmax(1)
    (want,) = _glm_saga_lams(lam, alpha)
    assert lam_for_solver(lam, alpha) == pytest.approx(want, rel=1e-9)
    assert want < lambda_max(x, y, 3, alpha)  # a non-trivial point
    fit = fit_head(x, y, x, y, 3, HeadConfig(lam=lam, alpha=alpha, max_iter=20000), progress=False)
    assert fit.lam == pytest.approx(want, rel=1e-9)
    # the weights solve GLM-SAGA's objective at its lam (KKT), and not the objective at LF-CBM's raw lam
    scale = lambda_max(x, y, 3, alpha) * alpha
    assert kkt_violation(fit.weight, fit.bias, x, y, want, alpha) < 1e-3 * scale
    if alpha < 0.9:  # where lam / alpha differs from lam by more than the solver's tolerance
        assert kkt_violation(fit.weight, fit.bias, x, y, lam, alpha) > 1e-3 * scale
