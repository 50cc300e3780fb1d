"""Global decision rules (paper 3.5): `decision_rules`, the concepts a class's head weights connect it to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from salfcbm.errors import InputError
from salfcbm.explain.inputs import check_top_k, class_index
from salfcbm.explain.results import DecisionRule

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["decision_rules"]


def decision_rules(
    model: SALFCBM,
    target: int | str | Sequence[int | str],
    *,
    threshold: float = 0.0,
    top_k: int | None = None,
) -> DecisionRule | list[DecisionRule]:
    """The concepts connected to a class by a non-zero weight, sorted by ``|weight|`` (paper 3.5).

    Args:
        model: a `SALFCBM`.
        target: a class index or name, or a list of them (then a list is returned).
        threshold: keep weights with ``|w| > threshold`` (default: every non-zero weight).
        top_k: keep at most this many concepts per class.

    Returns:
        A `DecisionRule`, or a list of them for a list of targets.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass", "sky"],
        ...                  num_classes=2, backbone_weights=None)
        >>> with torch.no_grad():
        ...     _ = m.head.weight.copy_(torch.tensor([[0.0, 2.0, -3.0], [1.0, 0.0, 0.0]]))
        >>> m.decision_rules(0).pairs()
        [('sky', -3.0), ('grass', 2.0)]
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
        raise InputError(f"`threshold` must be a number >= 0, got {threshold!r}.")
    if top_k is not None:
        top_k = check_top_k(top_k, model.num_concepts)
    if isinstance(target, (list, tuple)) or (isinstance(target, torch.Tensor) and target.dim() == 1):
        return [decision_rules(model, t, threshold=threshold, top_k=top_k) for t in target]
    t = class_index(model, target)
    w = model.head.weight.detach()[t]
    b = model.head.bias
    nz = (w.abs() > threshold).nonzero().flatten()
    order = w[nz].abs().argsort(descending=True, stable=True)
    nz = nz[order]
    if top_k is not None:
        nz = nz[:top_k]
    return DecisionRule(
        target=t,
        class_name=model.class_names[t],
        bias=float(b.detach()[t]) if b is not None else 0.0,
        concept_indices=nz,
        concepts=[model.concepts[i] for i in nz.tolist()],
        weights=w[nz],
    )
