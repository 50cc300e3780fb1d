"""Images and maps for display: every accepted image kind becomes (H, W, 3) floats in [0, 1]."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from salfcbm.errors import InputError
from salfcbm.viz import denormalize, heatmap_to_rgb, overlay_heatmap, plot_overlay, to_display


def test_uint8_channels_last_arrays_are_scaled_to_unit_range():
    arr = np.zeros((4, 5, 3), dtype=np.uint8)
    arr[0, 0] = (255, 51, 0)
    out = to_display(arr)
    assert out.shape == (4, 5, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [1.0, 0.2, 0.0])


def test_grey_images_and_batches_of_one_get_three_channels():
    grey = torch.linspace(0, 1, 12).view(3, 4)
    out = to_display(grey)
    assert out.shape == (3, 4, 3) and np.all(out[..., 0] == out[..., 2])
    assert to_display(torch.rand(1, 3, 6, 7)).shape == (6, 7, 3)


def test_floats_outside_unit_range_are_min_max_rescaled_without_a_model():
    x = torch.tensor([-2.0, 0.0, 2.0]).view(1, 1, 3).expand(3, 1, 3)
    np.testing.assert_allclose(to_display(x)[0, :, 0], [0.0, 0.5, 1.0])


def test_denormalize_uses_the_given_statistics_and_clamps():
    x = torch.tensor([-10.0, 0.0, 1.0]).view(1, 1, 3).expand(3, 1, 3)
    out = denormalize(x, mean=[0.5] * 3, std=[0.25] * 3)
    np.testing.assert_allclose(out[0, 0].tolist(), [0.0, 0.5, 0.75])
    with pytest.raises(InputError, match=r"Expected \(B, 3, H, W\) or \(3, H, W\) images, got shape \(2, 4, 4\)"):
        denormalize(torch.zeros(2, 4, 4), mean=[0.5] * 3, std=[0.25] * 3)


def test_what_cannot_be_displayed_is_refused_with_its_type_or_shape():
    with pytest.raises(InputError, match="type list"):
        to_display([[0.0]])
    with pytest.raises(InputError, match="3 colour channels"):
        to_display(torch.rand(5, 4, 4))


def test_heatmaps_are_coloured_on_the_given_limits():
    h = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    rgb = heatmap_to_rgb(h, cmap="viridis", vmin=0.0, vmax=2.0)
    cmap = matplotlib.colormaps["viridis"]
    np.testing.assert_allclose(rgb[0, 1], cmap(0.5)[:3], atol=1e-6)
    np.testing.assert_allclose(rgb[1, 1], cmap(1.0)[:3], atol=1e-6)  # above vmax: clipped
    with pytest.raises(InputError, match="A heatmap is 2-D"):
        heatmap_to_rgb(torch.rand(2, 3, 3))


def test_an_overlay_blends_a_resized_heatmap_over_the_image():
    img = torch.zeros(3, 8, 8)
    out = overlay_heatmap(img, torch.ones(2, 2), alpha=0.25, cmap="gray", vmin=0.0, vmax=1.0)
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)  # white at a quarter opacity over black
    with pytest.raises(InputError, match=r"`alpha` must be in \[0, 1\], got 1.5"):
        overlay_heatmap(img, torch.ones(2, 2), alpha=1.5)
    ax = plot_overlay(img, torch.ones(2, 2), concept="fur", score=-0.25)
    assert ax.get_title() == "fur\nS=-0.250" and not ax.axison
