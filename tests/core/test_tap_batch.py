"""A tapped layer keeps the batch: one map per input image, or a salfcbm error, never another batch.

TNT's blocks return ``(inner pixel tokens, outer patch tokens)``; the inner tokens have batch
``B x (number of patches)``. Reading them as the map gave logits of shape ``(B x 196, L)``.
"""

from __future__ import annotations

import pytest
import timm
import torch
from einops import rearrange
from torch import nn

import salfcbm
from salfcbm.core.tap import FeatureTap, default_layer, probe_layers
from salfcbm.errors import BatchMismatchError, NonSpatialLayerError

CONCEPTS = ["a wing", "a beak", "water"]


def _tnt() -> nn.Module:
    """A small random TNT (the architecture of ``tnt_s_legacy_patch16_224``): 4x4 patches at 32 px."""
    torch.manual_seed(0)
    return timm.create_model("tnt_s_legacy_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48,
                             inner_dim=12, num_heads_inner=2, num_heads_outer=2, num_classes=3).eval()


def _outer_tokens(net: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    got = []
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda _m, _i, o: got.append(o))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    pixel, patch = got[0]
    assert pixel.shape[0] == x.shape[0] * 16 and patch.shape[0] == x.shape[0]  # the case at hand
    return patch


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_tnt_wraps_at_the_outer_patch_tokens_and_keeps_the_batch(batch):
    net = _tnt()
    model = salfcbm.wrap(net, concepts=CONCEPTS, num_classes=4, grid=2, input_size=(32, 32), backbone_weights=None)
    assert model.layer == "blocks.1" and model.tap.layout == "NLC" and model.tap.num_prefix_tokens == 1
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        fmap = model.forward_features(x)
    assert out.logits.shape == (batch, 4) and out.concept_maps.shape == (batch, 3, 2, 2)
    patch = _outer_tokens(net, "blocks.1", x)
    torch.testing.assert_close(fmap, rearrange(patch[:, 1:], "b (h w) c -> b c h w", h=4, w=4))


def test_tnt_inner_layer_is_refused_with_candidates():
    net = _tnt()
    with pytest.raises(BatchMismatchError, match=r"blocks\.1\.attn_in.*'blocks\.1'") as e:
        salfcbm.wrap(net, concepts=CONCEPTS, num_classes=4, layer="blocks.1.attn_in", input_size=(32, 32),
                     backbone_weights=None)
    assert isinstance(e.value, NonSpatialLayerError) and "(32, 4, 12)" in str(e.value)
    infos = {i.name: i for i in probe_layers(net, (32, 32))}
    assert not infos["blocks.1.attn_in"].keeps_batch and not infos["blocks.1.attn_in"].spatial
    assert infos["blocks.1"].spatial and infos["blocks.1"].element == 1


class _Folded(nn.Module):
    """A block returning ``(tokens folded into the batch, the per-image map)``, like TNT's blocks."""

    def __init__(self, per_image: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.per_image = per_image

    def forward(self, x):
        f = self.conv(x)  # (B, 8, 8, 8) for 32 px
        folded = rearrange(f, "b c (h p) (w q) -> (b p q) c h w", p=2, q=2)  # (4B, 8, 4, 4): looks spatial
        return (folded, f) if self.per_image else (folded,)


class _Net(nn.Module):
    def __init__(self, per_image: bool = True):
        super().__init__()
        self.block = _Folded(per_image)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out = self.block(x)[-1]
        return self.fc(out.mean((-2, -1)) if out.shape[0] == x.shape[0] else out.mean((0, -2, -1))[None])


def test_tuple_led_by_a_wrong_batch_tensor_is_read_at_the_per_image_element():
    net = _Net()
    model = salfcbm.wrap(net, concepts=CONCEPTS, num_classes=2, layer="block", grid=4, input_size=(32, 32))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), net.block.conv(x))
        assert model(x).logits.shape == (3, 2)
    assert model.tap.layout == "NCHW" and model.tap.element == 1 and model.config.feature_channels == 8


def test_a_layer_with_no_per_image_tensor_is_refused_and_never_the_default():
    net = _Net(per_image=False)
    with pytest.raises(BatchMismatchError, match=r"'block'.*\(8, 8, 4, 4\) for a batch of 2 images"):
        FeatureTap(net, "block", input_size=(32, 32))
    assert default_layer(net, (32, 32)) == "block.conv"  # the folded output is skipped


def test_forward_never_returns_another_batch():
    """With the layout given (as from a saved config: no probe at build), the batch is checked per call."""
    net = _Net(per_image=False)
    tap = FeatureTap(net, "block", layout="NCHW")
    with pytest.raises(BatchMismatchError, match=r"'block' cannot be read per image.*\(12, 8, 4, 4\)"):
        tap(torch.randn(3, 3, 32, 32))
    model = salfcbm.SALFCBM(net, concepts=CONCEPTS, num_classes=2, layer="block", layout="NCHW", feature_channels=8,
                            input_size=[32, 32], backbone_weights=None)
    with pytest.raises(BatchMismatchError):
        model(torch.randn(2, 3, 32, 32))


def test_loading_with_a_wrong_batch_layer_is_refused(tmp_path):
    net = _tnt()
    model = salfcbm.wrap(net, concepts=CONCEPTS, num_classes=4, grid=2, input_size=(32, 32), backbone_weights=None)
    model.save_pretrained(tmp_path / "m")
    back = salfcbm.SALFCBM.from_pretrained(tmp_path / "m", backbone=net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x).logits)
    with pytest.raises(BatchMismatchError):  # the load probes the layer with a batch of two
        salfcbm.SALFCBM.from_pretrained(tmp_path / "m", backbone=net, layer="blocks.1.attn_in", verify_backbone=False)


class _PosFirst(nn.Module):
    """A block returning ``(a learned (1, C, h, w) embedding, the per-image map)``: with a probe of one
    image the embedding looks like a per-image map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 8, 8, 8))

    def forward(self, x):
        return self.pos, self.conv(x) + self.pos


def test_probe_with_two_images_finds_the_per_image_tensor_also_for_one_image():
    net = nn.Sequential(_PosFirst())
    tap = FeatureTap(net, "0", input_size=(32, 32))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tap(x), net[0].conv(x) + net[0].pos)
    assert tap.element == 1
