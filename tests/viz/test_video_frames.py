"""Concept tracks as pictures: frame counts, tile layout, timing and colour scales of strips and GIFs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from salfcbm.errors import InputError
from salfcbm.viz import ConceptTrack, save_video_gif, save_video_strip

T, S = 5, 16


@pytest.fixture
def track():
    heat = torch.zeros(T, 2, S, S)
    for t in range(T):
        heat[t, 0] = t  # "ball" grows over time; "sky" stays flat
    return ConceptTrack(frames=torch.zeros(T, 3, S, S), heatmaps=heat, concepts=["ball", "sky"], concept_indices=[3, 7],
                        logits=torch.zeros(T, 2), predictions=["crate"] * T)


def test_a_gif_has_one_frame_per_video_frame_at_the_requested_rate(track, tmp_path):
    with Image.open(save_video_gif(track, tmp_path / "a.gif", fps=5)) as im:
        assert im.n_frames == T and im.info["duration"] == 200 and im.info.get("loop") == 0
        assert im.size == (2 * S + 2, S)  # one tile per concept, 2 px apart
    with Image.open(save_video_gif(track, tmp_path / "b.gif", every=2, concepts="sky", show_frames=True)) as im:
        assert im.n_frames == 3 and im.size == (2 * S + 2, S)  # frames 0, 2, 4; the plain frame, then sky


def test_a_strip_spreads_at_most_max_frames_evenly_over_the_video(track, tmp_path):
    with Image.open(save_video_strip(track, tmp_path / "s.png", max_frames=3)) as im:
        assert im.size == (3 * S + 4, 3 * S + 4)  # 3 frames; the plain row, then one row per concept
    with Image.open(save_video_strip(track, tmp_path / "t.png", max_frames=None, show_frames=False, concepts=[7])) as im:
        assert im.size == (T * S + 2 * (T - 1), S)


def test_the_video_scale_compares_strengths_over_time_and_the_frame_scale_does_not(track, tmp_path):
    def colours(normalize):
        path = save_video_strip(track, tmp_path / f"{normalize}.png", concepts="ball", max_frames=None,
                                show_frames=False, alpha=1.0, cmap="gray", normalize=normalize)
        with Image.open(path) as im:
            sheet = np.asarray(im.convert("L"))
        return [int(sheet[S - 1, t * (S + 2) + S - 1]) for t in range(T)]  # a corner under no label

    assert colours("video") == sorted(colours("video")) and colours("video")[0] < colours("video")[-1]
    assert len(set(colours("frame"))) == 1  # each frame alone is flat: one colour


def test_bad_requests_name_the_argument(track, tmp_path):
    with pytest.raises(InputError, match="Concept 'grass' was not tracked"):
        save_video_strip(track, tmp_path / "x.png", concepts="grass")
    with pytest.raises(InputError, match="`fps` must be a positive number"):
        save_video_gif(track, tmp_path / "x.gif", fps=0)
    with pytest.raises(InputError, match="`max_frames` must be a positive int or None"):
        save_video_strip(track, tmp_path / "x.png", max_frames=0)
    with pytest.raises(InputError, match="`normalize` must be 'video'"):
        save_video_gif(track, tmp_path / "x.gif", normalize="clip")
    assert not list(tmp_path.iterdir())
