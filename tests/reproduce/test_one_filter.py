"""The reproduce path and `fit` run one concept-filter implementation, LF-CBM's (issue 18, item 3).

LF-CBM's ``train_cbm.py`` drops a concept whose mean top-5 CLIP similarity to the *unprompted*
training images (CLIP's own preprocessing) is at or below ``clip_cutoff``. Before, the
reproduce path ran its own cutoff on the best *prompted* cell and passed
``filter_concepts=False`` to `fit`; now it hands the recipe's filters to `fit`.
"""

from dataclasses import replace

import pytest
import torch

import salfcbm.training.filters as pipeline  # fit's concept-filter stage
from salfcbm.core.model import wrap
from salfcbm.datasets.paper import write_fake_layout
from salfcbm.reproduce import get_recipe
from salfcbm.reproduce.run import (build_backbone, concept_filter_options, dry_run_scorer, load_datasets,
                                   run_recipe)
from salfcbm.supervision.concepts import filter_concepts
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import SimilarityStore
from salfcbm.training import fit

CONCEPTS = ["red fur", "a wheel", "green grass"]


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = write_fake_layout("imagenet", tmp_path_factory.mktemp("data") / "imagenet", num_classes=2,
                             labelled_classes=2, per_split={"train": 6, "val": 2}, image_size=(256, 320))
    recipe = replace(get_recipe("table1-imagenet"), num_classes=2, expected_concepts=len(CONCEPTS), val_fraction=0.34,
                     backbone={"source": "torchvision", "name": "resnet18", "weights": None})  # small: same path
    return recipe, root, dry_run_scorer(recipe, "tiny", device="cpu")


def _spy(monkeypatch) -> list:
    """Record every call of the filter (then stop the run) and the view of the unprompted images."""
    calls: list = []
    real_activity = pipeline.unprompted_activity

    def activity(scorer, dataset, concepts, **kw):
        calls.append(("view", dataset.image_transform))
        return real_activity(scorer, dataset, concepts, **kw)

    def spy(concepts, **kw):
        assert pipeline._filter is spy
        calls.append(("filter", list(concepts), kw))
        raise _Stop

    def prompted(self, *a, **k):  # the reproduce path's own cutoff read the best prompted cell
        raise AssertionError("the activation test read the prompted similarities, not the unprompted images")

    monkeypatch.setattr(pipeline, "unprompted_activity", activity)
    monkeypatch.setattr(pipeline, "_filter", spy)
    monkeypatch.setattr(SimilarityStore, "concept_activity", prompted)
    return calls


def test_reproduce_and_fit_call_the_same_filter_with_the_same_inputs(world, tmp_path, monkeypatch):
    recipe, root, scorer = world
    assert pipeline._filter is filter_concepts  # fit's filter stage calls the library's filter_concepts
    calls = _spy(monkeypatch)
    with pytest.raises(_Stop):
        run_recipe(recipe, root, tmp_path / "reproduce", scorer=scorer, concepts=CONCEPTS, pretrained=False,
                   device="cpu", progress=False)
    # fit itself, with the same options, on the same data
    train, val, _, names = load_datasets(recipe, root)
    model = wrap(build_backbone(recipe, pretrained=False), concepts=CONCEPTS, num_classes=2, class_names=names,
                 layer=recipe.layer, grid=recipe.grid, input_size=(224, 224), backbone_weights=None)
    with pytest.raises(_Stop):
        fit(model, train, val, scorer=scorer, prompts=PromptGrid(grid=7, radius=32, line_width=2),
            run_dir=tmp_path / "fit", filter_concepts=concept_filter_options(recipe), progress=False, device="cpu")
    views = [c[1] for c in calls if c[0] == "view"]
    (_, c1, kw1), (_, c2, kw2) = [c for c in calls if c[0] == "filter"]
    assert c1 == c2 == CONCEPTS
    assert kw1["activation_cutoff"] == kw2["activation_cutoff"] == recipe.activation_cutoff == 0.28
    assert kw1["top_k"] == 5 and kw1["text_filters"] is False  # LF-CBM's lists are filtered; train_cbm.py's cutoff
    torch.testing.assert_close(kw1["activations"], kw2["activations"])
    # CLIP's own crop (whole shorter side, bicubic, 224), not the backbone's 256 -> 224 crop
    assert len(views) == 2 and all(v.crop_pct == 1.0 and v.interpolation == "bicubic" and v.size == (224, 224)
                                   for v in views)


def test_the_recipe_filter_drops_what_lf_cbm_drops():
    """``> cutoff`` is kept, as ``highest > clip_cutoff`` in LF-CBM's train_cbm.py; text filters are off."""
    opts = concept_filter_options(get_recipe("table1-cub"))
    top5 = torch.tensor([0.26, 0.2601, 0.1])  # CUB's clip_cutoff is 0.26
    r = filter_concepts(["a very long concept that is longer than thirty", "wing", "x"], activations=top5, **opts)
    assert r.kept == ["wing"] and opts["activation_cutoff"] == 0.26


def test_table2_keeps_every_class_concept_and_dry_runs_filter_nothing():
    assert concept_filter_options(get_recipe("table2-imagenet-seg")) is False
    for name in ("table1-imagenet", "table1-places365", "table1-cub", "table3-cub", "appendix-b1-vit"):
        assert concept_filter_options(get_recipe(name))["text_filters"] is False
