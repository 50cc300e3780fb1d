"""The model itself with the tools its output imitates (issue 22, item 3).

`SALFCBMOutput` is a pytree node, so ``torch.export`` works on the model itself; every way of
using an output as if it were the logits tensor -- by hand, through torch functions, Captum,
pytorch-grad-cam, ``torch.jit`` -- raises `NotATensorError` naming ``model.as_classifier()``;
a loaded model is in eval mode and the classifier view shares its model's mode.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

import salfcbm
from salfcbm.errors import NotATensorError, SalfCBMError
from tests.core._interop import CONCEPTS, model, x  # noqa: F401  (fixtures)

FIX = "model.as_classifier()"


def _tiny(pooling: str = "mean") -> salfcbm.SALFCBM:
    torch.manual_seed(0)
    m = salfcbm.wrap(timm.create_model("resnet10t", num_classes=5), concepts=CONCEPTS, num_classes=4, grid=3,
                     input_size=(64, 64), backbone_weights=None, pooling=pooling)
    with torch.no_grad():
        m.head.weight.normal_()
    return m


def _assert_same_output(got, want, *, lazy: bool):
    # by name: pytest's doctest collection may import salfcbm/core/outputs.py a second time, and
    # torch.export.load builds the class registered last under "salfcbm.core.outputs.SALFCBMOutput"
    assert type(got).__module__ == "salfcbm.core.outputs" and type(got).__name__ == "SALFCBMOutput"
    assert got.maps_computed is not lazy  # flattening keeps lazy maps lazy
    for key in ("logits", "concept_activations", "concept_maps"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- torch.export and pytrees
@pytest.mark.parametrize("pooling", ["mean", "softmax"])
def test_torch_export_of_the_model_itself_returns_an_equivalent_output(pooling, x):
    m = _tiny(pooling)
    ep = torch.export.export(m, (x,))
    got = ep.module()(x)
    _assert_same_output(got, m(x), lazy=True)  # every pooling is lazy (21.5)
    other = torch.randn_like(x)  # the program computes, it did not record x's answer
    _assert_same_output(ep.module()(other), m(other), lazy=True)  # every pooling is lazy (21.5)


def test_exported_program_saves_and_loads_with_its_output_type(x):
    m = _tiny()
    ep = torch.export.export(m, (x,)).run_decompositions()
    buf = io.BytesIO()
    torch.export.save(ep, buf)  # the tree spec names the type: salfcbm.core.outputs.SALFCBMOutput
    buf.seek(0)
    _assert_same_output(torch.export.load(buf).module()(x), m(x), lazy=True)


@pytest.mark.parametrize("pooling", ["mean", "softmax"])
def test_pytree_flatten_unflatten_round_trips(pooling, x):
    out = _tiny(pooling)(x)
    leaves, spec = pytree.tree_flatten(out)
    assert any(leaf is out.logits for leaf in leaves)
    again = pytree.tree_unflatten(leaves, spec)
    _assert_same_output(again, out, lazy=True)  # every pooling is lazy (21.5)
    paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(out)[0]]
    assert paths[:2] == [".logits", ".concept_activations"]
    doubled = pytree.tree_map(lambda t: t.double() if isinstance(t, torch.Tensor) else t, out)
    assert doubled.logits.dtype == doubled.concept_maps.dtype == torch.float64
    torch.testing.assert_close(doubled.concept_maps, out.concept_maps.double(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- misuses name the fix
MISUSES = {
    "out.shape": lambda out: out.shape,
    "out.dim()": lambda out: out.dim(),
    "out.size(0)": lambda out: out.size(0),
    "out.argmax(1)": lambda out: out.argmax(1),
    "out.softmax(1)": lambda out: out.softmax(1),
    "out.cpu()": lambda out: out.cpu(),
    "out.detach()": lambda out: out.detach(),
    "out[tensor]": lambda out: out[torch.tensor([0, 1])],
    "out[0-d tensor]": lambda out: out[torch.tensor(0)],
    "out[:, 1]": lambda out: out[:, 1],
    "out[..., 1]": lambda out: out[..., 1],
    "out[1.0]": lambda out: out[1.0],
    "torch.softmax(out, 1)": lambda out: torch.softmax(out, 1),
    "F.cross_entropy(out, y)": lambda out: F.cross_entropy(out, torch.tensor([0, 1])),
    "torch.stack([out])": lambda out: torch.stack([out]),
    "torch.cat([logits, out])": lambda out: torch.cat([out.logits, out]),
    "logits + out": lambda out: out.logits + out,
    "out * 2": lambda out: out * 2,
    "out > 0": lambda out: out > 0,
    "-out": lambda out: -out,
    "key.shape (grad-cam's zip)": lambda out: next(iter(out)).shape,
}


@pytest.mark.parametrize("misuse", list(MISUSES))
def test_using_the_output_as_a_tensor_names_as_classifier(misuse, model, x):
    out = model(x)
    with pytest.raises(NotATensorError) as err:
        MISUSES[misuse](out)
    msg = str(err.value)
    assert FIX in msg and "out.logits" in msg and "SALFCBMOutput is not a tensor" in msg
    assert isinstance(err.value, SalfCBMError) and isinstance(err.value, AttributeError)
    assert isinstance(err.value, TypeError)


def test_the_mapping_behaviour_is_kept(model, x):
    out = model(x)
    assert not hasattr(out, "shape") and not hasattr(out, "dim")  # an AttributeError: probes stay False
    assert out[0] is out.logits and out[np.int64(0)] is out.logits and out["logits"] is out.logits
    assert len(out[1:]) == 2 and list(out) == ["logits", "concept_maps", "concept_activations"]
    assert all(type(str(k)) is str for k in out.keys())
    assert json.loads(json.dumps({k: 1 for k in out})) == {"logits": 1, "concept_maps": 1, "concept_activations": 1}
    assert type(pickle.loads(pickle.dumps(next(iter(out))))) is str
    with torch.no_grad():
        frozen = model(x)
    torch.testing.assert_close(copy.deepcopy(frozen).concept_maps, frozen.concept_maps)
    with pytest.raises(AttributeError) as err:
        out.lgits  # noqa: B018
    assert not isinstance(err.value, NotATensorError) and "logits" in str(err.value)
    with pytest.raises(KeyError):
        out["lgits"]
    with pytest.raises(AttributeError):
        "logits".shape  # noqa: B018  (ordinary strings are untouched)


# ---------------------------------------------------------------------- the tools themselves
def test_captum_integrated_gradients_on_the_model_names_as_classifier(model, x):
    captum = pytest.importorskip("captum.attr")
    with pytest.raises(NotATensorError, match=r"model\.as_classifier\(\)"):
        captum.IntegratedGradients(model).attribute(x, target=1, n_steps=2)


@pytest.mark.parametrize("with_targets", [True, False])
def test_pytorch_grad_cam_on_the_model_names_as_classifier(with_targets, model, x):
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)] if with_targets else None
    with gc.GradCAM(model=model, target_layers=[model.backbone.layer4]) as cam:
        with pytest.raises(NotATensorError, match=r"model\.as_classifier\(\)"):
            cam(input_tensor=x, targets=targets)


def test_jit_trace_and_script_of_the_model_name_as_classifier(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotATensorError, match=r"trace model\.as_classifier\(\)"):
            torch.jit.trace(model, x)
        for scripted in (model, model.as_classifier()):  # the view cannot be scripted either: say what can
            with pytest.raises(NotATensorError, match=r"torch\.jit\.trace\(model\.as_classifier\(\), x\)"):
                torch.jit.script(scripted)


def test_jit_trace_of_a_module_that_reads_the_logits_still_works(model, x):
    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, images):
            return self.m(images).logits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Logits(model), x)
    torch.testing.assert_close(traced(x), model(x).logits)


# ---------------------------------------------------------------------- modes
def test_from_pretrained_returns_the_model_in_eval_mode(tmp_path, x):
    m = _tiny()
    m.save_pretrained(tmp_path)
    net = m.backbone.train()
    net.bn1.eval()
    flags = {n: s.training for n, s in net.named_modules()}
    loaded = salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=net)
    assert not loaded.training and not loaded.head.training and not loaded.bottleneck.training
    assert {n: s.training for n, s in net.named_modules()} == flags  # your backbone keeps its own flags
    torch.testing.assert_close(loaded(x).logits, m(x).logits)
    assert not loaded.as_classifier().training  # what Quantus checks


def test_from_pretrained_with_a_rebuilt_backbone_is_eval_throughout(tmp_path):
    m = salfcbm.wrap("timm:resnet10t", concepts=CONCEPTS, num_classes=4, grid=3, input_size=(64, 64),
                     pretrained=False)
    m.save_pretrained(tmp_path)
    loaded = salfcbm.SALFCBM.from_pretrained(tmp_path, verify_backbone=False)
    assert not any(s.training for s in loaded.modules())


def test_classifier_view_shares_its_models_mode(x):
    m = _tiny().eval()
    clf = m.as_classifier()
    assert clf.training is False and m.training is False  # an eval model gives an eval view
    m.train()
    assert clf.training is True  # follows the model later
    clf.eval()
    assert not m.training and not any(s.training for s in m.modules())  # and switches it
    clf.train()
    assert m.training and all(s.training for s in m.modules())


def test_making_the_view_does_not_switch_the_model():
    m = _tiny().train()
    m.backbone.bn1.eval()
    flags = {n: s.training for n, s in m.named_modules()}
    clf = m.as_classifier()
    assert clf.training is True
    assert {n: s.training for n, s in m.named_modules()} == flags
    assert copy.deepcopy(clf).training is True
