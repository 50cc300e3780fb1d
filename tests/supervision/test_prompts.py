"""Visual prompt grid (paper 3.2, Algorithm 1): geometry and batched drawing."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salfcbm.errors import InputError
from salfcbm.supervision.prompts import PromptGrid

grids = st.tuples(st.integers(1, 6), st.integers(1, 6))


@st.composite
def grid_and_size(draw):
    hg, wg = draw(grids)
    h = draw(st.integers(hg + 1, 64))
    w = draw(st.integers(wg + 1, 64))
    radius = draw(st.integers(1, 40))
    lw = draw(st.integers(1, 4))
    # reference_size = the shorter side: radius and line width are then exact pixels of this image
    return PromptGrid(grid=(hg, wg), radius=radius, line_width=lw, reference_size=min(h, w)), h, w


@settings(max_examples=60, deadline=None)
@given(grid_and_size())
def test_centres_inside_image_and_follow_paper_strides(args):
    pg, h, w = args
    c = pg.centres(h, w)
    assert c.shape == (*pg.grid, 2) and c.dtype == torch.long
    assert (c[..., 0] >= 0).all() and (c[..., 0] < h).all()
    assert (c[..., 1] >= 0).all() and (c[..., 1] < w).all()
    dh, dw = h // (pg.grid[0] + 1), w // (pg.grid[1] + 1)
    assert c[:, 0, 0].tolist() == [dh * (i + 1) for i in range(pg.grid[0])]
    assert c[0, :, 1].tolist() == [dw * (j + 1) for j in range(pg.grid[1])]


@settings(max_examples=60, deadline=None)
@given(grid_and_size())
def test_ring_pixels_lie_at_radius_from_their_centre(args):
    pg, h, w = args
    masks = pg.ring_masks(h, w)
    assert masks.shape == (pg.num_prompts, h, w) and masks.dtype == torch.bool
    centres = pg.centres(h, w).view(-1, 2).double()
    ys = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    d = torch.sqrt((ys - centres[:, 0, None, None]) ** 2 + (xs - centres[:, 1, None, None]) ** 2)  # (P, H, W)
    half = pg.line_width / 2
    ring_d = d[masks]
    assert ((ring_d >= pg.radius - half) & (ring_d < pg.radius + half)).all()
    if pg.line_width == 2:  # the paper's setting: r +- 1
        assert ((ring_d - pg.radius).abs() <= 1).all()


def test_ring_is_complete_when_circle_fits():
    pg = PromptGrid(grid=(1, 1), radius=10, line_width=2, reference_size=41)
    m = pg.ring_masks(41, 41)[0]
    cy, cx = pg.centres(41, 41)[0, 0].tolist()
    # every angle has a ring pixel, and the thickness along the axes is exactly 2
    for k in range(360):
        a = math.radians(k)
        y, x = round(cy + 10 * math.sin(a) - 0.25), round(cx + 10 * math.cos(a) - 0.25)
        assert m[y - 1 : y + 2, x - 1 : x + 2].any()
    assert m[cy, cx + 8 : cx + 13].tolist() == [False, True, True, False, False]
    assert not m[cy, cx]


@settings(max_examples=30, deadline=None)
@given(grid_and_size(), st.integers(1, 3))
def test_draw_shape_colour_and_untouched_pixels(args, batch):
    pg, h, w = args
    images = torch.rand(batch, 3, h, w)
    out = pg.draw(images)
    assert out.shape == (batch, pg.num_prompts, 3, h, w)
    ring = pg.ring_masks(h, w)[None, :, None].expand_as(out)  # (B, P, 3, H, W)
    color = (torch.tensor(pg.color, dtype=torch.float32) / 255).view(1, 1, 3, 1, 1).expand_as(out)
    assert torch.equal(out[~ring], images[:, None].expand_as(out)[~ring])
    assert torch.equal(out[ring], color[ring])


def test_circles_clipped_at_borders_without_error():
    pg = PromptGrid(grid=(3, 3), radius=50)  # circles far bigger than the image
    out = pg.draw(torch.zeros(2, 3, 12, 12))
    assert out.shape == (2, 9, 3, 12, 12)
    pg2 = PromptGrid(grid=(2, 2), radius=5, reference_size=8)
    masks = pg2.ring_masks(8, 8)  # centres at 2 and 4, rings cross the border
    assert masks.any(dim=(1, 2)).all()


def test_paper_default_grid_at_224():
    pg = PromptGrid()
    assert pg.grid == (7, 7) and pg.radius == 32 and pg.line_width == 2 and pg.color == (255, 0, 0)
    assert pg.centres(224, 224)[:, 0, 0].tolist() == [28, 56, 84, 112, 140, 168, 196]
    assert pg.reference_size == 224 and pg.radius_px(224, 224) == 32 and pg.line_width_px(224, 224) == 2


def test_radius_has_one_unit_for_every_image_size():
    """Issue 15.9: the radius is in pixels of a reference_size image and scales with the image."""
    pg = PromptGrid()
    assert [pg.radius_px(s, s) for s in (64, 112, 224, 336)] == [9, 16, 32, 48]
    assert pg.radius_px(64, 300) == 9  # the shorter side sets the scale
    assert pg.line_width_px(64, 64) == 1  # never thinner than a pixel
    # the drawn circle spans the same fraction of the image at any resolution
    for side in (64, 224):
        ring = pg.ring_masks(side, side)[24]  # the centre prompt
        cols = ring.any(0).nonzero()[:, 0]
        assert abs((cols.max() - cols.min()).item() / side - 64 / 224) < 0.03
    # old manifests without reference_size (CLIP at 224) still read as the same grid
    assert "reference_size" not in pg.to_dict()
    assert PromptGrid.from_dict({"grid": [7, 7], "radius": 32, "line_width": 2, "color": [255, 0, 0]}) == pg
    custom = PromptGrid(radius=9, reference_size=64)
    assert PromptGrid.from_dict(custom.to_dict()) == custom and custom.radius_px(224, 224) == 32


def test_draw_subset_and_dtype_device_kept():
    pg = PromptGrid(grid=(2, 3), radius=3)
    images = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    full = pg.draw(images)
    sub = pg.draw(images, prompts=torch.tensor([4, 1]))
    assert sub.dtype == torch.float64
    assert torch.equal(sub, full[:, [4, 1]])


def test_masks_are_cached():
    pg = PromptGrid(grid=(2, 2), radius=3, reference_size=16)
    assert pg.ring_masks(16, 16) is pg.ring_masks(16, 16)
    assert PromptGrid(grid=(2, 2), radius=3, reference_size=16).ring_masks(16, 16) is pg.ring_masks(16, 16)


def test_dict_roundtrip_and_validation():
    pg = PromptGrid(grid=(3, 5), radius=7, line_width=3, color=(0, 255, 0))
    assert PromptGrid.from_dict(pg.to_dict()) == pg
    assert PromptGrid(grid=4).grid == (4, 4)
    with pytest.raises(InputError, match="radius"):
        PromptGrid(radius=0)
    with pytest.raises(InputError, match="color"):
        PromptGrid(color=(256, 0, 0))
    with pytest.raises(InputError, match="grid"):
        PromptGrid(grid=(0, 3))
    with pytest.raises(InputError, match="Unknown PromptGrid keys"):
        PromptGrid.from_dict({"grid": [2, 2], "radus": 3})
    with pytest.raises(InputError, match="at least 8x8 pixels"):
        PromptGrid().centres(5, 100)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        PromptGrid().draw(torch.zeros(3, 32, 32))
    with pytest.raises(InputError, match="uint8"):
        PromptGrid(grid=2).draw(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
