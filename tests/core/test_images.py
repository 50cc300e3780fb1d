"""The one image entry point (issue 10.1, 11) and the one geometry shared by scorer and backbone (issue 15.1)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import salfcbm
from salfcbm.errors import AlignmentError, CorruptImageError, ImageConversionWarning, ImageInputError, SalfCBMError
from salfcbm.core.images import ImageTransform, align_dataset, load_images
from salfcbm.supervision.prompts import PromptGrid

SIZE = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False)
    return salfcbm.wrap(net, concepts=["a", "b", "c"], num_classes=2, backbone_weights=None,
                        input_size=(SIZE, SIZE)).eval()


def _rgb(h=40, w=60, seed=0) -> np.ndarray:
    """A smooth uint8 (H, W, 3) image (smooth so PIL's and torch's resampling agree closely)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))


# ----------------------------------------------------------------------------- dtype rule
def test_uint8_through_preprocess_is_finite_and_equals_float(model):
    """Issue 10.1: uint8 gave inf (mean/std cast to uint8)."""
    img = torch.from_numpy(_rgb()).permute(2, 0, 1).contiguous()  # what torchvision.io.read_image gives
    x = model.preprocess(img)
    assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == torch.float32 and torch.isfinite(x).all()
    torch.testing.assert_close(x, model.preprocess(img.float() / 255))
    e = model.explain(img)  # explain takes raw images too (uint8 is unambiguous)
    assert torch.isfinite(e[0].top.scores).all()


def test_pil_path_array_and_list_give_the_same_batch(model, tmp_path):
    """Issue 10.1: preprocess(PIL.Image) failed with AttributeError."""
    arr = _rgb()
    path = tmp_path / "im.png"
    Image.fromarray(arr).save(path)
    ref = model.preprocess(torch.from_numpy(arr).permute(2, 0, 1))
    for x in (Image.fromarray(arr), str(path), path, arr):
        torch.testing.assert_close(model.preprocess(x), ref)
    both = model.preprocess([Image.fromarray(arr), Image.fromarray(_rgb(70, 30, seed=1))])  # mixed sizes
    assert both.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(both[:1], ref)


def test_grayscale_and_rgba_are_converted_with_a_note(model):
    gray = torch.rand(1, 20, 24)
    with pytest.warns(ImageConversionWarning, match="Grayscale"):
        g = model.preprocess(gray)
    torch.testing.assert_close(g, model.preprocess(gray.expand(3, -1, -1)))
    rgba = Image.fromarray(np.dstack([_rgb(), np.full((40, 60), 7, np.uint8)]), mode="RGBA")
    with pytest.warns(ImageConversionWarning, match="alpha"):
        a = model.preprocess(rgba)
    torch.testing.assert_close(a, model.preprocess(Image.fromarray(_rgb())))
    with pytest.warns(ImageConversionWarning, match="Grayscale"):
        assert model.preprocess(Image.fromarray(_rgb()[..., 0])).shape == (1, 3, SIZE, SIZE)


# ----------------------------------------------------------------------------- geometry = the model's own
def test_preprocess_is_timms_eval_transform_not_a_squash():
    """Issue 10.1: preprocess squashed the aspect ratio; timm resizes the shorter side and centre-crops."""
    from timm.data import create_transform, resolve_model_data_config

    net = timm.create_model("test_resnet", pretrained=False)
    m = salfcbm.wrap(net, concepts=["a", "b"], num_classes=2, backbone_weights=None)
    cfg = resolve_model_data_config(net)
    assert m.config["input_crop_pct"] == cfg["crop_pct"] and m.config["input_interpolation"] == cfg["interpolation"]
    pil = Image.fromarray(_rgb(120, 200))
    ref = create_transform(**cfg)(pil)[None]
    ours = m.preprocess(pil)
    assert ours.shape == ref.shape == (1, 3, 160, 160)
    assert (ours - ref).abs().mean() < 0.02  # PIL vs torch antialiased bicubic: about a grey level
    squashed = m.image_transform.normalize(
        torch.nn.functional.interpolate(torch.from_numpy(_rgb(120, 200)).permute(2, 0, 1)[None].float() / 255,
                                        size=(160, 160), mode="bilinear", antialias=True)
    )
    assert (squashed - ref).abs().mean() > 5 * (ours - ref).abs().mean()


