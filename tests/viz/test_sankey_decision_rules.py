"""Sankey diagrams of decision rules: bands proportional to |weight|, ordered, stacked, coloured by sign."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from salfcbm.errors import InputError
from salfcbm.viz import sankey_layout, sankey_svg, save_sankey
from salfcbm.viz.colors import NEG_COLOR, POS_COLOR


@pytest.fixture
def rules(make):
    # |w| summed per concept: box 1.0, wood 0.8, nail 0.2, paint 0.1
    return [make.rule("crate", ["wood", "box", "nail"], [0.8, -0.4, 0.2]),
            make.rule("toy store", ["box", "paint"], [0.6, 0.1], target=1)]


def test_concepts_are_ordered_by_their_summed_weight_and_classes_keep_their_order(rules):
    lay = sankey_layout(rules)
    concepts = [n for n in lay["nodes"] if n["side"] == "concept"]
    classes = [n for n in lay["nodes"] if n["side"] == "class"]
    assert [n["name"] for n in concepts] == ["box", "wood", "nail", "paint"]
    assert [n["value"] for n in concepts] == pytest.approx([1.0, 0.8, 0.2, 0.1])
    assert [n["name"] for n in classes] == ["crate", "toy store"]
    assert [n["value"] for n in classes] == pytest.approx([1.4, 0.7])
    assert all(n["y"] < m["y"] for n, m in zip(concepts, concepts[1:]))  # top to bottom


def test_band_heights_are_proportional_to_the_absolute_weight(rules):
    lay = sankey_layout(rules)
    assert len(lay["links"]) == 5  # one band per non-zero weight
    ratios = {round(link["h"] / abs(link["weight"]), 6) for link in lay["links"]}
    assert len(ratios) == 1
    nodes = {(n["side"], n["name"]): n for n in lay["nodes"]}
    for n in nodes.values():
        end = "concept" if n["side"] == "concept" else "class"
        assert sum(lk["h"] for lk in lay["links"] if lk[end] == n["name"]) == pytest.approx(n["h"])


def test_bands_stack_inside_their_nodes_without_overlap(rules):
    lay = sankey_layout(rules)
    nodes = {(n["side"], n["name"]): n for n in lay["nodes"]}
    for side, key, y in (("concept", "concept", "y0"), ("class", "class", "y1")):
        for (s, name), n in nodes.items():
            if s != side:
                continue
            bands = sorted((lk[y], lk["h"]) for lk in lay["links"] if lk[key] == name)
            assert bands[0][0] == pytest.approx(n["y"])
            for (y0, h0), (y1, _) in zip(bands, bands[1:]):
                assert y1 == pytest.approx(y0 + h0)  # each band starts where the previous one ends
    assert all(0 <= n["y"] and n["y"] + n["h"] <= lay["height"] for n in lay["nodes"])


def test_max_concepts_keeps_the_largest_weights_per_class(rules):
    lay = sankey_layout(rules, max_concepts=1)
    assert sorted((lk["concept"], lk["class"]) for lk in lay["links"]) == [("box", "toy store"), ("wood", "crate")]
    with pytest.raises(InputError, match="`max_concepts` must be a positive int or None, got 0"):
        sankey_layout(rules, max_concepts=0)


def test_the_svg_colours_bands_by_sign_and_labels_every_node(rules):
    svg = sankey_svg(rules, title="crate <vs> toys")
    fills = re.findall(r'<path d="[^"]+" fill="([^"]+)"', svg)
    assert fills.count(POS_COLOR) == 4 and fills.count(NEG_COLOR) == 1  # only box -> crate is negative
    assert "<title>box \u2192 crate: -0.4000</title>" in svg
    assert svg.count("<rect") == 6 and "crate &lt;vs&gt; toys" in svg
    for name in ("box", "wood", "nail", "paint", "crate", "toy store"):
        assert re.search(rf">{name}</text>", svg)


def test_saving_picks_the_format_from_the_suffix(rules, tmp_path):
    page = save_sankey(tmp_path / "r.html", rules).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>SALF-CBM decision rules</title>" in page and "<svg" in page
    assert save_sankey(tmp_path / "r.svg", rules).read_text().startswith('<?xml version="1.0"')
    with Image.open(save_sankey(tmp_path / "r.png", rules, dpi=50)) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
    with pytest.raises(InputError, match=r"as '\.txt'; use \.html, \.svg, \.png or \.pdf"):
        save_sankey(tmp_path / "r.txt", rules)


def test_rules_without_weights_or_of_the_wrong_type_are_refused(make):
    with pytest.raises(InputError, match="no non-zero weights"):
        sankey_layout(make.rule("empty", [], []))
    with pytest.raises(InputError, match="Expected a DecisionRule or a non-empty list"):
        sankey_svg([])
