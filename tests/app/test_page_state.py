"""Each region picker writes its state (click count, update number) with every event that changes it,
so a test or a script can wait for the page to have applied an event (issue 20.9)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

import salfcbm
from salfcbm.app.explorer import Explorer
from salfcbm.demo import SmallConvNet, SyntheticScenes


def _state(html: str) -> tuple[int, int]:
    m = re.fullmatch(r'<span data-clicks="(\d+)" data-update="(\d+)"></span>', html)
    assert m, html
    return int(m.group(1)), int(m.group(2))


def test_every_click_writes_the_pickers_state_with_the_note():
    gr = pytest.importorskip("gradio")
    from salfcbm.app.ui import _on_click

    scenes = SyntheticScenes(n=2, image_size=32, num_classes=2)
    torch.manual_seed(0)
    model = salfcbm.wrap(SmallConvNet(num_classes=2, width=4), concepts=scenes.concepts, num_classes=2,
                         input_size=(32, 32), backbone_weights=None).eval()
    ex = Explorer(model)
    cur = ex.prepare(scenes[0][0])
    for then, n_out in ((ex.region_panel, 8), (None, 4)):  # Explain anything (with its panel), Intervene
        handler = _on_click(gr, ex, then)
        seen, clicks = [], []
        for xy, n in (((20, 20), 1), ((250, 280), 2), ((40, 60), 1)):  # a third click starts a new box
            out = handler(cur, clicks, "box", None, SimpleNamespace(index=xy))
            assert len(out) == n_out
            clicks, note, status = out[0], out[2], out[3]
            count, update = _state(status)
            assert count == n == len(clicks)
            assert ("Box corner" in note) == (n == 1) and ("Region: box=" in note) == (n == 2)
            seen.append(update)
        assert seen == sorted(set(seen))  # a newer number with every update
