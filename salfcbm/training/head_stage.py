"""The head glue of `fit` (paper 3.4, Eq. 2): `HeadConfig`, the paper's fixed lambdas, `fit_head`,
and the head and "standard, sparse" baseline stages (with the matched-NEC comparison).

The solver itself is `salfcbm.head.solver`; this module chooses its settings and selection.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from salfcbm._utils.tensors import accuracy
from salfcbm.errors import DegenerateResultWarning, InputError
from salfcbm.head.solver import HeadFit, fit_dense_head, fit_sparse_head, lambda_max
from salfcbm.training.config import Splits
from salfcbm.training.features import pooled_features, standardize

if TYPE_CHECKING:
    from salfcbm.core.model import SALFCBM

__all__ = ["PAPER_LAMBDAS", "HeadConfig", "fit_head", "lam_for_solver", "head_stage", "baseline_stage"]


#: LF-CBM's fixed lambda per dataset (``training_commands.txt`` of LF-CBM), which SALF-CBM reuses (paper 3.4):
#: ``(SALF-CBM / LF-CBM head, standard-sparse baseline)``. "default" is LF-CBM's ``--lam`` default (CIFAR).
PAPER_LAMBDAS: dict[str, tuple[float, float]] = {
    "imagenet": (1e-4, 1e-4),
    "places365": (3e-4, 7e-4),
    "cub": (2e-4, 2e-5),
    "cifar10": (7e-4, 0.0125),
    "cifar100": (7e-4, 3e-3),
    "default": (7e-4, 7e-4),
}
_PRESET_ALIASES = {"places": "places365", "cub200": "cub", "cub-200-2011": "cub", "in1k": "imagenet"}


@dataclass
class HeadConfig:
    """Hyper-parameters of the final layer (paper 3.4).

    Selection of the regularisation strength ``lam``:

    * ``"fixed"``: the paper's choice. SALF-CBM reuses LF-CBM's single fixed ``lam`` per
      dataset (`PAPER_LAMBDAS`; `paper` builds it); the validation set plays no
      part in choosing the head.
    * ``"val_acc"`` (salfcbm's default, an extension): the path point with the best
      validation accuracy (optionally the sparsest within ``val_tolerance``).
    * ``"nec"`` (extension, as in VLG-CBM): the densest point with at most ``target_nec``
      non-zero weights per class.

    Attributes:
        sparse: elastic-net head (GLM-SAGA objective) if True, else a dense L2 head.
        alpha: elastic-net mixing (0.99 in the paper).
        n_lambdas: points on the regularisation path (with ``"fixed"``: at most this many
            warm-start points from ``lam_max`` down to ``lam``; the solution is the same).
            ``None`` (default): scaled with the data (`for_data`: one point per 25 training
            images, between 10 and 40).
        lambda_min_ratio: end of the path relative to ``lam_max``.
        select: ``"fixed"``, ``"val_acc"`` or ``"nec"``.
        target_nec: the NEC target with ``select="nec"``.
        max_iter: solver iterations per path point.
        val_tolerance: with ``select="val_acc"``, take the sparsest point whose validation
            accuracy is within this much of the best (like glmnet's ``lambda.1se``); 0 = the best.
        lam: the regularisation strength with ``select="fixed"``, LF-CBM's ``--lam``: LF-CBM passes
            it to GLM-SAGA as ``max_reg`` with ``k=1``, and GLM-SAGA solves at ``lam / max(0.001, alpha)``
            (``glm_saga/elasticnet.py``), i.e. mean cross-entropy + ``lam * ||W||_1 +
            lam (1 - alpha) / (2 alpha) * ||W||_F^2``. salfcbm solves the same point (`lam_for_solver`),
            so ``HeadConfig(lam=1e-4)`` is LF-CBM's ``--lam 0.0001``; the solved value is ``HeadFit.lam``.
            ``HeadConfig(lam=...)`` alone means ``select="fixed"``.
        baseline_lam: ``lam`` of the standard-sparse baseline with ``select="fixed"``
            (LF-CBM fits it with its own value); ``None`` = ``lam``.

    Examples:
        >>> HeadConfig.paper("imagenet").lam
        0.0001
        >>> HeadConfig(select="fixed", lam=7e-4).select
        'fixed'
    """

    sparse: bool = True
    alpha: float = 0.99
    n_lambdas: int | None = None
    lambda_min_ratio: float = 1e-3
    select: str = "val_acc"
    target_nec: float | None = None
    max_iter: int = 2000
    val_tolerance: float = 0.0
    lam: float | None = None
    baseline_lam: float | None = None

    def __post_init__(self):
        if self.lam is not None and self.select == "val_acc":
            self.select = "fixed"  # a lam given alone is the paper's fixed-lambda selection
        if self.select not in ("val_acc", "nec", "fixed"):
            raise InputError(f"HeadConfig.select must be 'fixed', 'val_acc' or 'nec', got {self.select!r}.")
        if not 0 <= self.val_tolerance < 1:
            raise InputError(f"HeadConfig.val_tolerance must be in [0, 1), got {self.val_tolerance!r}.")
        if self.select == "nec" and not self.target_nec:
            raise InputError("HeadConfig.select='nec' needs target_nec (non-zero weights per class), e.g. 5.")
        if self.select == "fixed" and self.lam is None:
            raise InputError(
                "HeadConfig.select='fixed' needs lam (e.g. 7e-4, LF-CBM's default), or use "
                f"HeadConfig.paper(dataset) with dataset in {sorted(PAPER_LAMBDAS)}."
            )
        for k in ("lam", "baseline_lam"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
                raise InputError(f"HeadConfig.{k} must be a positive number, got {v!r}.")
        if self.lam is not None and self.select != "fixed":
            raise InputError(f"HeadConfig.lam={self.lam!r} is only used with select='fixed'; got select={self.select!r}.")
        v = self.n_lambdas
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"HeadConfig.n_lambdas must be a positive int or None (scaled with the data), got {v!r}.")

    def for_data(self, n_train: int) -> HeadConfig:
        """This config with ``n_lambdas`` set from the number of training images when it is ``None``.

        ``clip(n_train // 25, 10, 40)`` path points: with few images the validation accuracy that
        selects a point takes few distinct values, so a fine path buys nothing; from 1000 images on,
        the former fixed 40.

        Examples:
            >>> HeadConfig().for_data(36).n_lambdas, HeadConfig().for_data(600).n_lambdas, HeadConfig().for_data(10**6).n_lambdas
            (10, 24, 40)
            >>> HeadConfig(n_lambdas=7).for_data(36).n_lambdas
            7
        """
        if self.n_lambdas is not None:
            return self
        return replace(self, n_lambdas=min(40, max(10, int(n_train) // 25)))

    @classmethod
    def quick(cls, **overrides: Any) -> HeadConfig:
        """Settings for a first try: a 10-point path."""
        return cls(**{"n_lambdas": 10, **overrides})

    @classmethod
    def paper(cls, dataset: str = "default", **overrides: Any) -> HeadConfig:
        """The paper's head selection: LF-CBM's fixed ``lam`` for ``dataset``, ``alpha = 0.99``.

        ``dataset`` is one of ``imagenet``, ``places365``, ``cub``, ``cifar10``, ``cifar100`` or
        ``default`` (LF-CBM's ``--lam`` default, 7e-4, for any other data).
        """
        key = _PRESET_ALIASES.get(str(dataset).lower(), str(dataset).lower())
        if key not in PAPER_LAMBDAS:
            from salfcbm.errors import closest

            near = closest(key, list(PAPER_LAMBDAS))
            raise InputError(
                f"No paper preset for dataset {dataset!r}; expected one of {sorted(PAPER_LAMBDAS)}"
                + (f" (closest: {', '.join(near)})" if near else "")
                + ". Use 'default' (lam = 7e-4) for other data, or HeadConfig(select='fixed', lam=...)."
            )
        lam, base = PAPER_LAMBDAS[key]
        return cls(**{"select": "fixed", "lam": lam, "baseline_lam": base, "alpha": 0.99, **overrides})

    def for_baseline(self) -> HeadConfig:
        """The configuration of the standard-sparse baseline (its own ``lam`` when fixed)."""
        if self.select == "fixed" and self.baseline_lam is not None:
            return replace(self, lam=self.baseline_lam)
        return self



def fit_head(
    x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
    config: HeadConfig | None = None, *, progress: bool = True, desc: str = "Sparse head path",
) -> HeadFit:
    """Fit the final layer on standardised features with the configured solver."""
    cfg = (config or HeadConfig()).for_data(len(x_train))
    if not cfg.sparse:
        return fit_dense_head(x_train, y_train, x_val, y_val, num_classes=num_classes)
    if cfg.select == "fixed":
        return _fit_fixed_lambda(x_train, y_train, x_val, y_val, num_classes, cfg, progress=progress, desc=desc)
    fit_ = fit_sparse_head(
        x_train, y_train, x_val, y_val, num_classes=num_classes, alpha=cfg.alpha, n_lambdas=cfg.n_lambdas,
        lambda_min_ratio=cfg.lambda_min_ratio, select=cfg.select, target_nec=cfg.target_nec,
        max_iter=cfg.max_iter, progress=progress, desc=desc,
    )
    if cfg.select == "val_acc" and cfg.val_tolerance > 0:
        best = max(p.val_acc for p in fit_.path if p.val_acc is not None)
        ok = [i for i, p in enumerate(fit_.path) if p.val_acc is not None and p.val_acc >= best - cfg.val_tolerance]
        i = min(ok, key=lambda j: (fit_.path[j].nnz, -fit_.path[j].val_acc))
        p = fit_.path[i]
        fit_ = replace(fit_, weight=p.weight, bias=p.bias, lam=p.lam, selected=i, criterion="val_acc_tolerance")
    return fit_


def lam_for_solver(lam: float, alpha: float) -> float:
    """GLM-SAGA's regularisation strength for LF-CBM's ``--lam``: ``lam / max(0.001, alpha)``.

    LF-CBM sets ``metadata['max_reg']['nongrouped'] = lam`` and calls ``glm_saga(..., alpha, epsilon=1, k=1)``;
    GLM-SAGA's path starts at ``max_reg / max(0.001, alpha)`` and, with one point, ends there.

    Examples:
        >>> round(lam_for_solver(1e-4, 0.99), 10)
        0.0001010101
    """
    return float(lam) / max(0.001, float(alpha))


def _fit_fixed_lambda(
    x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
    cfg: HeadConfig, *, progress: bool = True, desc: str = "Sparse head path",
) -> HeadFit:
    """The paper's head: Eq. 2 solved at LF-CBM's fixed ``lam`` (GLM-SAGA's scaling; warm-started from ``lam_max``)."""
    lam_top = lambda_max(x_train, y_train, num_classes, cfg.alpha)
    lam = lam_for_solver(cfg.lam, cfg.alpha)
    if lam >= lam_top:
        warnings.warn(
            f"The fixed lam={cfg.lam:g} (solved at lam/alpha={lam:.4g}, as GLM-SAGA does) is at or above "
            f"lam_max={lam_top:.4g} for these features: the head has no "
            "non-zero weight and predicts the majority class. Lower lam (LF-CBM's default is 7e-4).",
            DegenerateResultWarning, stacklevel=3,
        )
        lams = [lam]
    else:
        n = max(2, min(cfg.n_lambdas, 1 + math.ceil(10 * math.log10(lam_top / lam))))
        lams = [lam_top * (lam / lam_top) ** (k / (n - 1)) for k in range(n)]
        lams[-1] = lam
    fit_ = fit_sparse_head(
        x_train, y_train, x_val, y_val, num_classes=num_classes, alpha=cfg.alpha, lambdas=lams, select="last",
        max_iter=cfg.max_iter, progress=progress, desc=f"{desc} (fixed lambda {lam:g})",
    )
    return replace(fit_, criterion="fixed")



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
    fit_ = fit_sparse_head(
        inputs.train, labels.train, inputs.val, labels.val, num_classes=num_classes, alpha=cfg.alpha, n_lambdas=_matched_points(cfg),
        lambda_min_ratio=min(cfg.lambda_min_ratio, 1e-3), select="nec", target_nec=target, max_iter=cfg.max_iter,
        progress=progress, desc="Sparse head path (standard baseline at SALF-CBM's NEC)",
    )
    row = {"nec": float(fit_.point.nec), "lambda": fit_.lam,
           "val_accuracy": accuracy(fit_.logits(inputs.val), labels.val)}
    if inputs.test is not None:
        row["test_accuracy"] = accuracy(fit_.logits(inputs.test), labels.test)
    out["standard_sparse"] = row
    return out


def _matched_points(cfg: HeadConfig) -> int:
    """Path points of the matched-NEC baseline: 2.5 times the head's (100 for the 40-point path), at most 100."""
    n = cfg.n_lambdas or 40
    return max(n, min(100, math.ceil(2.5 * n)))



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
