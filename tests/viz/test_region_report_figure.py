"""Explain Anything pictures: each region tinted in its colour on the image, its top concepts listed beside."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from salfcbm.errors import InputError
from salfcbm.explain import RegionExplanation, RegionReport, box_mask
from salfcbm.viz import plot_region_report
from salfcbm.viz.colors import REGION_COLORS


@pytest.fixture
def report():
    masks = torch.stack([box_mask((0, 0, 4, 4), (8, 8)), box_mask((4, 4, 8, 8), (8, 8))]).float()
    regions = [
        RegionExplanation(0, 16.0, 0.25, torch.zeros(3), torch.tensor([2, 0]), ["sky", "fur"], torch.tensor([1.5, 0.25])),
        RegionExplanation(1, 16.0, 0.25, torch.zeros(3), torch.tensor([1]), ["grass"], torch.tensor([0.75])),
    ]
    logits = torch.tensor([0.2, 1.0])
    return RegionReport(regions, masks, logits, logits.softmax(-1), 1, "toy store")


def test_the_image_panel_tints_each_region_in_its_colour(report):
    fig = plot_region_report(report, torch.zeros(3, 8, 8), alpha=0.5)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "pred: toy store"
    img = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_allclose(img[1, 1], 0.5 * np.array(to_rgb(REGION_COLORS[0])), atol=1e-6)
    np.testing.assert_allclose(img[6, 6], 0.5 * np.array(to_rgb(REGION_COLORS[1])), atol=1e-6)
    np.testing.assert_array_equal(img[1, 6], [0, 0, 0])  # outside every region: the image itself


def test_the_text_panel_lists_each_region_and_its_top_concepts_in_order(report):
    fig = plot_region_report(report, torch.zeros(3, 8, 8))
    texts = [(t.get_text(), t.get_color()) for t in fig.axes[1].texts]
    assert [s for s, _ in texts] == ["region 0", "sky  (1.5)", "fur  (0.25)", "region 1", "grass  (0.75)"]
    assert texts[0][1] == REGION_COLORS[0] and texts[3][1] == REGION_COLORS[1]


def test_the_image_must_match_the_regions_and_the_report_must_be_one(report):
    with pytest.raises(InputError, match=r"The image is \(6, 6\) but the regions are \(8, 8\)"):
        plot_region_report(report, torch.zeros(3, 6, 6))
    with pytest.raises(InputError, match="Expected the result of model.explain_region"):
        plot_region_report(report.regions, torch.zeros(3, 8, 8))