def test_torchvision_weights_transform_is_used():
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    m = salfcbm.wrap(net, concepts=["a", "b"], num_classes=2, backbone_weights=None)
    tf = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert m.config["input_crop_pct"] == pytest.approx(224 / 256) and m.config["input_interpolation"] == "bilinear"
    pil = Image.fromarray(_rgb(260, 300))
    assert (m.preprocess(pil) - tf(pil)[None]).abs().mean() < 0.02


def test_geometry_is_recorded_in_the_saved_config(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    import json

    from timm.data import resolve_model_data_config

    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    own = resolve_model_data_config(model.backbone)
    assert {k: cfg[k] for k in ("input_size", "input_crop_pct", "input_crop_mode", "input_interpolation")} == {
        "input_size": [SIZE, SIZE], "input_crop_pct": own["crop_pct"], "input_crop_mode": own["crop_mode"],
        "input_interpolation": own["interpolation"]}
    back = salfcbm.SALFCBM.from_pretrained(tmp_path / "m", backbone=model.backbone)
    assert back.image_transform == model.image_transform
    x = torch.rand(2, 3, 50, 70)
    torch.testing.assert_close(back.preprocess(x), model.preprocess(x))


def test_configs_written_before_the_geometry_still_load(model, tmp_path):
    import json

    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["version"] >= 3
    for k in ("input_crop_pct", "input_crop_mode", "input_interpolation"):
        del cfg[k]
    cfg["version"] = 2
    from salfcbm.core.config import ModelConfig

    old = ModelConfig.from_dict(cfg)
    assert (old.input_crop_pct, old.input_crop_mode, old.input_interpolation) == (1.0, "center", "bilinear")


def test_preprocess_without_crop_keeps_the_whole_frame(model):
    """For images whose annotations cover the whole frame (benchmarks): no crop, so masks stay aligned."""
    x = torch.rand(2, 3, SIZE, SIZE)
    assert model.image_transform.crop_pct < 1  # the eval crop would zoom in
    torch.testing.assert_close(model.preprocess(x, crop=False), model.image_transform.normalize(x))
    assert not torch.allclose(model.preprocess(x), model.image_transform.normalize(x))
    assert model.preprocess(torch.rand(1, 3, 20, 50), crop=False).shape == (1, 3, SIZE, SIZE)


def test_identity_view_leaves_images_untouched():
    t = ImageTransform(size=(16, 16), crop_pct=1.0)
    x = torch.rand(2, 3, 16, 16)
    assert t.view(x) is load_images(x)[0] or torch.equal(t.view(x), x)
    assert t.view(torch.rand(1, 3, 16, 40)).shape == (1, 3, 16, 16)
    assert ImageTransform(size=(16, 16), crop_mode="border").view(torch.rand(1, 3, 8, 32)).shape == (1, 3, 16, 16)
    assert ImageTransform(size=(16, 16), crop_mode="squash").view(torch.rand(1, 3, 8, 32)).shape == (1, 3, 16, 16)


# ----------------------------------------------------------------------------- bad input, one table
def _corrupt(tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return str(p)


BAD = [
    # (case, call, what the message must name)
    ("float 0..255", lambda m, t: m.preprocess(torch.rand(1, 3, 8, 8) * 255), r"\[0, 1\].*Divide by 255"),
    ("already normalised", lambda m, t: m.preprocess(torch.rand(1, 3, 8, 8) - 0.5), r"already normalised"),
    ("NHWC tensor", lambda m, t: m.preprocess(torch.rand(2, 8, 8, 3)), r"channels-last.*permute\(0, 3, 1, 2\)"),
    ("5 channels", lambda m, t: m.preprocess(torch.rand(1, 5, 8, 8)), r"1, 3 or 4 channels"),
    ("int64 dtype", lambda m, t: m.preprocess(torch.ones(1, 3, 8, 8, dtype=torch.long)), r"torch.int64.*uint8"),
    ("bool dtype", lambda m, t: m.preprocess(torch.ones(1, 3, 8, 8, dtype=torch.bool)), r"torch.bool.*uint8"),
    ("NaN pixel", lambda m, t: m.preprocess(torch.rand(1, 3, 8, 8).index_fill_(2, torch.tensor([1]), float("nan"))),
     r"NaN or infinite.*nan_to_num"),
    ("inf pixel", lambda m, t: m.preprocess(torch.full((1, 3, 8, 8), float("inf"))), r"NaN or infinite"),
    ("empty batch", lambda m, t: m.preprocess(torch.zeros(0, 3, 8, 8)), r"empty batch.*at least one"),
    ("empty list", lambda m, t: m.preprocess([]), r"empty list.*at least one"),
    ("not an image", lambda m, t: m.preprocess({"a": 1}), r"Cannot read images from a dict.*PIL image"),
    ("missing file", lambda m, t: m.preprocess(str(t / "nope.jpg")), r"does not exist.*check the path"),
    ("corrupt file", lambda m, t: m.preprocess(_corrupt(t)), r"broken.png.*Remove or replace.*skip_corrupt"),
    ("model(uint8)", lambda m, t: m(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8)), r"raw pixels.*model.preprocess"),
    ("model(NHWC)", lambda m, t: m(torch.zeros(1, SIZE, SIZE, 3)), r"channels-last.*permute"),
    ("model(PIL)", lambda m, t: m(Image.new("RGB", (8, 8))), r"model.preprocess"),
    ("explain(empty)", lambda m, t: m.explain(torch.zeros(0, 3, SIZE, SIZE)), r"empty batch.*at least one"),
    ("explain(NaN)", lambda m, t: m.explain(torch.full((1, 3, SIZE, SIZE), float("nan"))), r"NaN.*finite"),
    ("explain(inf uint8->)", lambda m, t: m.explain(torch.full((1, 3, SIZE, SIZE), float("-inf"))), r"NaN or infinite"),
    ("explain_region(NaN)", lambda m, t: m.explain_region(torch.full((3, SIZE, SIZE), float("nan")), box=(0, 0, 4, 4)),
     r"NaN.*finite"),
]


@pytest.mark.parametrize("case,call,match", BAD, ids=[c[0] for c in BAD])
def test_bad_images_raise_a_salfcbm_error_naming_problem_and_fix(model, tmp_path, case, call, match):
    expected = CorruptImageError if case == "corrupt file" else ImageInputError  # an OSError, the others ValueErrors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageConversionWarning)
        with pytest.raises(expected) as info:
            call(model, tmp_path)
    assert isinstance(info.value, SalfCBMError)
    assert re.search(match, str(info.value), flags=re.S), str(info.value)


def test_model_on_another_device_is_a_clear_error(model):
    """Choice (documented): model(x) refuses input on another device; preprocess/explain move it."""
    m = salfcbm.wrap(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), concepts=["a", "b"], num_classes=2,
                     layer="0", input_size=(8, 8), backbone_weights=None).to("meta")
    with pytest.raises(ImageInputError, match=r"on cpu but the model is on meta.*images.to\('meta'\)"):
        m(torch.zeros(1, 3, 8, 8))
    assert m.preprocess(torch.rand(1, 3, 8, 8)).device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_takes_fp32_input(dtype):
    net = timm.create_model("test_resnet", pretrained=False)
    m = salfcbm.wrap(net, concepts=["a", "b"], num_classes=2, backbone_weights=None, input_size=(SIZE, SIZE))
    m = m.eval().to(dtype)
    x = torch.rand(2, 3, 40, 40)
    assert m.preprocess(x).dtype == dtype
    try:
        out = m(m.preprocess(x).float())  # fp32 into an fp16/bf16 model: cast, not a dtype error
    except RuntimeError as e:  # pragma: no cover - CPU kernels missing for this dtype
        pytest.skip(f"{dtype} convolution is not available on this CPU build: {e}")
    assert out.logits.dtype == dtype and torch.isfinite(out.logits.float()).all()
    e = m.explain(x)
    assert torch.isfinite(e[0].top.scores.float()).all()


