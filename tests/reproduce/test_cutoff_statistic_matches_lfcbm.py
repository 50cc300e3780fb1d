"""salfcbm's interpretability-cutoff statistic is LF-CBM's, exactly (issue 18, item 1).

LF-CBM (``train_cbm.py`` at the pinned commit) keeps a concept when
``cos_similarity_cubed_single(val_clip_features, proj_layer(val_target_features)) > 0.45``, where
``val_clip_features`` are CLIP's similarities of the *unprompted* validation images. The
transcription below is LF-CBM's ``similarity.py`` line for line; salfcbm's statistic must equal it.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import salfcbm
from salfcbm.errors import InputError
from salfcbm.training.cutoff import lfcbm_similarity, unprompted_similarities
from salfcbm.training.pipeline import BottleneckConfig, BottleneckReport, HeadConfig, apply_cutoff, fit


def _cos_similarity_cubed_single(clip_feats, target_feats):
    """LF-CBM ``similarity.py`` (commit fa2869d), verbatim."""
    clip_feats = clip_feats.float()
    clip_feats = clip_feats - torch.mean(clip_feats, dim=0, keepdim=True)
    target_feats = target_feats - torch.mean(target_feats, dim=0, keepdim=True)

    clip_feats = clip_feats**3
    target_feats = target_feats**3

    clip_feats = clip_feats / torch.norm(clip_feats, p=2, dim=0, keepdim=True)
    target_feats = target_feats / torch.norm(target_feats, p=2, dim=0, keepdim=True)

    similarities = torch.sum(target_feats * clip_feats, dim=0)
    return similarities


def _lfcbm_interpretable(val_clip_features, outs, cutoff=0.45):
    """LF-CBM ``train_cbm.py``: ``sim = similarity_fn(val_clip_features, outs); interpretable = sim > cutoff``."""
    sim = _cos_similarity_cubed_single(val_clip_features, outs)
    return sim, sim > cutoff


def test_statistic_equals_lfcbm_code_on_fixed_tensors():
    g = torch.Generator().manual_seed(18)
    clip = 0.2 + 0.05 * torch.randn(97, 9, generator=g)  # CLIP cosine similarities live near 0.2
    w = torch.randn(9, 9, generator=g)
    outs = clip @ w + 0.3 * torch.randn(97, 9, generator=g)  # pooled activations: related, noisy
    outs[:, 4] = clip[:, 4] * 3 + 1  # one concept followed exactly
    outs[:, 7] = 0.5  # one concept constant across the images: LF-CBM divides 0 by 0
    got = lfcbm_similarity(clip, outs)
    want, interpretable = _lfcbm_interpretable(clip, outs)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert math.isclose(float(got[4]), 1.0, abs_tol=1e-5) and math.isnan(float(got[7]))
    assert ((got > 0.45) == interpretable).all()
    # the order of the arguments matters only through the .float() of LF-CBM's clip_feats
    torch.testing.assert_close(lfcbm_similarity(clip.double(), outs), want, equal_nan=True)


def _model(concepts):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1))
    return salfcbm.wrap(net, concepts=list(concepts), num_classes=2, grid=3, input_size=(6, 6))


def test_lfcbm_cutoff_keeps_strictly_above_and_drops_nan():
    sims = {"c0": 0.45, "c1": 0.4501, "c2": float("nan"), "c3": 0.9}
    report = BottleneckReport(steps=1, best_step=1, best_val_similarity=0.5, concept_similarity={}, kept=list(sims),
                              dropped=[], cell_similarity=dict.fromkeys(sims, 0.45), lfcbm_similarity=sims)
    model = _model(sims)
    r = apply_cutoff(model, report, BottleneckConfig(cutoff=0.45, cutoff_statistic="lfcbm"))
    assert model.concepts == ["c1", "c3"] and [c for c, _ in r.dropped] == ["c0", "c2"]
    assert r.statistic == "lfcbm"
    model = _model(sims)  # salfcbm's own statistics keep >= (unchanged)
    apply_cutoff(model, report, BottleneckConfig(cutoff=0.45, cutoff_statistic="cell"))
    assert model.concepts == list(sims)


def test_lfcbm_statistic_needs_unprompted_images():
    with pytest.raises(InputError, match="embed_images"):
        unprompted_similarities(object(), [(torch.zeros(3, 4, 4), 0)], ["c0"])
    report = BottleneckReport(steps=1, best_step=1, best_val_similarity=0.5, concept_similarity={}, kept=["c0"],
                              dropped=[], cell_similarity={"c0": 0.5})
    with pytest.raises(InputError, match="unprompted"):
        apply_cutoff(_model(["c0"]), report, BottleneckConfig(cutoff_statistic="lfcbm"))


def test_fit_applies_lfcbm_statistic_to_pooled_activations_and_unprompted_val(tmp_path):
    from salfcbm.demo.scenes import GroundTruthScorer, SmallConvNet, SyntheticScenes
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store

    kw = dict(image_size=32, seed=3, num_classes=3)
    data = {s: SyntheticScenes(n=n, split=s, **kw) for s, n in (("train", 64), ("val", 48))}
    torch.manual_seed(0)
    net = SmallConvNet(num_classes=3, width=4).eval()
    concepts = data["train"].concepts

    def wrapped():
        return salfcbm.wrap(net, concepts=concepts, num_classes=3, class_names=data["train"].classes, grid=3,
                            input_size=(32, 32), input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0),
                            input_crop_pct=1.0)

    prompts = PromptGrid(grid=(3, 3), radius=32)
    sims = {s: compute_similarity_store(tmp_path / s, data[s], GroundTruthScorer(data[s]), prompts, progress=False)
            for s in data}
    cfg = BottleneckConfig(max_steps=20, val_every=10, batch_size=32, lr=1e-2, cutoff=0.15, cutoff_statistic="lfcbm",
                           cutoff_guard="warn")
    with warnings.catch_warnings():  # a random backbone: degenerate-result warnings are expected
        warnings.simplefilter("ignore")
        res = fit(wrapped(), data["train"], data["val"], train_similarities=sims["train"],
                  val_similarities=sims["val"], run_dir=tmp_path / "run", bottleneck=cfg, baseline=False,
                  head=HeadConfig(lam=1e-3), cache_features=False, filter_concepts=False, progress=False)
    # expected: LF-CBM's code on (unprompted val similarities, pooled concept activations of the trained bottleneck)
    from safetensors.torch import load_file

    ref = wrapped()
    ref.bottleneck.load_state_dict(load_file(tmp_path / "run" / "bottleneck.safetensors"))
    scorer = GroundTruthScorer(data["val"])
    images = torch.stack([data["val"][i][0] for i in range(len(data["val"]))])
    with torch.no_grad():
        outs = ref.pool(ref.concept_maps_from_features(ref.forward_features(ref.preprocess(images))))
        clip = scorer.similarity(scorer.embed_images(images, torch.arange(len(images))), concepts)
    want, interpretable = _lfcbm_interpretable(clip, outs, cutoff=0.15)
    got = torch.tensor([res.bottleneck.lfcbm_similarity[c] for c in concepts])
    torch.testing.assert_close(got, want, equal_nan=True, atol=1e-4, rtol=1e-4)
    assert res.model.concepts == [c for c, keep in zip(concepts, interpretable.tolist()) if keep]
    assert res.cutoff == res.metrics["cutoff"] and res.cutoff["statistic"] == "lfcbm"
    assert res.cutoff["kept"] == res.model.num_concepts
    assert 0 < res.model.num_concepts < len(concepts)  # the test exercises both sides of the cutoff



def test_recipes_use_lfcbm_statistic_and_table_md_reports_concepts_kept():
    from salfcbm.reproduce.recipes import RECIPES
    from salfcbm.reproduce.run import bottleneck_config
    from salfcbm.reproduce.tables import PAPER_CONCEPTS, concept_rows, format_concepts

    for r in RECIPES.values():
        assert r.cutoff_statistic == "lfcbm" and r.cutoff_guard == "warn" and r.version >= 2, r.key
        cfg = bottleneck_config(r, 1000)  # a valid configuration; Table 2 has no cutoff at all
        assert cfg.cutoff_statistic == ("cell" if r.interpretability_cutoff is None else "lfcbm"), r.key
    assert PAPER_CONCEPTS == {"imagenet": 4741, "places365": 2544, "cub": 370}
    runs = {"table1-imagenet": {"concepts": {"initial": 4751, "inactive": 10, "uninterpretable": 95, "final": 4646,
                                             "kept_for_head": []}},
            "other": {"salfcbm_sparse": 70.0}}  # no concept counts: skipped
    (row,) = concept_rows("imagenet", runs)
    assert row["kept"] == 4646 and row["paper"] == 4741 and row["difference"] == -95
    md = format_concepts("imagenet", runs, statistic="lfcbm")
    assert "| table1-imagenet | 4,751 | 10 | 95 | 0 | 4,646 | 4,741 | -95 |" in md and "lfcbm statistic" in md
    assert format_concepts("cub", {"other": {}}) == ""
