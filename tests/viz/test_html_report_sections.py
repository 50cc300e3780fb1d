"""`write_html_report`: one section per image, one heading, picture and evidence table per explained class."""

from __future__ import annotations

import base64
import re

import pytest
import torch

from salfcbm.errors import InputError
from salfcbm.explain.evidence import ABSENT_SUPPORTS, EVIDENCE_LABELS, PRESENT_SUPPORTS
from salfcbm.viz import write_html_report
from salfcbm.viz.colors import EVIDENCE_COLORS


@pytest.fixture
def two_images(make):
    mean, std = [0.0, 0.0], [1.0, 1.0]
    first = make.class_explanation(["fur", "a <tag> & more"], [0.75, -0.25], maps=make.peaked_maps(mean, std, [2.0, 1.0]),
                                   mean=mean, std=std, evidence=[PRESENT_SUPPORTS, ABSENT_SUPPORTS], bias=0.125)
    second = make.class_explanation(["grass"], [0.5], target=1, class_name="toy store",
                                    maps=make.peaked_maps([0.0], [1.0], [1.0]), mean=[0.0], std=[1.0])
    empty = make.class_explanation([], [], target=2, class_name="ball")
    return make.batch([make.explanation([first, second], index=0), make.explanation([empty], index=1, prediction=2,
                                                                                     predicted_class="ball")])


def test_one_section_per_image_with_its_caption_and_prediction(two_images, tmp_path):
    text = write_html_report(tmp_path / "r.html", torch.rand(2, 3, 8, 8), two_images, names=["a.jpg", "b<1>.jpg"],
                             title="My <report>").read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</body></html>")
    assert "<title>My &lt;report&gt;</title>" in text and "<h1>My &lt;report&gt;</h1>" in text
    assert re.findall(r"<section><h2>(.*?)</h2>", text) == ["a.jpg", "b&lt;1&gt;.jpg"]
    assert text.count("</section>") == 2
    p0 = float(two_images[0].probabilities[0])
    assert f"<p>Prediction: <b>crate</b> (p = {p0:.3f})</p>" in text and "Prediction: <b>ball</b>" in text


def test_each_class_has_a_heading_a_png_and_an_evidence_table(two_images, tmp_path):
    text = write_html_report(tmp_path / "r.html", torch.rand(2, 3, 8, 8), two_images).read_text()
    heads = re.findall(r"<h3>Class (.*?): logit (\S+) = sum of contributions \+ bias (\S+)</h3>", text)
    assert heads == [("crate", "1.500", "0.125"), ("toy store", "1.500", "0.100"), ("ball", "1.500", "0.100")]
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="top concepts for ([^"]+)">', text)
    assert [alt for _, alt in images] == ["crate", "toy store", "ball"]
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data, _ in images)
    tables = re.findall(r"<table>(.*?)</table>", text)
    assert [t.count("<tr>") - 1 for t in tables] == [2, 1]  # a row per shown concept (header excluded)
    assert "a &lt;tag&gt; &amp; more" in tables[0] and "a <tag>" not in text
    assert '<td class="pos">+0.7500</td>' in tables[0] and '<td class="neg">-0.2500</td>' in tables[0]
    assert f'<td class="ev-{ABSENT_SUPPORTS}">{EVIDENCE_LABELS[ABSENT_SUPPORTS]}</td>' in tables[0]


def test_a_degenerate_class_is_a_warning_not_an_empty_table(two_images, tmp_path):
    text = write_html_report(tmp_path / "r.html", torch.rand(2, 3, 8, 8), two_images).read_text()
    section = text.split("<section>")[2]
    assert '<p class="warn">No concept contributes to this class' in section and "<table>" not in section


def test_the_legend_and_evidence_colours_are_in_the_page(two_images, tmp_path):
    text = write_html_report(tmp_path / "r.html", torch.rand(2, 3, 8, 8), two_images).read_text()
    assert "<b>Present</b> means the model detects the concept" in text
    for kind, colour in EVIDENCE_COLORS.items():
        assert f".ev-{kind}{{color:{colour}}}" in text
    assert "<script" not in text and "http" not in text  # self-contained, no CDN


def test_linked_pictures_are_written_next_to_the_page(two_images, tmp_path):
    page = write_html_report(tmp_path / "r.html", torch.rand(2, 3, 8, 8), two_images, embed=False)
    files = sorted(p.name for p in (tmp_path / "r_files").iterdir())
    assert files == ["img0000_class0.png", "img0000_class1.png", "img0001_class2.png"]
    assert re.findall(r'<img src="([^"]+)"', page.read_text()) == [f"r_files/{f}" for f in files]
    assert "base64" not in page.read_text()


def test_counts_of_images_and_names_must_match_the_explanations(two_images, tmp_path):
    with pytest.raises(InputError, match="1 images for 2 explanations"):
        write_html_report(tmp_path / "r.html", torch.rand(1, 3, 8, 8), two_images)
    with pytest.raises(InputError, match="1 names for 2 images"):
        write_html_report(tmp_path / "r.html", torch.rand(2, 3, 8, 8), two_images, names=["a"])
    assert not (tmp_path / "r.html").exists()
