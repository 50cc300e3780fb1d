"""The bottleneck has no bias (paper, LF-CBM), and old checkpoints with one still load (issue 15, item 6)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

import salfcbm
from salfcbm.demo.scenes import SmallConvNet


def _model(**kw):
    torch.manual_seed(0)
    return salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=["a", "b", "c"], num_classes=2, grid=3,
                        input_size=(32, 32), backbone_weights=None, **kw)


def test_bottleneck_is_a_bias_free_1x1_conv_and_selection_keeps_it_so():
    m = _model()
    assert m.bottleneck.bias is None and m.config["bottleneck_bias"] is False
    m.select_concepts(["c", "a"])
    assert m.bottleneck.bias is None and m.bottleneck.weight.shape[0] == 2


def test_a_checkpoint_saved_with_a_bias_still_loads(tmp_path):
    net = SmallConvNet(num_classes=2, width=4).eval()
    old = salfcbm.SALFCBM(net, concepts=["a", "b", "c"], num_classes=2, grid=(3, 3), input_size=[32, 32],
                          bottleneck_bias=True, backbone_spec={"source": "custom", "name": "x", "weights": None})
    with torch.no_grad():
        old.bottleneck.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        old.head.weight.normal_()
    old.save_pretrained(tmp_path)
    # rewrite it as the version-1 files of earlier salfcbm: no bottleneck_bias key, no checksums
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k in ("bottleneck_bias", "weights_sha256", "backbone_fingerprint"):
        cfg.pop(k, None)
    cfg["version"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(dict(load_file(tmp_path / "model.safetensors")), tmp_path / "model.safetensors")
    assert "bottleneck.bias" in load_file(tmp_path / "model.safetensors")
    new = salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=net).eval()
    assert new.bottleneck.bias is not None
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(new(x).logits, old.eval()(x).logits)
    assert torch.equal(new.bottleneck.bias, torch.tensor([0.5, -1.0, 2.0]))


def test_new_checkpoint_has_no_bias(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path)
    assert "bottleneck.bias" not in load_file(tmp_path / "model.safetensors")
    again = salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=m.backbone)
    assert again.bottleneck.bias is None
