"""The head and "standard, sparse" baseline stages of `fit` (paper 3.4, Eq. 2), with the matched-NEC comparison.

The head package owns the settings (`salfcbm.head.HeadConfig`), the solvers and the selection
(`salfcbm.head.fit_head`, `salfcbm.head.fit_head_at_nec`); this module only standardises the
activations, calls the head's public API and records the metrics. `HeadConfig`, `PAPER_LAMBDAS`,
`fit_head` and `lam_for_solver` are re-exported here for the code that imported them from training.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from salfcbm._utils.tensors import accuracy
from salfcbm.errors import DegenerateResultWarning
from salfcbm.head import PAPER_LAMBDAS, HeadConfig, HeadFit, fit_head, fit_head_at_nec, lam_for_solver
from salfcbm.training.config import Splits
from salfcbm.training.features import pooled_features, standardize

if TYPE_CHECKING:
    from salfcbm.core.model import SALFCBM

__all__ = ["PAPER_LAMBDAS", "HeadConfig", "fit_head", "lam_for_solver", "head_stage", "baseline_stage"]


def _matched_nec(
    salf: dict[str, Any], inputs: Splits[torch.Tensor], labels: Splits[torch.Tensor], num_classes: int,
    cfg: HeadConfig, *, progress: bool = True, stacklevel: int = 3,
) -> dict[str, Any]:
    """The standard-sparse baseline re-selected on its path at SALF-CBM's sparsity (same NEC).

    Accuracies of heads with different numbers of non-zero weights per class are not
    comparable; this row compares the baseline at the densest path point whose NEC does not
    exceed SALF-CBM's, so both models explain a class with (about) as many weights.
    """
    target = float(salf["nec"])
    out: dict[str, Any] = {"nec": target, "salfcbm": {k: salf[k] for k in ("val_accuracy", "test_accuracy", "nec")
                                                       if k in salf}}
    if target <= 0:
        warnings.warn("SALF-CBM's head has no non-zero weight: no matched-sparsity comparison.", DegenerateResultWarning,
                      stacklevel=stacklevel)
        return out
    fit_ = fit_head_at_nec(inputs.train, labels.train, inputs.val, labels.val, num_classes, cfg, target,
                           progress=progress, desc="Sparse head path (standard baseline at SALF-CBM's NEC)")
    row = {"nec": float(fit_.point.nec), "lambda": fit_.lam,
           "val_accuracy": accuracy(fit_.logits(inputs.val), labels.val)}
    if inputs.test is not None:
        row["test_accuracy"] = accuracy(fit_.logits(inputs.test), labels.test)
    out["standard_sparse"] = row
    return out


def head_stage(model: SALFCBM, candidates: list[str], activations: Splits[torch.Tensor],
               labels: Splits[torch.Tensor], hcfg: HeadConfig, *, progress: bool
               ) -> tuple[HeadFit, Splits[torch.Tensor]]:
    """Fit the head on standardised kept-concept activations and load it into ``model`` (stage 4).

    ``activations`` hold every candidate concept (columns in ``candidates`` order); returns the
    fit and the standardised train/val activations of the kept concepts.
    """
    cols = [candidates.index(c) for c in model.concepts]
    mean, std, (z_train, z_val) = standardize(activations.train[:, cols], activations.val[:, cols])
    head_fit = fit_head(z_train, labels.train, z_val, labels.val, model.num_classes, hcfg, progress=progress,
                        desc="Sparse head path (SALF-CBM)")
    with torch.no_grad():
        model.concept_mean.copy_(mean)
        model.concept_std.copy_(std)
        model.head.weight.copy_(head_fit.weight)
        model.head.bias.copy_(head_fit.bias)
    return head_fit, Splits(z_train, z_val)


def baseline_stage(model: SALFCBM, metrics: dict[str, Any], features: Splits[Any], labels: Splits[torch.Tensor],
                   hcfg: HeadConfig, *, progress: bool) -> tuple[HeadFit, str, Splits[torch.Tensor]]:
    """Fit the standard head on pooled backbone features and add its metrics (and matched NEC) to ``metrics``.

    Returns the fit, its name in ``metrics`` and the standardised pooled features of every split.
    """
    g_train, g_val = pooled_features(features.train), pooled_features(features.val)
    g_mean, g_std, (s_train, s_val) = standardize(g_train, g_val)
    base_fit = fit_head(s_train, labels.train, s_val, labels.val, model.num_classes, hcfg.for_baseline(),
                        progress=progress, desc="Sparse head path (standard baseline)")
    name = "standard_sparse" if hcfg.sparse else "standard_dense"
    metrics[name] = {
        "train_accuracy": accuracy(base_fit.logits(s_train), labels.train),
        "val_accuracy": accuracy(base_fit.logits(s_val), labels.val),
        "nnz": int((base_fit.weight != 0).sum()),
        "nec": float((base_fit.weight != 0).sum() / base_fit.weight.shape[0]),
        "lambda": base_fit.lam,
        "features": int(g_train.shape[1]),
    }
    s_test = (pooled_features(features.test) - g_mean) / g_std if features.test is not None else None
    if s_test is not None:
        metrics[name]["test_accuracy"] = accuracy(base_fit.logits(s_test), labels.test)
    inputs = Splits(s_train, s_val, s_test)
    if hcfg.sparse:
        metrics["matched_nec"] = _matched_nec(metrics["salfcbm"], inputs, labels, model.num_classes, hcfg,
                                              progress=progress, stacklevel=4)
    return base_fit, name, inputs
