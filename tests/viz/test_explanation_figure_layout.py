"""`plot_explanation` and explanation grids: panels, titles, evidence frames, mask rows, one colour bar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from salfcbm.errors import InputError
from salfcbm.explain.evidence import ABSENT_SUPPORTS, EVIDENCE_LABELS, PRESENT_OPPOSES, PRESENT_SUPPORTS
from salfcbm.viz import plot_explanation, save_explanation_grid
from salfcbm.viz.colors import EVIDENCE_COLORS
from salfcbm.viz.grids import explanation_figure

CONCEPTS = ["fur", "grass", "a <sky>"]
MEAN, STD = [1.0, 2.0, 0.0], [0.5, 1.0, 2.0]


def _three(make, **kw):
    maps = make.peaked_maps(MEAN, STD, [3.0, -1.5, 0.5])
    return make.class_explanation(CONCEPTS, [0.8, -0.3, 0.1], maps=maps, mean=MEAN, std=STD,
                                  evidence=[PRESENT_SUPPORTS, PRESENT_OPPOSES, ABSENT_SUPPORTS], **kw)


def test_one_panel_per_concept_after_the_image_and_one_colour_bar(make):
    ce = _three(make)
    fig = plot_explanation(make.explanation([ce]), torch.rand(3, make.size, make.size))
    assert len(fig.axes) == 1 + 3 + 1  # the image, three concepts, the colour bar
    assert fig.axes[0].get_title() == "crate  logit=1.50  p=0.70"
    assert [len(ax.images) for ax in fig.axes[:4]] == [1, 1, 1, 1]
    assert fig.axes[-1].get_ylabel() == "concept map in training stds from its training mean"


def test_titles_name_the_concept_its_signed_contribution_and_evidence(make):
    fig = plot_explanation(_three(make), torch.rand(3, make.size, make.size))
    titles = [ax.get_title() for ax in fig.axes[1:4]]
    assert titles[0] == f"fur\nS=+0.800 ({EVIDENCE_LABELS[PRESENT_SUPPORTS]})"
    assert titles[1] == f"grass\nS=-0.300 ({EVIDENCE_LABELS[PRESENT_OPPOSES]})"
    assert titles[2].startswith("ABSENT: a <sky>\nS=+0.100 (")  # the absence is the evidence
    assert EVIDENCE_LABELS[ABSENT_SUPPORTS].split("; ", 1)[1] in titles[2]


def test_panels_are_framed_in_their_evidence_colour_dashed_when_absent(make):
    fig = plot_explanation(_three(make), torch.rand(3, make.size, make.size))
    for ax, kind in zip(fig.axes[1:4], [PRESENT_SUPPORTS, PRESENT_OPPOSES, ABSENT_SUPPORTS]):
        spine = ax.spines["left"]
        assert spine.get_visible()
        assert spine.get_edgecolor() == pytest.approx(to_rgba(EVIDENCE_COLORS[kind]))
        assert (spine.get_linestyle() == "-") == (kind != ABSENT_SUPPORTS)
        assert ax.title.get_color() == EVIDENCE_COLORS[kind]


def test_a_class_that_is_not_the_prediction_says_so(make):
    ce = _three(make, target=2, class_name="ball")
    fig = plot_explanation(make.explanation([ce], prediction=0, predicted_class="crate"), torch.rand(3, 8, 8))
    assert fig.axes[0].get_title().startswith("ball (pred: crate)\n")


def test_without_heatmaps_the_panels_are_text_and_there_is_no_colour_bar(make):
    ce = make.class_explanation(["fur", "grass"], [0.5, -0.2])
    fig = plot_explanation(ce, torch.rand(3, 8, 8))
    assert len(fig.axes) == 3  # no colour bar: nothing is drawn on a scale
    assert [t.get_text() for t in fig.axes[1].texts] == ["fur\nS=+0.500"]
    assert not fig.axes[1].images


def test_a_class_no_concept_contributes_to_is_reported_as_a_degenerate_head(make):
    ce = make.class_explanation([], [])
    fig = plot_explanation(ce, torch.rand(3, 8, 8))
    assert len(fig.axes) == 2
    assert "no concept contributes" in fig.axes[1].texts[0].get_text()


def test_ground_truth_masks_add_a_row_under_their_heatmaps(make):
    masks = torch.zeros(3, 8, 8)
    masks[0, :4] = 1
    masks[1, 4:] = 1  # the third concept's mask is empty
    fig = plot_explanation(_three(make), torch.rand(3, 8, 8), masks=masks)
    assert len(fig.axes) == 2 * 4 + 1
    assert [ax.get_title() for ax in fig.axes[5:8]] == ["mask: fur", "mask: grass", "mask: a <sky> (EMPTY)"]
    np.testing.assert_array_equal(fig.axes[5].images[0].get_array(), masks[0].numpy())
    with pytest.raises(InputError, match=r"`masks` must be \(k, H, W\) with k=3"):
        plot_explanation(_three(make), torch.rand(3, 8, 8), masks=masks[:2])


def test_target_picks_one_of_the_explained_classes(make):
    ex = make.explanation([_three(make), _three(make, target=1, class_name="toy")])
    assert plot_explanation(ex, torch.rand(3, 8, 8), target=1).axes[0].get_title().startswith("toy")
    with pytest.raises(InputError, match="picks one of the 2 explained classes, got 2"):
        plot_explanation(ex, torch.rand(3, 8, 8), target=2)
    with pytest.raises(InputError, match="Expected an Explanation"):
        plot_explanation("crate", torch.rand(3, 8, 8))


def test_a_grid_has_one_row_per_image_and_one_colour_bar_for_all(make):
    rows = [(_three(make), None), (make.class_explanation(["fur"], [0.4], maps=make.peaked_maps([1.0], [0.5], [6.0]),
                                                          mean=[1.0], std=[0.5]), None)]
    fig = explanation_figure(rows, [torch.rand(3, 8, 8)] * 2, None, 0.6, None, 1.0)
    assert len(fig.axes) == 2 * 4 + 1
    assert fig.axes[-1].get_ylim() == pytest.approx((-6.0, 6.0))  # the larger peak sets the shared scale
    assert [ax.get_title() for ax in fig.axes[4:6]][1].startswith("fur\nS=+0.400")


def test_saving_a_grid_checks_one_image_per_explanation(make, tmp_path):
    b = make.batch([make.explanation([_three(make)], index=i) for i in range(2)])
    path = save_explanation_grid(tmp_path / "grid.svg", torch.rand(2, 3, 8, 8), b)
    text = path.read_text()
    assert text.lstrip().startswith("<?xml")
    assert text.count("<image") == 2 * 4 + 1  # per row the image and three overlays; the colour bar's gradient
    with pytest.raises(InputError, match="1 images for 2 explanations"):
        save_explanation_grid(tmp_path / "bad.png", torch.rand(1, 3, 8, 8), b)
    with pytest.raises(InputError, match="Expected the result of model.explain"):
        save_explanation_grid(tmp_path / "bad.png", torch.rand(1, 3, 8, 8), ["x"])
