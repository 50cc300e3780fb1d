"""The rows a recipe reports are the paper's rows (issue 18, items 5 and 6).

* "Standard, non-sparse" is the backbone's own classifier (the paper's 76.13% is torchvision's
  ResNet-50 V1), not a refitted dense head.
* Table 2's model has one class concept (and map) per class, 1,000 from LF-CBM's class list,
  which names two pairs of classes alike; no cutoff removes any of them; a run whose own
  SALF-CBM row fails stops with a non-zero exit instead of a table without that row.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import replace

import pytest
import torch
from torch import nn

import salfcbm
from salfcbm.cli import main
from salfcbm.errors import ConfigError, InputError, RecipeRunError, SalfCBMWarning
from salfcbm.explain.attribution import class_concept_indices
from salfcbm.reproduce import RECIPES, get_recipe
from salfcbm.reproduce.run import (_interpretability_cutoff, bottleneck_config, _segmentation, backbone_head_accuracy, load_datasets,
                                   recipe_concepts)
from salfcbm.supervision import concept_sets
from salfcbm.supervision.concepts import concepts_from_templates, unique_class_names
from salfcbm.training.pipeline import BottleneckConfig, BottleneckReport, apply_cutoff

#: Where LF-CBM's ``data/imagenet_classes.txt`` (pinned commit, sha256 cf94df9e...) repeats a name.
LF_CBM_REPEATS = {657: "missile", 744: "missile", 836: "sunglasses", 837: "sunglasses"}


class TinyClassifier(nn.Module):
    """A backbone with its own head: channel means through a 1x1 conv, then ``fc`` (class c = channel c)."""

    def __init__(self, order=(0, 1, 2)):
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1, bias=False)
        self.fc = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3)[:, :, None, None])
            self.fc.weight.copy_(torch.eye(3)[list(order)])

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _tiny(backbone, concepts=("stripes", "dots"), class_names=None, num_classes=3, size=32):
    return salfcbm.wrap(backbone, concepts=list(concepts), num_classes=num_classes, layer="features", grid=2,
                        class_names=class_names, input_size=(size, size), backbone_weights=None)


def _colour_images(n_per_class=2, size=32):
    """Class c: channel c lit, the others dark; ``[0, 1]`` views at the model's input size."""
    out = []
    for c in range(3):
        for _ in range(n_per_class):
            x = torch.zeros(3, size, size)
            x[c] = 1.0
            out.append((x, c))
    return out


# ----------------------------------------------------------------------------- item 5: the standard dense row
def test_standard_dense_row_is_the_backbones_own_classifier():
    data = _colour_images()
    right = _tiny(TinyClassifier())
    assert backbone_head_accuracy(right, data, batch_size=4, device="cpu") == 100.0
    # the same features with the head's rows rotated: a refitted dense head would still reach 100%,
    # the backbone's own classifier gets every image wrong
    rotated = _tiny(TinyClassifier(order=(1, 2, 0)))
    rotated.backbone.train()
    assert backbone_head_accuracy(rotated, data, batch_size=4, device="cpu") == 0.0
    assert rotated.backbone.training  # its modes are left as they were


def test_a_backbone_without_the_datasets_classifier_is_refused():
    model = _tiny(TinyClassifier(), num_classes=5)
    with pytest.raises(ConfigError, match=r"gives \(4, 3\).*expected \(B, 5\).*standard_dense='refit'"):
        backbone_head_accuracy(model, _colour_images(), batch_size=4, device="cpu")


def test_recipes_take_the_standard_dense_row_from_the_backbone_where_it_has_the_classes():
    by = {r.name: r.standard_dense for r in RECIPES.values()}
    # ResNet-50 V1 (ImageNet's 1,000 classes) and LF-CBM's ResNet-18 trained on CUB carry their dataset's head;
    # Places365's ImageNet ResNet-50 has none, so LF-CBM's standard model is a head trained on its features
    assert by["table1-imagenet"] == by["table1-cub"] == by["appendix-b1-vit"] == "backbone"
    assert by["table1-places365"] == "refit"
    with pytest.raises(InputError, match="standard_dense must be 'backbone' or 'refit'"):
        from salfcbm.reproduce.run import run_recipe

        run_recipe(replace(get_recipe("table1-cub"), standard_dense="own"), "nowhere", "nowhere")


# ----------------------------------------------------------------------------- item 6: 1,000 class concepts
@pytest.fixture()
def lf_cbm_classes(tmp_path, monkeypatch):
    """A mirror of LF-CBM's tree whose ImageNet class list repeats names where the pinned file does."""
    names = [f"imagenet class {i}" for i in range(1000)]
    for i, n in LF_CBM_REPEATS.items():
        names[i] = n
    data = "\r".join(names).encode()  # LF-CBM's file separates lines with CR
    entry = concept_sets.LF_CBM_CLASS_NAMES["imagenet"]
    path = tmp_path / "mirror" / entry.path
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    monkeypatch.setitem(concept_sets.LF_CBM_CLASS_NAMES, "imagenet",
                        dataclasses.replace(entry, sha256=hashlib.sha256(data).hexdigest()))
    monkeypatch.setenv("SALFCBM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SALFCBM_LF_CBM_URL", (tmp_path / "mirror").as_uri())
    return names


def _imagenet_layout(root, n_classes=1000):
    """ImageNet's layout with 1,000 WordNet-id folders (the first is n01440764); images in two classes."""
    from PIL import Image

    wnids = ["n01440764", *(f"n{1440765 + i:08d}" for i in range(n_classes - 1))]
    for split in ("train", "val"):
        for w in wnids:
            (root / split / w).mkdir(parents=True)
    for split, n in (("train", 3), ("val", 1)):
        for c in wnids[:2]:
            for j in range(n):
                Image.new("RGB", (40, 48), (200, 20 * j, 0)).save(root / split / c / f"{c}_{j}.JPEG")
    return root


