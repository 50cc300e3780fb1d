"""Choosing one point of the regularisation path: one vocabulary, one function (`select_point`).

The rules (`SELECT`), shared by `fit_sparse_head`, the out-of-core `fit_sparse_head_streaming`,
`HeadConfig.select` and `salfcbm.fit`:

* ``"val_acc"``: the best validation accuracy; ties go to the sparser (earlier) point. With
  ``val_tolerance > 0``: the sparsest point whose validation accuracy is within ``val_tolerance``
  of the best (like glmnet's ``lambda.1se``; recorded as ``"val_acc_tolerance"``).
* ``"nec"``: the densest point with at most ``target_nec`` non-zero weights per class (ties:
  better validation, else training accuracy, then the earlier point).
* ``"fixed"``: the paper's choice, a single given ``lam`` (LF-CBM's per-dataset value): the path
  runs from ``lam_max`` down to ``lam`` only to warm-start, and its last point is the answer.
* ``"last"``: the last point computed (the end of the path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from salfcbm.errors import InputError
from salfcbm.head.results import PathPoint

__all__ = ["SELECT", "SOLVER_SELECT", "select_point", "lam_for_solver", "fixed_lambda_path", "criterion_name"]

#: Every selection rule, in `HeadConfig.select` and in the solvers' ``select=``.
SELECT: tuple[str, ...] = ("val_acc", "nec", "fixed", "last")
#: The rules a solver accepts (the same words; ``"fixed"`` needs the path to end at the chosen ``lam``).
SOLVER_SELECT: tuple[str, ...] = SELECT


def select_point(path: Sequence[PathPoint], select: str, target_nec: float | None = None,
                 val_tolerance: float = 0.0) -> int:
    """The index in ``path`` of the point chosen by rule ``select`` (see the module docstring).

    Args:
        path: The path points, from the strongest to the weakest regularisation.
        select: One of `SELECT`.
        target_nec: The NEC target of ``"nec"``.
        val_tolerance: With ``"val_acc"``: accept points this much below the best accuracy and take the sparsest.

    Returns:
        The index of the selected point.

    Raises:
        InputError: On an unknown rule, or when no point has ``nec <= target_nec``.

    Examples:
        >>> import torch
        >>> pts = [PathPoint(lam=1.0 / (i + 1), weight=torch.zeros(1), bias=torch.zeros(1), train_loss=0.0,
        ...                  train_acc=0.0, val_acc=a, nnz=i, nec=float(i)) for i, a in enumerate([0.5, 0.8, 0.81])]
        >>> select_point(pts, "val_acc"), select_point(pts, "val_acc", val_tolerance=0.02), select_point(pts, "last")
        (2, 1, 2)
    """
    if select not in SELECT:
        raise InputError(f"select must be one of {SELECT}; received {select!r}.")
    if not path:
        raise InputError("The path is empty: there is no point to select.")
    if select in ("last", "fixed"):
        return len(path) - 1
    if select == "val_acc":
        return _best_val(path, val_tolerance)
    return _best_at_nec(path, target_nec)


def criterion_name(select: str, val_tolerance: float = 0.0) -> str:
    """The name recorded in `HeadFit.criterion` for a rule (``"val_acc_tolerance"`` with a tolerance)."""
    return "val_acc_tolerance" if select == "val_acc" and val_tolerance > 0 else select


def _best_val(path: Sequence[PathPoint], val_tolerance: float) -> int:
    best = 0
    for i, p in enumerate(path):
        if p.val_acc is not None and p.val_acc > (path[best].val_acc or -1.0):
            best = i  # strict '>' keeps the earlier (sparser) point on ties
    if val_tolerance <= 0:
        return best
    top = max(p.val_acc for p in path if p.val_acc is not None)
    ok = [i for i, p in enumerate(path) if p.val_acc is not None and p.val_acc >= top - val_tolerance]
    return min(ok, key=lambda j: (path[j].nnz, -path[j].val_acc))


def _best_at_nec(path: Sequence[PathPoint], target_nec: float | None) -> int:
    if target_nec is None:
        raise InputError('select="nec" needs target_nec= (non-zero weights per class, e.g. 5).')
    ok = [i for i, p in enumerate(path) if p.nec <= target_nec]  # path[0] has nec 0 for lam_max grids
    if not ok:
        raise InputError(
            f"No path point has nec <= target_nec={target_nec}; the sparsest has nec={path[0].nec:.2f}. "
            "Start the path at lam_max (lambdas=None) or raise target_nec."
        )

    def key(i: int) -> tuple[float, float, int]:
        p = path[i]
        acc = p.val_acc if p.val_acc is not None else p.train_acc
        return (p.nec, acc, -i)

    return max(ok, key=key)


def lam_for_solver(lam: float, alpha: float) -> float:
    """GLM-SAGA's regularisation strength for LF-CBM's ``--lam``: ``lam / max(0.001, alpha)``.

    LF-CBM sets ``metadata['max_reg']['nongrouped'] = lam`` and calls ``glm_saga(..., alpha, epsilon=1, k=1)``;
    GLM-SAGA's path starts at ``max_reg / max(0.001, alpha)`` and, with one point, ends there.

    Examples:
        >>> round(lam_for_solver(1e-4, 0.99), 10)
        0.0001010101
    """
    return float(lam) / max(0.001, float(alpha))


def fixed_lambda_path(lam_top: float, lam: float, n_lambdas: int) -> list[float]:
    """The warm-start path of ``select="fixed"``: geometric from ``lam_top`` (``lam_max``) down to exactly ``lam``.

    About ten points per decade, at most ``n_lambdas`` (at least 2); ``[lam]`` alone when ``lam >= lam_top``.

    Examples:
        >>> [round(v, 4) for v in fixed_lambda_path(1.0, 0.01, 40)][:3], fixed_lambda_path(1.0, 0.01, 40)[-1]
        ([1.0, 0.7943, 0.631], 0.01)
    """
    if lam >= lam_top:
        return [lam]
    n = max(2, min(n_lambdas, 1 + math.ceil(10 * math.log10(lam_top / lam))))
    lams = [lam_top * (lam / lam_top) ** (k / (n - 1)) for k in range(n)]
    lams[-1] = lam
    return lams
