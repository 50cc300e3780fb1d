"""One colour scale per figure: standardised maps on a signed scale centred on the training mean.

The value drawn for concept ``m`` is ``(c_up[m] - mean[m]) / std[m]``; the scale is
``+-max(|value|, MIN_STD_SCALE)`` over the whole figure, and a pixel's opacity grows with
``|value|`` so the training mean shows the bare image.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from salfcbm.viz import ColorScale, plot_explanation
from salfcbm.viz.scale import MIN_STD_SCALE

MEAN, STD = [1.0, 2.0], [0.5, 4.0]


def _ce(make, peaks, mean=MEAN, std=STD):
    return make.class_explanation(["fur", "grass"][: len(peaks)], [0.5, -0.5][: len(peaks)],
                                  maps=make.peaked_maps(mean[: len(peaks)], std[: len(peaks)], peaks),
                                  mean=mean[: len(peaks)], std=std[: len(peaks)])


def test_the_scale_is_symmetric_and_set_by_the_largest_standardised_value(make):
    scale = ColorScale([_ce(make, [3.0, -5.0])], None)
    assert scale.standardized and scale.cmap == "RdBu_r"
    assert (scale.vmin, scale.vmax) == pytest.approx((-5.0, 5.0))  # grass's -5 std, not its raw value
    torch.testing.assert_close(scale.maps[0][1, 1, 1], torch.tensor(-5.0))
    assert float(scale.maps[0][0].abs().sum()) == pytest.approx(3.0)  # 0 (the mean) everywhere but the peak


def test_faint_maps_keep_the_minimum_half_range(make):
    scale = ColorScale([_ce(make, [0.2, -0.1])], None)
    assert (scale.vmin, scale.vmax) == (-MIN_STD_SCALE, MIN_STD_SCALE)


def test_without_training_statistics_raw_maps_share_their_common_min_and_max(make):
    raw = make.class_explanation(["fur"], [0.5], maps=torch.tensor([[[0.0, 2.0], [1.0, 1.0]]]))
    other = make.class_explanation(["sky"], [0.2], maps=torch.tensor([[[-1.0, 0.0], [0.5, 0.5]]]))
    scale = ColorScale([raw, other], None)
    assert not scale.standardized and scale.cmap == "viridis"
    assert (scale.vmin, scale.vmax) == (-1.0, 2.0)
    assert scale.label.startswith("concept map (raw")


def test_pixels_are_coloured_by_their_signed_value_and_bare_at_the_mean(make):
    image = torch.full((3, make.size, make.size), 0.5)
    fig = plot_explanation(_ce(make, [4.0, -2.0]), image, alpha=0.6)
    top = np.asarray(matplotlib.colormaps["RdBu_r"](1.0)[:3])  # +4 std: the top of the +-4 scale
    fur = np.asarray(fig.axes[1].images[0].get_array())
    np.testing.assert_allclose(fur[0, 0], 0.4 * 0.5 + 0.6 * top, atol=1e-6)
    np.testing.assert_allclose(fur[3, 5], [0.5, 0.5, 0.5], atol=1e-6)  # at the training mean: the image
    grass = np.asarray(fig.axes[2].images[0].get_array())
    mid = np.asarray(matplotlib.colormaps["RdBu_r"](0.25)[:3])  # -2 of +-4 is a quarter up the scale
    a = 0.6 * 0.5**0.5  # opacity grows as sqrt(|value| / vmax)
    np.testing.assert_allclose(grass[1, 1], (1 - a) * 0.5 + a * mid, atol=2e-3)
    assert fig.axes[-1].get_ylim() == pytest.approx((-4.0, 4.0))


def test_the_colour_bar_shows_the_same_limits_and_colormap(make):
    fig = plot_explanation(_ce(make, [1.5, 2.5]), torch.rand(3, 8, 8), cmap="coolwarm")
    bar = fig.axes[-1]
    assert bar.get_ylim() == pytest.approx((-2.5, 2.5))
    meshes = [c for c in bar.collections if hasattr(c, "get_cmap") and c.get_array() is not None]
    assert [m.get_cmap().name for m in meshes] == ["coolwarm"]
    assert bar.get_ylabel() == "concept map in training stds from its training mean"


def test_the_signed_scale_of_maps_already_standardised(make):
    scale = ColorScale.signed([torch.tensor([[0.5, -2.5]]), torch.tensor([[1.0]])])
    assert (scale.vmin, scale.vmax) == (-2.5, 2.5) and scale.standardized