def test_table2_recipe_builds_1000_distinct_class_concepts_from_lf_cbm_class_list(lf_cbm_classes, tmp_path):
    recipe = get_recipe("table2", "imagenet")
    train, val, test, names = load_datasets(recipe, _imagenet_layout(tmp_path / "imagenet"))
    assert len(names) == 1000 and names[0] == "imagenet class 0"
    assert [names[i] for i in LF_CBM_REPEATS] == ["missile (class 657)", "missile (class 744)",
                                                   "sunglasses (class 836)", "sunglasses (class 837)"]
    concepts = recipe_concepts(recipe, names)
    assert len(concepts) == len({c.lower() for c in concepts}) == recipe.expected_concepts == 1000
    assert concepts[744] == "an image of a missile (class 744)"
    # the raw list gives the same 1,000 (recipe_concepts tells repeated names apart itself)
    assert recipe_concepts(recipe, lf_cbm_classes) == concepts
    # every class finds its own concept: the Table 2 scoring of every class reads its own map
    model = _tiny(TinyClassifier(), concepts=concepts, class_names=names, num_classes=1000)
    idx = class_concept_indices(model)
    assert idx.tolist() == list(range(1000))


def test_repeated_class_names_get_their_index_and_templates_warn():
    assert unique_class_names(["cat", "Dog", "dog ", "bird"]) == ["cat", "Dog (class 1)", "dog  (class 2)", "bird"]
    assert unique_class_names(["a", "b"]) == ["a", "b"]
    with pytest.warns(SalfCBMWarning, match=r"Class names repeat \(\['missile'\]\).*unique_class_names"):
        assert concepts_from_templates(["missile", "missile", "cat"]) == ["an image of a missile", "an image of a cat"]
    with pytest.raises(InputError, match="stay repeated"):
        unique_class_names(["a", "a", "a (class 1)"])


def test_table2_recipe_keeps_every_class_concept_even_below_zero_similarity():
    recipe = get_recipe("table2-imagenet-seg")
    assert recipe.interpretability_cutoff is None and recipe.to_dict()["interpretability_cutoff"] is None
    sims = {"an image of a cat": 0.6, "an image of a dog": -0.02, "an image of a fox": -1.0,
            "an image of an owl": float("nan")}  # a concept map that never varies on the validation split
    model = _tiny(TinyClassifier(), concepts=list(sims))
    report = BottleneckReport(steps=1, best_step=1, best_val_similarity=0.0, concept_similarity=sims, kept=list(sims),
                              dropped=[], cell_similarity=sims, pooled_similarity=sims)
    kept = apply_cutoff(model, report, bottleneck_config(recipe, 100))
    assert kept.kept == list(sims) and not kept.dropped and model.num_concepts == 4
    # the Table 1 recipes keep LF-CBM's cutoff
    assert _interpretability_cutoff(get_recipe("table1-imagenet")) == 0.45


# ----------------------------------------------------------------------------- item 6: fail loudly
@pytest.fixture()
def seg_file(tmp_path):
    import numpy as np

    from salfcbm.datasets.paper import write_imagenet_seg_mat

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((40, 48), np.uint8) for _ in range(2)]
    for m in masks:
        m[10:30, 12:36] = 1
    return write_imagenet_seg_mat(tmp_path / "gtsegs_ijcv.mat", imgs, masks)


def _no_class_concepts_model():
    """A model whose concepts are not its class concepts: the SALF-CBM row of Table 2 cannot be scored."""
    return _tiny(TinyClassifier(), class_names=["tench", "goldfish", "shark"])


def test_a_failing_salfcbm_row_stops_the_recipe(seg_file, tmp_path):
    recipe = replace(get_recipe("table2-imagenet-seg"), image_size=32, baselines=("gradcam",), batch_size=2)
    with pytest.raises(RecipeRunError, match=r"SALF-CBM, failed.*(?i:an image of a tench).*segmentation\.json"):
        _segmentation(recipe, _no_class_concepts_model(), seg_file, tmp_path, n_steps=2, max_images=2, device="cpu")
    assert (tmp_path / "segmentation.json").exists()  # the baselines' rows are kept
    # a model with its class concepts runs through
    names = ["tench", "goldfish", "shark"]
    ok = _tiny(TinyClassifier(), concepts=concepts_from_templates(names), class_names=names)
    rows = _segmentation(recipe, ok, seg_file, tmp_path, n_steps=2, max_images=2, device="cpu")
    assert {"salfcbm", "gradcam"} <= set(rows) and 0 <= rows["salfcbm"]["miou"] <= 100


def test_a_recipe_run_whose_salfcbm_row_fails_exits_non_zero(seg_file, tmp_path, monkeypatch, capsys):
    import salfcbm.reproduce.cost as cost
    import salfcbm.reproduce.run as run

    def failing_dry_run(recipe, run_dir, **_):  # the real Table 2 stage on a model without class concepts
        small = replace(recipe, image_size=32, baselines=("gradcam",), batch_size=2)
        return run._segmentation(small, _no_class_concepts_model(), seg_file, tmp_path / "run", n_steps=2,
                                 max_images=2, device="cpu")

    class Cost:
        def summary(self):
            return "cost"

    monkeypatch.setattr(run, "dry_run", failing_dry_run)
    monkeypatch.setattr(cost, "estimate_cost", lambda *a, **k: Cost())
    code = main(["reproduce", "table2", "--dataset", "imagenet", "--dry-run", "--run-dir", str(tmp_path / "run")])
    assert code != 0
    assert "SALF-CBM, failed" in capsys.readouterr().err
