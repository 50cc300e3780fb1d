"""The model as a plain classifier for Captum, pytorch-grad-cam, jit, export and ONNX; Captum targets."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import salfcbm
from salfcbm.errors import InputError
from tests.core._interop import CONCEPTS, model, x  # noqa: F401  (fixtures)


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_classifier_view_returns_the_logits_tensor(model, x):
    clf = model.as_classifier()
    out = clf(x)
    assert isinstance(out, torch.Tensor) and not isinstance(out, salfcbm.SALFCBMOutput)
    torch.testing.assert_close(out, model(x).logits)
    assert clf.model is model and set(clf.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    loss = F.cross_entropy(clf(x), torch.tensor([0, 3]))
    loss.backward()
    assert model.head.weight.grad is not None
    model.zero_grad()


def test_captum_integrated_gradients_and_layer_gradcam(model, x):
    captum = pytest.importorskip("captum.attr")
    clf = model.as_classifier()
    ig = captum.IntegratedGradients(clf).attribute(x, target=1, n_steps=4)
    assert ig.shape == x.shape and ig.abs().sum() > 0
    cam = captum.LayerGradCam(clf, model.backbone.layer4).attribute(x, target=[0, 2])
    assert cam.shape == (2, 1, 2, 2) and torch.isfinite(cam).all() and cam.abs().sum() > 0
    assert _no_hooks(model.backbone)


def test_pytorch_grad_cam(model, x):
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with gc.GradCAM(model=model.as_classifier(), target_layers=[model.backbone.layer4]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    assert heat.shape == (2, 64, 64) and abs(heat).sum() > 0


def test_jit_trace(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.as_classifier(), x)
    torch.testing.assert_close(traced(x), model(x).logits)
    assert _no_hooks(model.backbone)


def test_torch_export(model, x):
    ep = torch.export.export(model.as_classifier(), (x,))
    torch.testing.assert_close(ep.module()(x), model(x).logits, rtol=1e-4, atol=1e-5)
    assert _no_hooks(model.backbone)


def test_onnx_export_and_run(model, x, tmp_path):
    pytest.importorskip("onnxscript")
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.as_classifier(), (x,), dynamo=True).save(str(path))
    assert path.stat().st_size > 0
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path))
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), model(x).logits.detach(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ SALFCBMAttribution and Captum's targets
@pytest.mark.parametrize(
    "target",
    [1, (1,), [1, 1], [(1,), (1,)], torch.tensor(1), torch.tensor([1, 1]), torch.tensor([[1], [1]])],
    ids=["int", "tuple", "list", "list-of-tuples", "scalar-tensor", "tensor", "column-tensor"],
)
def test_attribution_accepts_captum_target_forms(model, x, target):
    attr = salfcbm.SALFCBMAttribution(model)
    torch.testing.assert_close(attr.attribute(x, target=target), attr.attribute(x, target=[1, 1]))


def test_attribution_warns_about_ignored_captum_arguments(model, x):
    attr = salfcbm.SALFCBMAttribution(model)
    with pytest.warns(UserWarning, match=r"ignores the Captum arguments \['baselines', 'n_steps'\]"):
        attr.attribute(x, target=0, baselines=torch.zeros_like(x), n_steps=10)
    with pytest.raises(InputError, match="unknown arguments \\['n_step'\\].*n_steps"):
        attr.attribute(x, target=0, n_step=10)
    with pytest.raises(InputError, match="1-tuple"):
        attr.attribute(x, target=(0, 1))


def test_attribution_class_maps_equal_the_full_maps_path(model, x):
    out = model(x)
    maps = out.concept_maps
    w = model.head.weight[[2, 0]] / model.concept_std
    ref = torch.einsum("bm,bmhw->bhw", w, maps)
    got = salfcbm.SALFCBMAttribution(model, upsample=False).attribute(x, target=[2, 0])[:, 0]
    torch.testing.assert_close(got, ref.detach(), rtol=1e-4, atol=1e-5)