# ----------------------------------------------------------------------------- one geometry (issue 15.1)
class _MarkScorer:
    """A ConceptScorer that finds the white mark and one-hot encodes the prompt whose centre is nearest."""

    def fingerprint(self):
        return {"scorer": "mark"}

    def embed(self, images, indices, prompts):
        b, (hg, wg) = images.shape[0], prompts.grid
        c = prompts.centres(*images.shape[-2:]).view(-1, 2).float()
        out = torch.zeros(b, hg * wg, 1)
        for k, im in enumerate(images):
            yx = (im.min(0).values > 0.9).nonzero().float().mean(0)
            out[k, int(((c - yx) ** 2).sum(1).argmin()), 0] = 1.0
        return out.view(b, hg, wg, 1)

    def similarity(self, emb, concepts):
        return emb.expand(*emb.shape[:-1], len(concepts)).float()

    def text_embeddings(self, texts):
        raise NotImplementedError


class _MarkedImages(torch.utils.data.Dataset):
    """Non-square black images, each with a white box at a known place of the original."""

    def __init__(self, h, w, boxes, size=4):
        self.h, self.w, self.boxes, self.size = h, w, boxes, size

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, i):
        x = torch.zeros(3, self.h, self.w)
        y0, x0 = self.boxes[i]
        x[:, y0 : y0 + self.size, x0 : x0 + self.size] = 1.0
        return x, i % 2


