"""The model's explanation methods, as a mixin, and `SALFCBM`, the model class users get.

The Hugging Face pattern (``transformers``' ``GenerationMixin``): the explain layer defines the
methods, the public model class inherits them, and the core model knows nothing of them, so
``salfcbm.core`` imports nothing above itself (the import contract has no exception).

* `ExplainMixin` holds ``explain``, ``explain_region``, ``intervene`` and ``decision_rules``. Each
  *is* the `salfcbm.explain` function of the same name, its first parameter (``model``) bound to
  the model: one signature and one docstring, nothing to keep in sync.
* `SALFCBM` is `salfcbm.core.model.SALFCBMBase` with the mixin: what `wrap` and
  ``SALFCBM.from_pretrained`` return (and what ``salfcbm.SALFCBM`` / ``salfcbm.wrap`` name). It adds
  no state, so pickling / ``torch.save``, ``torch.export``, ``save_pretrained`` and the Hub mixin
  behave as the base's.
"""

from __future__ import annotations

from salfcbm.core.model import SALFCBMBase
from salfcbm.explain import decision_rules, explain, explain_region, intervene

__all__ = ["SALFCBM", "ExplainMixin", "wrap"]


class ExplainMixin:
    """Explanation methods for a SALF-CBM (paper 3.5, 3.6); mixed into `SALFCBM`.

    ``model.explain(images, ...)`` is ``salfcbm.explain.explain(model, images, ...)``, and so on for
    ``explain_region``, ``intervene`` and ``decision_rules``: the functions themselves, bound as
    methods, so ``help(model.explain)`` shows the function's signature and docstring.
    """

    explain = explain
    explain_region = explain_region
    intervene = intervene
    decision_rules = decision_rules


class SALFCBM(ExplainMixin, SALFCBMBase):
    """A spatially-aware, label-free concept bottleneck model (SALF-CBM) with its explanations.

    `salfcbm.core.model.SALFCBMBase` (backbone, tap, bottleneck, pooling, head, persistence; see
    its docstring for the arguments) plus `ExplainMixin`'s ``explain``, ``explain_region``,
    ``intervene`` and ``decision_rules``. Build one with `salfcbm.wrap` or load one with
    ``SALFCBM.from_pretrained``.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("test_vit", pretrained=False), concepts=["a wing", "a beak"],
        ...                  num_classes=3, backbone_weights=None)
        >>> isinstance(m, salfcbm.SALFCBM), m(torch.randn(1, 3, 160, 160)).concept_maps.shape
        (True, torch.Size([1, 2, 7, 7]))
    """


wrap = SALFCBM.wrap
