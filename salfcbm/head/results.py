"""The results of a head fit: one `PathPoint` per regularisation strength and the `HeadFit` chosen from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["PathPoint", "HeadFit"]


@dataclass
class PathPoint:
    """One point of the regularisation path.

    Attributes:
        lam: Regularisation strength of this point.
        weight: ``(L, M)`` class weights, on the CPU.
        bias: ``(L,)`` class biases, on the CPU.
        train_loss: Mean training cross-entropy (without the penalty).
        train_acc: Training accuracy in ``[0, 1]``.
        val_acc: Validation accuracy, or ``None`` without validation data.
        nnz: Number of non-zero entries of ``weight``.
        nec: Average number of non-zero weights per class, ``nnz / L``.
        objective: The penalised objective of Eq. 2 (mean loss + ``lam * R(W)``).
        kkt: Largest violation of the optimality conditions, in gradient units.
        n_iter: Solver iterations spent on this point.
        seconds: Wall time spent on this point.
    """

    lam: float
    weight: Tensor
    bias: Tensor
    train_loss: float
    train_acc: float
    val_acc: float | None
    nnz: int
    nec: float
    objective: float = float("nan")
    kkt: float = float("nan")
    n_iter: int = 0
    seconds: float = 0.0


@dataclass
class HeadFit:
    """A fitted final layer and the path it was chosen from.

    Attributes:
        weight: ``(L, M)`` weights of the selected point (CPU).
        bias: ``(L,)`` biases of the selected point (CPU).
        lam: Regularisation strength of the selected point.
        path: Every point computed, from the strongest to the weakest regularisation.
        selected: Index of the selected point in ``path``.
        criterion: How it was selected: ``"val_acc"``, ``"nec"``, ``"last"`` or ``"dense"``.
        lam_max: Smallest ``lam`` giving ``W = 0`` (``inf`` for a dense head).
        alpha: Elastic-net mixing parameter (``0`` for a dense head).
    """

    weight: Tensor
    bias: Tensor
    lam: float
    path: list[PathPoint]
    selected: int
    criterion: str
    lam_max: float = float("inf")
    alpha: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def point(self) -> PathPoint:
        """The selected `PathPoint`."""
        return self.path[self.selected]

    def logits(self, x: Tensor) -> Tensor:
        """Class scores ``x @ W.T + b`` for standardised features ``x`` of shape ``(B, M)``."""
        w = self.weight.to(device=x.device, dtype=x.dtype)
        return torch.addmm(self.bias.to(device=x.device, dtype=x.dtype), x, w.T)

    def summary(self) -> list[dict[str, Any]]:
        """One JSON-able row per path point: ``lam``, losses, accuracies, ``nnz``, ``nec``, ``selected``."""
        rows = []
        for i, p in enumerate(self.path):
            rows.append(
                {
                    "index": i,
                    "lam": float(p.lam),
                    "train_loss": float(p.train_loss),
                    "objective": float(p.objective),
                    "train_acc": float(p.train_acc),
                    "val_acc": None if p.val_acc is None else float(p.val_acc),
                    "nnz": int(p.nnz),
                    "nec": float(p.nec),
                    "kkt": float(p.kkt),
                    "n_iter": int(p.n_iter),
                    "seconds": float(p.seconds),
                    "selected": i == self.selected,
                }
            )
        return rows

