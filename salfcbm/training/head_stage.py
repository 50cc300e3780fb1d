"""The head and "standard, sparse" baseline stages of `fit` (paper 3.4, Eq. 2), with the matched-NEC comparison.

The head package owns the settings (`salfcbm.head.HeadConfig`), the solvers and the selection
(`salfcbm.head.fit_head`, `salfcbm.head.fit_head_at_nec`); this module only standardises the
activations, calls the head's public API and records the metrics. `HeadConfig`, `PAPER_LAMBDAS`,
`fit_head` and `lam_for_solver` are re-exported here for the code that imported them from training.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from salfcbm._utils.tensors import accuracy
from salfcbm.errors import DegenerateResultWarning
from salfcbm.head import (PAPER_LAMBDAS, HeadConfig, HeadFit, StoreChunks, fit_head, fit_head_at_nec,
                          fit_head_from_chunks, fit_sparse_head_streaming, lam_for_solver)
from salfcbm.training.config import Splits
from salfcbm.training.features import pooled_feature_store, store_pooled_features, fit_standardization

if TYPE_CHECKING:
    from salfcbm.core.model import SALFCBM

__all__ = ["PAPER_LAMBDAS", "HeadConfig", "fit_head", "lam_for_solver", "head_stage", "baseline_stage",
           "StreamedActivations", "fit_columns"]


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
    desc = "Sparse head path (standard baseline at SALF-CBM's NEC)"
    if isinstance(inputs.train, StandardisedColumns):  # out of core: the same path over the store's chunks
        act = inputs.train.source
        mean, std = act.standardisation()
        fit_ = fit_sparse_head_streaming(
            act.chunks(), (inputs.val * std + mean, labels.val), num_classes=num_classes, mean=mean, std=std,
            alpha=cfg.alpha, n_lambdas=cfg.matched_points(), lambda_min_ratio=min(cfg.lambda_min_ratio, 1e-3),
            select="nec", target_nec=target, progress=progress, desc=f"{desc} (out of core)")
    else:
        fit_ = fit_head_at_nec(inputs.train, labels.train, inputs.val, labels.val, num_classes, cfg, target,
                               progress=progress, desc=desc)
    row = {"nec": float(fit_.point.nec), "lambda": fit_.lam,
           "val_accuracy": accuracy(fit_.logits(inputs.val), labels.val)}
    if inputs.test is not None:
        row["test_accuracy"] = accuracy(fit_.logits(inputs.test), labels.test)
    out["standard_sparse"] = row
    return out


class ColumnChunks:
    """The chunks of `StoreChunks` restricted to some columns (a chunk source of `fit_sparse_head_streaming`)."""

    def __init__(self, chunks: StoreChunks, cols: torch.Tensor | None):
        self.chunks, self.cols = chunks, cols

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.chunks[i]
        return (x if self.cols is None else x[:, self.cols]), y


@dataclass
class StreamedActivations:
    """The training split's pooled activations of every candidate, out of core: a store on disk, its labels and
    the per-column moments of one streaming pass (count, mean, sum of squared deviations, class sums).

    ``std`` is the in-memory `fit_standardization`'s (``ddof=1``, clamped at 1e-6), merged over the chunks in
    float64 (Chan et al.), so it matches the in-memory value to float32 rounding.
    """

    store: Any
    labels: torch.Tensor
    n: int
    mean: torch.Tensor  # (M,) float64
    m2: torch.Tensor  # (M,) float64
    counts: torch.Tensor  # (L,) float64
    class_sums: torch.Tensor  # (L, M) float64

    @classmethod
    @torch.no_grad()
    def measure(cls, store: Any, labels: torch.Tensor, num_classes: int) -> StreamedActivations:
        """One pass over ``store``'s shards (one in memory at a time)."""
        m = int(store.item_shape[0])
        n, mean, m2 = 0, torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
        counts, cs = torch.zeros(num_classes, dtype=torch.float64), torch.zeros(num_classes, m, dtype=torch.float64)
        for x, y in StoreChunks(store, labels):
            x = x.to(torch.float64)
            k = x.shape[0]
            if k == 0:
                continue
            mu_k = x.mean(0)
            m2_k = ((x - mu_k) ** 2).sum(0)
            delta, tot = mu_k - mean, n + k
            mean, m2, n = mean + delta * (k / tot), m2 + m2_k + delta**2 * (n * k / tot), tot
            counts += torch.bincount(y, minlength=num_classes)[:num_classes].to(torch.float64)
            cs.index_add_(0, y, x)
        return cls(store, labels, n, mean, m2, counts, cs)

    def standardisation(self, cols: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` float32 of the columns ``cols`` (all when ``None``), as `fit_standardization` computes them."""
        idx = slice(None) if cols is None else torch.as_tensor(cols, dtype=torch.long)
        std = (self.m2 / max(self.n - 1, 1)).sqrt() if self.n > 1 else torch.full_like(self.m2, math.nan)
        return self.mean[idx].float(), std[idx].float().clamp_min(1e-6)

    def lambda_max(self, cols: list[int] | None, alpha: float) -> float:
        """`salfcbm.head.lambda_max` of the standardised columns, from the moments (no pass over the data)."""
        mu, sd = (t.double() for t in self.standardisation(cols))
        idx = slice(None) if cols is None else torch.as_tensor(cols, dtype=torch.long)
        sum_z = self.n * (self.mean[idx] - mu) / sd
        cs_z = (self.class_sums[:, idx] - self.counts[:, None] * mu) / sd
        grad = ((self.counts / self.n)[:, None] * sum_z - cs_z) / self.n
        return float(grad.abs().max()) / alpha

    def chunks(self, cols: list[int] | None = None) -> ColumnChunks:
        return ColumnChunks(StoreChunks(self.store, self.labels),
                            None if cols is None else torch.as_tensor(cols, dtype=torch.long))

    @torch.no_grad()
    def accuracy(self, head_fit: HeadFit, cols: list[int] | None = None) -> float:
        """The accuracy of ``head_fit`` on the standardised columns, chunk by chunk."""
        mean, std = self.standardisation(cols)
        correct = sum(int((head_fit.logits((x - mean) / std).argmax(1) == y).sum()) for x, y in self.chunks(cols))
        return correct / max(self.n, 1)


@dataclass
class StandardisedColumns:
    """What the head was fitted on, out of core: `StreamedActivations` seen through some columns."""

    source: StreamedActivations
    cols: list[int] | None

    def accuracy(self, head_fit: HeadFit) -> float:
        return self.source.accuracy(head_fit, self.cols)


def _fit_streamed(act: StreamedActivations, x_val: torch.Tensor, y_val: torch.Tensor, cols: list[int] | None,
                  num_classes: int, cfg: HeadConfig, *, progress: bool, desc: str) -> HeadFit:
    """`fit_head`'s sparse head over ``act``'s chunks (standardised on the fly); the validation split in memory."""
    mean, std = act.standardisation(cols)
    val = None if x_val is None else (x_val if cols is None else x_val[:, cols], y_val)
    return fit_head_from_chunks(act.chunks(cols), val, num_classes, cfg, mean=mean, std=std,
                                lambda_max_fn=lambda: act.lambda_max(cols, cfg.alpha), progress=progress, desc=desc)


def fit_columns(activations: Splits[Any], labels: Splits[torch.Tensor], cols: list[int] | None, num_classes: int,
                cfg: HeadConfig, *, progress: bool, desc: str) -> tuple[HeadFit, float]:
    """The sparse head on the columns ``cols`` of out-of-core activations (`StreamedActivations` for train,
    a tensor for val) and its validation accuracy."""
    fit_ = _fit_streamed(activations.train, activations.val, labels.val, cols, num_classes, cfg, progress=progress,
                         desc=desc)
    mean, std = activations.train.standardisation(cols)
    x_val = activations.val if cols is None else activations.val[:, cols]
    return fit_, accuracy(fit_.logits((x_val - mean) / std), labels.val)


def head_stage(model: SALFCBM, candidates: list[str], activations: Splits[torch.Tensor],
               labels: Splits[torch.Tensor], hcfg: HeadConfig, *, progress: bool
               ) -> tuple[HeadFit, Splits[torch.Tensor]]:
    """Fit the head on standardised kept-concept activations and load it into ``model`` (stage 4).

    ``activations`` hold every candidate concept (columns in ``candidates`` order); returns the
    fit and the standardised train/val activations of the kept concepts. Out of core
    (``activations.train`` a `StreamedActivations`) the head is fitted by `fit_sparse_head_streaming`
    over the store's chunks, standardised on the fly, with the validation split in memory; the
    returned training "activations" are then a `StandardisedColumns` (its ``accuracy`` streams).
    """
    cols = [candidates.index(c) for c in model.concepts]
    if isinstance(activations.train, StreamedActivations):  # out of core: the training split stays on disk
        mean, std = activations.train.standardisation(cols)
        head_fit = _fit_streamed(activations.train, activations.val, labels.val, cols, model.num_classes, hcfg,
                                 progress=progress, desc="Sparse head path (SALF-CBM, out of core)")
        z_train, z_val = StandardisedColumns(activations.train, cols), (activations.val[:, cols] - mean) / std
    else:
        mean, std, (z_train, z_val) = fit_standardization(activations.train[:, cols], activations.val[:, cols])
        head_fit = fit_head(z_train, labels.train, z_val, labels.val, model.num_classes, hcfg, progress=progress,
                            desc="Sparse head path (SALF-CBM)")
    with torch.no_grad():
        model.concept_mean.copy_(mean)
        model.concept_std.copy_(std)
        model.head.weight.copy_(head_fit.weight)
        model.head.bias.copy_(head_fit.bias)
    return head_fit, Splits(z_train, z_val)


def baseline_stage(model: SALFCBM, metrics: dict[str, Any], features: Splits[Any], labels: Splits[torch.Tensor],
                   hcfg: HeadConfig, *, progress: bool, store_root: Any = None,
                   features_key: str = "") -> tuple[HeadFit, str, Splits[Any]]:
    """Fit the standard head on pooled backbone features and add its metrics (and matched NEC) to ``metrics``.

    Returns the fit, its name in ``metrics`` and the standardised pooled features of every split.
    Out of core (a sparse head, ``hcfg.streams(N, C)`` and a ``store_root``) the training split's
    pooled features go to a store under ``store_root`` (`pooled_feature_store`, keyed by
    ``features_key``) and both paths stream over it; validation and test stay in memory.
    """
    n, width = int(features.train.length), int(features.train.item_shape[0])
    if hcfg.sparse and store_root is not None and hcfg.streams(n, width):
        store = pooled_feature_store(features.train, store_root, rows=hcfg.chunk_rows, features_key=features_key)
        act = StreamedActivations.measure(store, labels.train, model.num_classes)
        g_mean, g_std = act.standardisation()
        g_val = store_pooled_features(features.val)
        base_fit = _fit_streamed(act, g_val, labels.val, None, model.num_classes, hcfg.for_baseline(),
                                 progress=progress, desc="Sparse head path (standard baseline, out of core)")
        s_train, s_val = StandardisedColumns(act, None), (g_val - g_mean) / g_std
        train_acc = s_train.accuracy(base_fit)
    else:
        g_train, g_val = store_pooled_features(features.train), store_pooled_features(features.val)
        g_mean, g_std, (s_train, s_val) = fit_standardization(g_train, g_val)
        base_fit = fit_head(s_train, labels.train, s_val, labels.val, model.num_classes, hcfg.for_baseline(),
                            progress=progress, desc="Sparse head path (standard baseline)")
        train_acc = accuracy(base_fit.logits(s_train), labels.train)
    name = "standard_sparse" if hcfg.sparse else "standard_dense"
    metrics[name] = {
        "train_accuracy": train_acc,
        "val_accuracy": accuracy(base_fit.logits(s_val), labels.val),
        "nnz": int((base_fit.weight != 0).sum()),
        "nec": float((base_fit.weight != 0).sum() / base_fit.weight.shape[0]),
        "lambda": base_fit.lam,
        "features": width,
    }
    s_test = (store_pooled_features(features.test) - g_mean) / g_std if features.test is not None else None
    if s_test is not None:
        metrics[name]["test_accuracy"] = accuracy(base_fit.logits(s_test), labels.test)
    inputs = Splits(s_train, s_val, s_test)
    if hcfg.sparse:
        metrics["matched_nec"] = _matched_nec(metrics["salfcbm"], inputs, labels, model.num_classes, hcfg,
                                              progress=progress, stacklevel=4)
    return base_fit, name, inputs