@pytest.mark.filterwarnings("ignore::salfcbm.errors.DegenerateResultWarning")  # a 1-step fit: only its stores matter
@pytest.mark.parametrize("h,w", [(32, 56), (56, 32), (64, 96)])
def test_a_box_lands_in_the_same_cell_for_the_scorer_and_the_backbone(tmp_path, h, w):
    """Issue 15.1: CLIPScorer cropped while preprocess squashed; cell (i, j) must be one region of the original.

    fit() runs on non-square images; a box centred on prompt location (i, j) of the image's
    centre square (what the model's eval transform keeps) must be found in cell (i, j) by the
    scorer and by the backbone.
    """
    from salfcbm.supervision.store import PromptedEmbeddingStore, ShardedStore
    from salfcbm.training.pipeline import BottleneckConfig, HeadConfig, fit

    # the backbone is an 8x8 average pool of a 32 px input: feature cell (i, j) is exactly grid cell (i, j)
    m = salfcbm.wrap(nn.Sequential(nn.AvgPool2d(8)), concepts=["mark"], num_classes=2, layer="0", grid=4,
                     input_size=(32, 32), input_mean=(0, 0, 0), input_std=(1, 1, 1), backbone_weights=None)
    short = min(h, w)
    s = short // 32  # original pixels per view pixel
    off_y, off_x = (h - short) // 2, (w - short) // 2
    centres = PromptGrid(grid=4).centres(32, 32).view(-1, 2)  # 6, 12, 18, 24 in the 32 px view
    cells = [0, 5, 10, 15, 3, 12, 6, 9]
    # 3x3 view pixels around the centre: a prompt centre lies inside its cell, so most of the box does too
    boxes = [(off_y + s * (int(centres[c, 0]) - 1), off_x + s * (int(centres[c, 1]) - 1)) for c in cells]
    data = _MarkedImages(h, w, boxes, size=3 * s)
    scorer = _MarkScorer()
    fit(m, data, data, scorer=scorer, prompts=PromptGrid(grid=4), run_dir=tmp_path, baseline=False,
        bottleneck=BottleneckConfig(max_steps=1, batch_size=2, val_every=1, cutoff=-1.0),
        head=HeadConfig(sparse=False), progress=False)
    sims = PromptedEmbeddingStore.open(tmp_path / "similarities" / "train", scorer)
    feats = ShardedStore.open(tmp_path / "features" / "train")
    scorer_cell = sims.targets(torch.arange(len(data)), ["mark"])[:, 0].flatten(1).argmax(1)
    backbone_cell = feats.read(torch.arange(len(data))).float().amax(1).flatten(1).argmax(1)
    assert scorer_cell.tolist() == backbone_cell.tolist() == cells


def test_a_store_computed_on_other_pixels_is_refused_by_fit(tmp_path):
    from salfcbm.supervision.store import compute_similarity_store
    from salfcbm.training.pipeline import BottleneckConfig, fit

    m = salfcbm.wrap(nn.Sequential(nn.AvgPool2d(8)), concepts=["mark"], num_classes=2, layer="0", grid=4,
                     input_size=(32, 32), input_crop_pct=0.875, backbone_weights=None)
    data = _MarkedImages(32, 32, [(4, 4), (20, 20), (8, 24), (24, 8)])
    raw = compute_similarity_store(tmp_path / "s", data, _MarkScorer(), PromptGrid(grid=4), progress=False)
    with pytest.raises(AlignmentError, match="align_dataset"):
        fit(m, data, data, train_similarities=raw, val_similarities=raw, run_dir=tmp_path / "run",
            bottleneck=BottleneckConfig(max_steps=1, batch_size=2), progress=False)


def test_aligned_datasets_are_keyed_by_their_views():
    """A wrapped dataset without a fingerprint must not claim one (stores then hash the views' pixels)."""
    from salfcbm.core.images import AlignedDataset

    t = ImageTransform(size=(16, 16), crop_pct=0.5)
    plain = AlignedDataset(_MarkedImages(32, 32, [(0, 0)]), t)
    assert not hasattr(plain, "fingerprint") and plain[0][0].shape == (3, 16, 16)
    fp = type("WithFp", (_MarkedImages,), {"fingerprint": lambda self: {"seed": 1}})
    assert AlignedDataset(fp(32, 32, [(0, 0)]), t).fingerprint() == {"seed": 1, "view": t.to_config()}


