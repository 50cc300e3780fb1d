"""Pictures, reports, Sankey diagrams, videos and the Captum visualiser on SALF-CBM output."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import salfcbm  # noqa: E402
from salfcbm.explain.attribution import SALFCBMAttribution  # noqa: E402
from salfcbm.errors import InputError, MissingExtraError  # noqa: E402
from salfcbm.viz.video import read_video_frames, save_video_gif, save_video_strip, track_concepts  # noqa: E402
from salfcbm.viz import (  # noqa: E402
    denormalize,
    overlay_heatmap,
    plot_explanation,
    plot_region_report,
    sankey_layout,
    save_explanation_grid,
    save_sankey,
    to_display,
    write_html_report,
)

SIZE = 64
CONCEPTS = ["a ball", "grass", "sky", "a <tag> & more"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = salfcbm.wrap(
        timm.create_model("resnet10t", pretrained=False),
        concepts=CONCEPTS,
        num_classes=3,
        class_names=["crate", "toy store", "ball"],
        grid=4,
        backbone_weights=None,
        input_size=(SIZE, SIZE),
    )
    with torch.no_grad():
        m.head.weight.copy_(torch.tensor([[1.0, 0.0, -0.5, 0.2], [0.0, 2.0, 0.3, 0.0], [0.0, 0.0, 0.0, 0.7]]))
    return m.eval()


@pytest.fixture
def images(model):
    return model.preprocess(torch.rand(2, 3, SIZE, SIZE))


def test_denormalize_inverts_preprocess(model):
    raw = torch.rand(2, 3, SIZE, SIZE)
    # preprocess = the model's view (its eval crop) then normalisation; denormalize undoes the latter
    view = model.image_transform.view(raw)
    torch.testing.assert_close(denormalize(model.preprocess(raw), model), view, atol=1e-5, rtol=1e-5)
    img = to_display(model.preprocess(raw)[0], model)
    assert img.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(img, view[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert to_display(Image.new("RGB", (5, 4), "red"))[0, 0].tolist() == [1.0, 0.0, 0.0]
    blend = overlay_heatmap(raw[0], torch.rand(4, 4), alpha=0.3)
    assert blend.shape == (SIZE, SIZE, 3) and blend.min() >= 0 and blend.max() <= 1
    with pytest.raises(InputError, match="needs `model=`"):
        denormalize(raw)


def test_plot_explanation_and_grid(model, images, tmp_path):
    expl = model.explain(images, target="crate", top_k=3)  # "crate" has 3 non-zero weights
    fig = plot_explanation(expl[0], images[0], model=model)
    assert len(fig.axes) == 5  # the image, three concepts, one colour bar for all of them
    titles = [ax.get_title() for ax in fig.axes[1:4]]
    assert all(t.split("\n")[0].removeprefix("ABSENT: ") in CONCEPTS for t in titles)
    p = save_explanation_grid(tmp_path / "grid.png", images, expl, model=model)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
    with pytest.raises(InputError, match="1 images for 2 explanations"):
        save_explanation_grid(tmp_path / "bad.png", images[:1], expl)


def test_html_report_is_self_contained(model, images, tmp_path):
    expl = model.explain(images, target=[[0, 1], [2]], top_k=2)
    p = write_html_report(tmp_path / "report.html", images, expl, model=model, names=["first.jpg", "second.jpg"])
    text = p.read_text()
    assert text.count('src="data:image/png;base64,') == 3
    assert "first.jpg" in text and "toy store" in text
    assert "a &lt;tag&gt; &amp; more" in text or "a <tag>" not in text
    assert "<script" not in text and "http" not in text
    assert not list(tmp_path.glob(".*.tmp"))
    q = write_html_report(tmp_path / "linked.html", images, expl, model=model, embed=False)
    files = sorted((tmp_path / "linked_files").glob("*.png"))
    assert len(files) == 3 and files[0].name in q.read_text()


def test_region_figure(model, images):
    rep = model.explain_region(images[0], box=[(0, 0, 32, 32), (32, 32, 64, 64)], top_k=2)
    fig = plot_region_report(rep, images[0], model=model)
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "region 0" in texts and "region 1" in texts


def test_sankey_html_svg_and_png(model, tmp_path):
    rules = model.decision_rules(["crate", "toy store"])
    lay = sankey_layout(rules)
    assert {n["name"] for n in lay["nodes"] if n["side"] == "concept"} == {"a ball", "grass", "sky", "a <tag> & more"}
    assert len(lay["links"]) == 5  # exactly the non-zero weights of the two classes
    for link in lay["links"]:
        assert link["h"] > 0
    html_path = save_sankey(tmp_path / "rules.html", rules, title="crate vs toy store")
    text = html_path.read_text()
    assert "<svg" in text and text.count("<path") == 5 and "<script" not in text
    assert "a &lt;tag&gt; &amp; more" in text and "crate vs toy store" in text
    svg = save_sankey(tmp_path / "rules.svg", rules).read_text()
    assert svg.startswith("<?xml")
    png = save_sankey(tmp_path / "rules.png", rules, max_concepts=2)
    with Image.open(png) as im:
        assert im.format == "PNG"
    with pytest.raises(InputError, match="use .html, .svg, .png"):
        save_sankey(tmp_path / "rules.txt", rules)
    with pytest.raises(InputError, match="DecisionRule"):
        save_sankey(tmp_path / "rules.html", ["crate"])


def test_video_strip_and_gif(model, tmp_path):
    T = 5
    frames = model.preprocess(torch.rand(T, 3, SIZE, SIZE))
    calls = []
    h = model.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        track = track_concepts(model, frames, ["a ball", "sky"], batch_size=2, progress=False)
    finally:
        h.remove()
    assert len(calls) == 3  # batched over frames
    assert track.heatmaps.shape == (T, 2, SIZE, SIZE) and track.frames.shape == (T, 3, SIZE, SIZE)
    one = track_concepts(model, frames, ["a ball", "sky"], batch_size=T, progress=False)
    torch.testing.assert_close(one.heatmaps, track.heatmaps, rtol=1e-4, atol=1e-4)
    gif = track.save_gif(tmp_path / "track.gif", fps=5)
    with Image.open(gif) as im:
        assert im.n_frames == T
        assert im.size == (2 * SIZE + 2, SIZE)
    strip = save_video_strip(track, tmp_path / "strip.png", concepts="sky", max_frames=3)
    with Image.open(strip) as im:
        assert im.size == (3 * SIZE + 4, 2 * SIZE + 2)  # 3 frames; plain row + one concept row
    with pytest.raises(InputError, match="was not tracked"):
        save_video_gif(track, tmp_path / "x.gif", concepts="grass")


def test_video_from_pil_frames_and_files(model, tmp_path):
    pil = [Image.fromarray(np.random.randint(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(3)]
    track = track_concepts(model, pil, "grass", progress=False)
    assert track.frames.shape == (3, 3, SIZE, SIZE)  # resized to the model's input size
    path = tmp_path / "clip.gif"
    pil[0].save(path, save_all=True, append_images=pil[1:])
    assert read_video_frames(path).shape == (3, 3, 48, 40)
    from_file = track_concepts(model, path, "grass", progress=False)
    assert from_file.heatmaps.shape == (3, 1, SIZE, SIZE)
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    try:
        from torchvision.io import read_video  # noqa: F401

        has_reader = True
    except ImportError:
        try:
            import torchcodec  # noqa: F401

            has_reader = True
        except ImportError:
            has_reader = False
    if not has_reader:
        with pytest.raises(MissingExtraError, match="torchcodec"):
            read_video_frames(tmp_path / "clip.mp4")


def test_captum_visualize_image_attr_accepts_the_adapter_output(model, images):
    pytest.importorskip("captum")
    import matplotlib

    matplotlib.use("Agg")
    from captum.attr import visualization as viz

    attr = SALFCBMAttribution(model).attribute(images, target=1)
    assert attr.shape == (2, 1, SIZE, SIZE)
    a = attr[0].permute(1, 2, 0).numpy()
    img = to_display(images[0], model)
    fig, ax = viz.visualize_image_attr(a, img, method="blended_heat_map", sign="all", use_pyplot=False)
    assert fig is not None and ax is not None
    fig, _ = viz.visualize_image_attr(a, img, method="heat_map", sign="absolute_value", use_pyplot=False)
    assert fig is not None
