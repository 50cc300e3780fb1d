"""What `help()` and `repr()` show a user: real signatures on the model's explanation methods, short reprs."""

from __future__ import annotations

import inspect

import pytest
import timm
import torch

import salfcbm
import salfcbm.explain as explain_mod
from salfcbm import SALFCBM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return salfcbm.wrap(timm.create_model("test_resnet", pretrained=False), concepts=[f"concept {i}" for i in range(40)],
                        num_classes=5, grid=4, backbone_weights=None).eval()


@pytest.mark.parametrize("name", ["explain", "explain_region", "intervene", "decision_rules"])
def test_model_methods_have_the_signature_of_their_function(name):
    method = inspect.signature(getattr(SALFCBM, name))
    function = inspect.signature(getattr(explain_mod, name))
    as_method = [(p.name, p.kind, p.default) for p in list(method.parameters.values())[1:]]  # minus self
    as_function = [(p.name, p.kind, p.default) for p in list(function.parameters.values())[1:]]  # minus model
    assert as_method == as_function
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in method.parameters.values())
    doc = inspect.getdoc(getattr(SALFCBM, name))
    for p in as_method:
        assert f"{p[0]}:" in doc, (name, p[0])


def test_help_lists_the_parameters():
    import pydoc

    text = pydoc.render_doc(SALFCBM.explain, renderer=pydoc.plaintext)
    assert "top_k" in text and "heatmap_size" in text


def test_reprs_are_short(model):
    x = torch.randn(3, 3, 48, 48)
    batch = model.explain(x, top_k=8)
    for obj in (batch, batch[0], batch[0].top, model.explain_region(x[0], box=[(0, 0, 24, 24), (8, 8, 40, 40)]),
                model.explain_region(x[0], box=(0, 0, 24, 24))[0], model.intervene(x[0], "concept 3", beta=2.0),
                model.decision_rules(0)):
        text = repr(obj)
        assert len(text) < 500, (type(obj).__name__, len(text))
        assert text.startswith(type(obj).__name__ + "(")
        assert "tensor([" not in text  # no tensor dumps
    assert "tensor(8, 48, 48)" in repr(batch[0].top)  # heatmaps by shape
