"""save_pretrained / from_pretrained / push_to_hub (the Hub is mocked, never the network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import salfcbm
from salfcbm.errors import BackboneSpecError, ChecksumError, ConfigMismatchError, WeightsFormatError

CONCEPTS = ["a wing", "a beak", "water", "a tree"]


def _trained_like(model: salfcbm.SALFCBM, seed: int = 1) -> salfcbm.SALFCBM:
    """Give the adapter non-trivial weights, a sparse head and statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.bottleneck.weight.copy_(torch.randn(model.bottleneck.weight.shape, generator=g))
        w = torch.randn(model.head.weight.shape, generator=g)
        w[w.abs() < 0.8] = 0
        model.head.weight.copy_(w)
        model.concept_mean.copy_(torch.randn(model.num_concepts, generator=g))
        model.concept_std.copy_(torch.rand(model.num_concepts, generator=g) + 0.5)
    return model.eval()


BUILDERS = {
    "cnn": (lambda: timm.create_model("resnet10t", num_classes=3), 64),
    "vit": (lambda: timm.create_model("test_vit"), 160),
    "swin": (
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", img_size=64, window_size=2, depths=(1, 1, 1, 1), embed_dim=24,
            num_heads=(1, 1, 1, 1),
        ),
        64,
    ),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_round_trip_is_bit_identical(kind, tmp_path):
    build, size = BUILDERS[kind]
    backbone = build().eval()
    model = _trained_like(
        salfcbm.wrap(backbone, concepts=CONCEPTS, num_classes=5, input_size=(size, size), backbone_weights=None)
    )
    model.save_pretrained(tmp_path)
    # a random-init backbone (backbone_weights=None) cannot be rebuilt from its spec: its weights are saved too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "backbone.safetensors", "config.json",
                                                          "model.safetensors"]
    same = salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=backbone).eval()
    x = torch.randn(2, 3, size, size)
    a, b = model(x), same(x)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.concept_maps, b.concept_maps)
    assert same.concepts == CONCEPTS and same.layer == model.layer


def test_rebuilds_the_backbone_from_the_spec(tmp_path):
    torch.manual_seed(123)
    model = _trained_like(salfcbm.wrap("timm:test_vit", pretrained=False, concepts=CONCEPTS, num_classes=2))
    model.save_pretrained(tmp_path)
    torch.manual_seed(123)  # same seed -> same random backbone, so the outputs must agree exactly
    same = salfcbm.SALFCBM.from_pretrained(tmp_path).eval()
    assert type(same.backbone).__name__ == "VisionTransformer"
    x = torch.randn(1, 3, 160, 160)
    assert torch.equal(model(x).logits, same(x).logits)


def test_weights_file_holds_the_adapter_only(tmp_path):
    model = _trained_like(salfcbm.wrap(timm.create_model("test_vit"), concepts=CONCEPTS, num_classes=3,
                                       backbone_weights=None))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert set(state) == {"bottleneck.weight", "head.weight", "head.bias", "concept_mean",
                          "concept_std"}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["backbone"] == {"source": "timm", "name": "test_vit", "weights": None, "kwargs": {}}
    assert cfg["concepts"] == CONCEPTS and cfg["grid"] == [7, 7] and cfg["pooling"] == "mean"
    assert cfg["layer"] == model.layer and cfg["cls_concat"] is False
    card = (tmp_path / "README.md").read_text()
    nnz = int((model.head.weight != 0).sum())
    for needle in ("timm:test_vit", model.layer, "| Concepts | 4 |", "7 x 7", f"Head non-zeros | {nnz} ", "a beak"):
        assert needle in card


def test_refuses_pickle_checkpoints(tmp_path):
    model = salfcbm.wrap(timm.create_model("test_vit"), concepts=CONCEPTS, num_classes=3, backbone_weights=None)
    model.save_pretrained(tmp_path)
    torch.save(model.adapter_state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(WeightsFormatError, match="pickle"):
        salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=model.backbone)


