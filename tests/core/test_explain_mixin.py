"""The explanation methods are a mixin of the explain layer (issue 20.4): the model class users get
inherits them, core imports nothing above itself, and pickling, torch.save, torch.export, the Hub
mixin and ``import salfcbm`` (torch-free) keep working."""

from __future__ import annotations

import ast
import inspect
import io
import pickle
from pathlib import Path

import pytest
import torch

import salfcbm
from salfcbm.core.model import SALFCBMBase
import salfcbm.explain as explain_pkg  # the package-level names (the module split keeps them)
from salfcbm.explain.mixin import SALFCBM, ExplainMixin

CORE = Path(__file__).resolve().parents[2] / "salfcbm" / "core"
METHODS = ["explain", "explain_region", "intervene", "decision_rules"]


def _model(pooling="mean"):
    torch.manual_seed(0)
    return salfcbm.wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.ReLU()),
                        concepts=["a", "b", "c"], num_classes=2, grid=4, input_size=(16, 16), layer="1",
                        pooling=pooling).eval()


def test_wrap_and_from_pretrained_give_the_public_class(tmp_path):
    m = _model()
    assert type(m) is SALFCBM and salfcbm.SALFCBM is SALFCBM and salfcbm.wrap.__self__ is SALFCBM
    assert isinstance(m, salfcbm.SALFCBM) and isinstance(m, SALFCBMBase) and isinstance(m, ExplainMixin)
    m.save_pretrained(tmp_path / "m")
    back = salfcbm.SALFCBM.from_pretrained(tmp_path / "m", backbone=m.backbone)
    assert type(back) is SALFCBM
    assert back._hub_mixin_info.model_card_data.library_name == "salfcbm"  # the Hub mixin's settings inherited
    card = (tmp_path / "m" / "README.md").read_text()
    assert "library_name: salfcbm" in card and "# SALF-CBM on" in card


@pytest.mark.parametrize("name", METHODS)
def test_each_method_is_the_explain_function_itself(name):
    """One signature and one docstring: nothing re-declared, nothing to keep in sync."""
    assert getattr(SALFCBM, name) is getattr(explain_pkg, name)
    assert not hasattr(SALFCBMBase, name)
    bound = inspect.signature(getattr(_model(), name))
    function = inspect.signature(getattr(explain_pkg, name))
    assert list(bound.parameters) == list(function.parameters)[1:]  # minus `model`


def test_core_imports_nothing_above_itself_not_even_for_types():
    above = ("salfcbm.explain", "salfcbm.viz", "salfcbm.training", "salfcbm.head", "salfcbm.evaluation",
             "salfcbm.demo", "salfcbm.app", "salfcbm.cli", "salfcbm.supervision", "salfcbm.datasets")
    found = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.name}: {n}" for n in names if n.startswith(above)]
    assert found == []


@pytest.mark.parametrize("pooling", ["mean", "softmax"])
def test_pickle_torch_save_and_export_keep_the_class(pooling):
    m = _model(pooling)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = m(x).logits
    again = pickle.loads(pickle.dumps(m))
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (again, loaded):
        assert type(other) is SALFCBM
        with torch.no_grad():
            torch.testing.assert_close(other(x).logits, want)
        assert other.explain(x, top_k=1)[0].prediction == int(want[0].argmax())
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x).logits, want, atol=1e-5, rtol=1e-5)