def test_datasets_with_another_geometry_cannot_be_aligned():
    class Cropped(_MarkedImages):
        image_transform = ImageTransform(size=(16, 16), crop_pct=0.5)

    t = ImageTransform(size=(32, 32))
    with pytest.raises(AlignmentError, match="another geometry"):
        align_dataset(Cropped(32, 32, [(0, 0)]), t)


def test_image_folder_uses_the_models_geometry(tmp_path, model):
    from salfcbm.datasets.folder import ImageFolderDataset

    for c, k in (("cat", 0), ("dog", 1)):
        (tmp_path / c).mkdir()
        Image.fromarray(_rgb(30, 50, seed=k)).save(tmp_path / c / f"{k}.png")
    Image.fromarray(_rgb(30, 50)[..., 0]).save(tmp_path / "cat" / "gray.png")
    ds = ImageFolderDataset(tmp_path, transform=model.image_transform)
    torch.testing.assert_close(ds[0][0][None], model.image_transform.view(str(tmp_path / "cat" / "0.png")))
    with pytest.warns(ImageConversionWarning):
        assert ds[1][0].shape == (3, SIZE, SIZE)
    plain = ImageFolderDataset(tmp_path, size=24)
    assert plain[0][0].shape == (3, 24, 24)
    realigned = align_dataset(plain, model.image_transform)  # fit re-crops from the files
    torch.testing.assert_close(realigned[0][0], ds[0][0])
    assert plain.fingerprint() != realigned.fingerprint()


# ----------------------------------------------------------------------------- token grids (issue 15.7)
def test_tapping_a_vit_layer_before_the_prefix_tokens():
    """patch_embed runs before the CLS token is prepended: 100 tokens, not 100 - 1."""
    net = timm.create_model("test_vit3", pretrained=False)
    m = salfcbm.wrap(net, concepts=["a", "b"], num_classes=2, layer="patch_embed", backbone_weights=None)
    assert m.config["layout"] == "NLC" and m.config["num_prefix_tokens"] == 0
    assert m.forward_features(torch.randn(1, 3, 160, 160)).shape[-2:] == (10, 10)
    deep = salfcbm.wrap(net, concepts=["a", "b"], num_classes=2, layer="blocks.0", backbone_weights=None)
    assert deep.config["num_prefix_tokens"] == net.num_prefix_tokens == 1


# ----------------------------------------------------------------------------- the other entry points
def test_cli_explain_reads_image_files_through_the_entry_point(model, tmp_path, capsys):
    from salfcbm.cli import main

    model.save_pretrained(tmp_path / "m")
    paths = []
    for k, (h, w) in enumerate(((40, 60), (64, 32))):
        paths.append(str(tmp_path / f"{k}.png"))
        Image.fromarray(_rgb(h, w, seed=k)).save(paths[-1])
    Image.fromarray(np.dstack([_rgb(), np.full((40, 60), 255, np.uint8)]), mode="RGBA").save(tmp_path / "a.png")
    paths.append(str(tmp_path / "a.png"))
    with pytest.warns(ImageConversionWarning):
        assert main(["explain", "--model", str(tmp_path / "m"), *paths, "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file() and "0.png" in capsys.readouterr().out
    assert main(["explain", "--model", str(tmp_path / "m"), str(tmp_path / "missing.png")]) == 2


def test_video_frames_of_any_kind_share_the_geometry(model):
    from salfcbm.viz.video import track_concepts

    frames = [Image.fromarray(_rgb(40, 60, seed=k)) for k in range(3)]
    track = track_concepts(model, frames, ["a"], progress=False)
    ref = model.image_transform.view(frames)
    assert track.heatmaps.shape == (3, 1, SIZE, SIZE)
    torch.testing.assert_close(track.frames, ref, atol=1e-5, rtol=0)
    as_uint8 = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in frames])
    torch.testing.assert_close(track_concepts(model, as_uint8, ["a"], progress=False).logits, track.logits)


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 4, 3), (5, 0, 3)])
def test_images_without_pixels_are_refused(shape):
    import numpy as np

    from salfcbm.core.images import load_images
    from salfcbm.errors import ImageInputError

    with pytest.raises(ImageInputError, match="no pixels"):
        load_images(np.zeros(shape, np.uint8))
    with pytest.raises(ImageInputError, match="no pixels"):
        load_images(torch.zeros(shape[2], shape[0], shape[1], dtype=torch.uint8))
