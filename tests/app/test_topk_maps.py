"""The explorer builds only the maps it shows: the region and search panels build the top-k maps
(the 1x1 bottleneck restricted to k rows), and the search index runs the model once per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import salfcbm
from salfcbm.app.explorer import Explorer
from salfcbm.core.outputs import SALFCBMOutput
from salfcbm.demo import SmallConvNet, SyntheticScenes

TOP_K = 3


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes(n=10, image_size=32, seed=1, split="test", num_classes=3, compound_concepts=True)


def _model(scenes, pooling="mean"):
    torch.manual_seed(0)
    m = salfcbm.wrap(SmallConvNet(num_classes=3, width=4), concepts=scenes.concepts, num_classes=3,
                     class_names=scenes.classes, input_size=(32, 32), backbone_weights=None, pooling=pooling,
                     input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0))
    return m.eval()


@pytest.fixture(scope="module")
def model(scenes):
    return _model(scenes)


@pytest.fixture
def spy(monkeypatch):
    """Counts the builds of all M maps and the concepts of every partial build."""
    calls = {"all_maps": 0, "partial": []}
    full, partial = SALFCBMOutput.concept_maps.fget, SALFCBMOutput.concept_maps_at

    def all_maps(self):
        calls["all_maps"] += not self.maps_computed
        return full(self)

    def some_maps(self, concepts, rows=None):
        out = partial(self, concepts, rows)
        calls["partial"].append(int(out.shape[1]))
        return out

    monkeypatch.setattr(SALFCBMOutput, "concept_maps", property(all_maps))
    monkeypatch.setattr(SALFCBMOutput, "concept_maps_at", some_maps)
    return calls


def _all_maps_path(monkeypatch):
    """The previous computation: every map of the image built, then the shown ones read from them."""
    def via_all_maps(self, concepts, rows=None):
        concepts = torch.as_tensor(concepts, dtype=torch.long)
        rows = torch.arange(self.logits.shape[0]) if rows is None else torch.as_tensor(rows)
        return self.concept_maps[rows[:, None], concepts.expand(rows.shape[0], -1)]

    monkeypatch.setattr(SALFCBMOutput, "concept_maps_at", via_all_maps)


def _same_pictures(a, b):
    assert len(a) == len(b)
    for (pa, ca), (pb, cb) in zip(a, b):
        assert ca == cb
        assert np.abs(pa.astype(int) - pb.astype(int)).max() <= 1  # uint8 pictures of float maps equal to ~1e-7


@pytest.mark.parametrize("mode,clicks", [("box", [(2.0, 3.0), (20.0, 27.0)]), ("points", [(5.0, 5.0), (25.0, 9.0)])])
def test_region_panel_builds_k_maps_and_shows_what_all_maps_showed(model, scenes, spy, monkeypatch, mode, clicks):
    ex = Explorer(model, top_k=TOP_K)
    cur = ex.prepare(scenes[2][0])
    rows, gallery, bar, msg = ex.region_panel(cur, mode, clicks)
    assert "Region:" in msg, msg
    assert spy["all_maps"] == 0 and not cur.output.maps_computed
    assert spy["partial"] == [TOP_K] and TOP_K < model.num_concepts
    _all_maps_path(monkeypatch)
    ref = ex.prepare(scenes[2][0])
    ref_rows, ref_gallery, ref_bar, _ = ex.region_panel(ref, mode, clicks)
    assert ref.output.maps_computed  # the reference did build all M maps
    assert rows == ref_rows and bar == ref_bar
    _same_pictures(gallery, ref_gallery)


def test_search_index_runs_the_model_once_per_image_and_builds_no_map(model, scenes, spy):
    images = []
    hook = model.register_forward_pre_hook(lambda mod, args: images.append(int(args[0].shape[0])))
    try:
        ex = Explorer(model, scenes, batch_size=4)
    finally:
        hook.remove()
    assert sum(images) == len(scenes) and len(images) == 3  # 10 images in batches of 4: one forward each
    assert spy["all_maps"] == 0 and spy["partial"] == []
    with torch.no_grad():
        ref = torch.cat([model(model.preprocess(scenes[i][0][None])).concept_activations for i in range(len(scenes))])
    torch.testing.assert_close(ex.index_activations, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cached", [True, False])
def test_search_panel_builds_one_concepts_maps_and_shows_what_all_maps_showed(model, scenes, spy, monkeypatch,
                                                                              cached):
    if not cached:
        monkeypatch.setattr("salfcbm.app.explorer.MAX_CACHED_MAP_VALUES", 0)
    ex = Explorer(model, scenes, top_k=TOP_K)
    cur = ex.prepare(scenes[0][0])
    spy["partial"].clear()
    shown, gallery, bar, msg = ex.search_panel(cur, "a circle", k=4)
    assert "Top 4 of 10" in msg, msg
    assert spy["all_maps"] == 0 and not cur.output.maps_computed
    assert spy["partial"] == [1, 1]  # the current image's map, then the four top images' maps of that concept
    m = model.concept_index("a circle")
    top = ex.index_activations[:, m].topk(4).indices.tolist()
    with torch.no_grad():
        x = torch.cat([model.preprocess(scenes[i][0][None]) for i in top])
        torch.testing.assert_close(ex.index_maps(top, m), model(x).concept_maps[:, m], rtol=1e-5, atol=1e-6)
    _all_maps_path(monkeypatch)
    ref = ex.prepare(scenes[0][0])
    ref_shown, ref_gallery, ref_bar, _ = ex.search_panel(ref, "a circle", k=4)
    assert bar == ref_bar and np.abs(shown.astype(int) - ref_shown.astype(int)).max() <= 1
    _same_pictures(gallery, ref_gallery)


def test_a_model_that_pools_its_maps_keeps_them_for_search(scenes):
    model = _model(scenes, pooling="softmax")  # the forward pass needs every map to pool them
    calls = []
    hook = model.register_forward_pre_hook(lambda mod, args: calls.append(int(args[0].shape[0])))
    try:
        ex = Explorer(model, scenes, batch_size=5)
    finally:
        hook.remove()
    assert sum(calls) == len(scenes)
    m = model.concept_index("something blue")
    with torch.no_grad():
        x = torch.cat([model.preprocess(scenes[i][0][None]) for i in (3, 7)])
        torch.testing.assert_close(ex.index_maps([3, 7], m), model(x).concept_maps[:, m])