def test_explains_concept_count_mismatch(tmp_path):
    model = salfcbm.wrap(timm.create_model("test_vit"), concepts=CONCEPTS, num_classes=3, backbone_weights=None)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["concepts"] = CONCEPTS[:3]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ChecksumError, match="differs from the config saved with these weights"):
        salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=model.backbone)
    with pytest.raises(ConfigMismatchError, match="3 concepts but the bottleneck has 4 rows"):
        salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=model.backbone, verify=False)


def test_explains_backbone_channel_mismatch(tmp_path):
    model = salfcbm.wrap(timm.create_model("test_vit"), concepts=CONCEPTS, num_classes=3, backbone_weights=None)
    model.save_pretrained(tmp_path)
    other = timm.create_model("resnet10t")
    with pytest.raises(ConfigMismatchError, match="channels"):
        salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=other, layer="layer4", layout=None, feature_channels=None,
                                        input_size=[64, 64])


def test_corrupt_weights_are_refused(tmp_path):
    model = salfcbm.wrap(timm.create_model("test_vit"), concepts=CONCEPTS, num_classes=3, backbone_weights=None)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ChecksumError, match="does not match the SHA-256"):
        salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=model.backbone)
    with pytest.raises(WeightsFormatError, match="safetensors"):
        salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=model.backbone, verify=False)


def test_custom_backbone_needs_backbone_argument(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU())
    model = salfcbm.wrap(net, concepts=CONCEPTS, num_classes=2, layer="1", input_size=(32, 32))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["backbone"]["source"] == "custom"
    with pytest.raises(BackboneSpecError, match="backbone=my_backbone"):
        salfcbm.SALFCBM.from_pretrained(tmp_path)
    assert salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=net).num_concepts == 4


class _FakeHub:
    """Stands in for the Hub: create_repo/upload_folder/hf_hub_download against a local folder."""

    def __init__(self, root: Path):
        self.root = root

    def api(self, *args, **kwargs):
        hub = self

        class Api:
            def create_repo(self, repo_id, **kw):
                (hub.root / repo_id).mkdir(parents=True, exist_ok=True)
                return type("Url", (), {"repo_id": repo_id})()

            def upload_folder(self, repo_id, folder_path, **kw):
                shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
                return f"https://hub.invalid/{repo_id}/commit/1"

        return Api()

    def download(self, repo_id, filename, **kwargs):
        path = self.root / repo_id / filename
        if not path.exists():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)


def test_push_to_hub_and_load_by_repo_id(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import hub_mixin

    hub = _FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hub_mixin, "HfApi", hub.api)
    monkeypatch.setattr(hub_mixin, "hf_hub_download", hub.download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.download)
    backbone = timm.create_model("test_vit").eval()
    model = _trained_like(salfcbm.wrap(backbone, concepts=CONCEPTS, num_classes=3, backbone_weights=None))
    url = model.push_to_hub("user/salf-test-vit")
    assert url.endswith("commit/1")
    pushed = tmp_path / "hub" / "user" / "salf-test-vit"
    assert {p.name for p in pushed.iterdir()} == {"README.md", "config.json", "model.safetensors", "backbone.safetensors"}
    same = salfcbm.SALFCBM.from_pretrained("user/salf-test-vit", backbone=backbone).eval()
    x = torch.randn(1, 3, 160, 160)
    assert torch.equal(model(x).logits, same(x).logits)
    # a repo that only has a pickle checkpoint is refused
    (pushed / "model.safetensors").unlink()
    save_file({"x": torch.zeros(1)}, pushed / "other.safetensors")
    with pytest.raises(WeightsFormatError, match="refuses pickle"):
        salfcbm.SALFCBM.from_pretrained("user/salf-test-vit", backbone=backbone)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    model = salfcbm.wrap(timm.create_model("test_vit"), concepts=CONCEPTS, num_classes=3, backbone_weights=None)
    model.save_pretrained(tmp_path)
    good = (tmp_path / "model.safetensors").read_bytes()
    import safetensors.torch

    def broken(state, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert not [p for p in tmp_path.parent.iterdir() if ".tmp-" in p.name]
