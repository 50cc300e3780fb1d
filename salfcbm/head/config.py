"""The head's settings: `HeadConfig` (solver, path and selection) and the paper's per-dataset ``lam``.

`salfcbm.fit` passes a `HeadConfig` to `salfcbm.head.fit_head`; the selection words are
`salfcbm.head.selection.SELECT`, the one vocabulary of the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from salfcbm.errors import InputError, closest
from salfcbm.head.selection import SELECT

__all__ = ["HeadConfig", "PAPER_LAMBDAS"]

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
    * ``"last"``: the end of the path (``lam_max * lambda_min_ratio``).

    One function applies them all: `salfcbm.head.selection.select_point`.

    Attributes:
        sparse: elastic-net head (GLM-SAGA objective) if True, else a dense L2 head.
        alpha: elastic-net mixing (0.99 in the paper).
        n_lambdas: points on the regularisation path (with ``"fixed"``: at most this many
            warm-start points from ``lam_max`` down to ``lam``; the solution is the same).
            ``None`` (default): scaled with the data (`for_data`: one point per 25 training
            images, between 10 and 40).
        lambda_min_ratio: end of the path relative to ``lam_max``.
        select: ``"fixed"``, ``"val_acc"``, ``"nec"`` or ``"last"`` (`salfcbm.head.selection.SELECT`).
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
        out_of_core: fit the sparse head with `salfcbm.head.fit_sparse_head_streaming` (``True``), with
            the in-memory `salfcbm.head.fit_sparse_head` (``False``), or (``"auto"``) out of core when
            the ``(N, M)`` float32 features exceed ``max_memory_gb`` or when ``torch.distributed`` runs
            several ranks (each rank then fits its share of the chunks).
        max_memory_gb: the feature size above which ``out_of_core="auto"`` streams.
        chunk_rows: rows per chunk out of core.

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
    out_of_core: bool | str = "auto"
    max_memory_gb: float = 16.0
    chunk_rows: int = 65536

    def __post_init__(self):
        if self.lam is not None and self.select == "val_acc":
            self.select = "fixed"  # a lam given alone is the paper's fixed-lambda selection
        if self.select not in SELECT:
            raise InputError(f"HeadConfig.select must be one of {SELECT} (salfcbm.head.SELECT), got {self.select!r}.")
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
        if self.out_of_core not in (True, False, "auto"):
            raise InputError(f"HeadConfig.out_of_core must be True, False or 'auto', got {self.out_of_core!r}.")
        if isinstance(self.chunk_rows, bool) or not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise InputError(f"HeadConfig.chunk_rows must be a positive int, got {self.chunk_rows!r}.")
        if isinstance(self.max_memory_gb, bool) or not isinstance(self.max_memory_gb, (int, float)) \
                or not self.max_memory_gb > 0:
            raise InputError(f"HeadConfig.max_memory_gb must be a positive number, got {self.max_memory_gb!r}.")
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

    def matched_points(self) -> int:
        """Path points of the matched-NEC baseline: 2.5 times the head's (100 for the 40-point path), at most 100.

        Examples:
            >>> HeadConfig(n_lambdas=40).matched_points(), HeadConfig(n_lambdas=10).matched_points()
            (100, 25)
        """
        n = self.n_lambdas or 40
        return max(n, min(100, math.ceil(2.5 * n)))

    def streams(self, n_rows: int, n_features: int) -> bool:
        """Whether the sparse head of ``n_rows x n_features`` features is fitted out of core.

        Examples:
            >>> HeadConfig().streams(1000, 100), HeadConfig().streams(1_281_167, 4741), HeadConfig(out_of_core=True).streams(10, 2)
            (False, True, True)
        """
        if self.out_of_core == "auto":
            return 4.0 * n_rows * n_features > self.max_memory_gb * 2**30
        return bool(self.out_of_core)
