"""Tests for salfcbm.evaluation.benchmark and benchmarks/bench_attribution.py (offline, tiny models)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import salfcbm
from salfcbm.evaluation.baselines import list_baselines, make_baseline
from salfcbm.evaluation.benchmark import (
    METRIC_COLUMNS,
    BenchmarkMethod,
    BenchmarkResult,
    build_methods,
    constant_substrate,
    forward_speed,
    plot_attribution_examples,
    run_attribution_benchmark,
)
from salfcbm.demo.checks import class_evidence_masks
from salfcbm.errors import InputError
from salfcbm.demo.scenes import SmallConvNet, SyntheticScenes

ROOT = Path(__file__).resolve().parents[2]
ALL = ["salfcbm", "salfcbm_logit", *list_baselines()]


@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes(n=8, image_size=32, seed=3, split="test")


@pytest.fixture(scope="module")
def tiny_salfcbm(scenes):
    """A SALF-CBM around a random SmallConvNet; random bottleneck and head (nothing is trained)."""
    torch.manual_seed(0)
    net = SmallConvNet(num_classes=scenes.num_classes, width=4).eval()
    concepts = scenes.concepts + [f"An image of a {c}" for c in scenes.classes]  # Table 2's class concepts
    model = salfcbm.wrap(net, concepts=concepts, num_classes=scenes.num_classes, grid=4,
                         input_size=(32, 32), backbone_weights=None, class_names=scenes.classes)
    return model.eval()


def _finite_row(row: dict) -> bool:
    return all(isinstance(row.get(k), float) and math.isfinite(row[k]) for k in METRIC_COLUMNS)


def test_runner_scores_every_method(scenes, tiny_salfcbm):
    from captum.attr._utils.lrp_rules import IdentityRule

    idx = list(range(3))
    images = torch.stack([scenes[i][0] for i in idx])
    labels = torch.tensor([scenes[i][1] for i in idx])
    masks = class_evidence_masks(scenes, idx)
    norm = tiny_salfcbm.backbone.stem[0]  # SmallConvNet's input normalisation: LRP needs a rule for it
    norm.rule = IdentityRule()
    methods, skipped = build_methods(
        tiny_salfcbm, backbone_preprocess=None,
        baseline_kwargs={"integrated_gradients": {"n_steps": 4}, "scorecam": {"batch_size": 64}},
    )
    assert skipped == {} and list(methods) == ALL
    assert methods["gradcam"].attributor.layer_name == tiny_salfcbm.layer
    lrp = methods["lrp"].attributor

    def lrp_keeping_rule(x, target):  # Captum's LRP deletes every module's rule after each call
        if not hasattr(norm, "rule"):
            norm.rule = IdentityRule()
        return lrp.attribute(x, target)

    methods["lrp"].attributor = lrp_keeping_rule
    res = run_attribution_benchmark(
        methods, images, masks, labels=labels, batch_size=2, n_steps=4, timing_batch=1, timing_repeats=1,
        deletion_substrate=constant_substrate(tiny_salfcbm.config["input_mean"]), n_examples=2, progress=False,
    )
    if hasattr(norm, "rule"):
        del norm.rule
    assert list(res.rows) == ALL
    for name, row in res.rows.items():
        assert _finite_row(row), (name, row)
        assert 0 <= row["miou"] <= 1 and 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
        assert row["n_images"] == 3 and 0 <= row["explained_is_label"] <= 1
        assert row["explains"] == ("SALF-CBM" if name.startswith("salfcbm") else "backbone")
    assert res.rows["salfcbm"]["speed_ratio"] == pytest.approx(1.0)
    assert res.examples["images"].shape == (2, 3, 32, 32) and set(res.examples["heatmaps"]) == set(ALL)
    # JSON and Markdown carry every method; the figure has a column per method plus image and mask
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d["methods"]) == set(ALL) and d["meta"]["n_images"] == 3
    md = res.to_markdown()
    assert all(f"| {n} |" in md for n in ALL)
    fig = plot_attribution_examples(res)
    assert len(fig.axes) == 2 * (2 + len(ALL))


def test_random_floor_below_oracle_and_errors_recorded(scenes):
    torch.manual_seed(0)
    net = SmallConvNet(num_classes=scenes.num_classes, width=4).eval()
    idx = list(range(6))
    images = torch.stack([scenes[i][0] for i in idx])
    masks = class_evidence_masks(scenes, idx)

    def oracle(x, target):  # the mask itself, as a heatmap: the best any method can do
        return masks.float()[:, None]

    def broken(x, target):
        raise RuntimeError("cannot explain")

    methods = {
        "oracle": BenchmarkMethod(oracle, net),
        "random": BenchmarkMethod(make_baseline("random", None, seed=1), net),
        "broken": BenchmarkMethod(broken, net),
    }
    res = run_attribution_benchmark(methods, images, masks, batch_size=6, n_steps=4, timing_batch=0,
                                    reference=None, on_error="record", progress=False)
    assert res.rows["oracle"]["miou"] == pytest.approx(1.0) and res.rows["oracle"]["map"] == pytest.approx(1.0)
    assert res.rows["random"]["miou"] < res.rows["oracle"]["miou"] - 0.2
    assert res.rows["random"]["pixel_accuracy"] < res.rows["oracle"]["pixel_accuracy"]
    assert "cannot explain" in res.rows["broken"]["error"]
    assert "n/a" in res.to_markdown()
    with pytest.raises(RuntimeError, match="cannot explain"):
        run_attribution_benchmark({"broken": methods["broken"]}, images, masks, n_steps=2, progress=False)


def test_evidence_masks(scenes):
    idx = list(range(len(scenes)))
    obj = class_evidence_masks(scenes, idx)
    union = class_evidence_masks(scenes, idx, mode="concepts")
    with_bg = class_evidence_masks(scenes, idx, mode="concepts", include_background=True)
    assert obj.dtype == torch.bool and obj.shape == (len(idx), 32, 32)
    assert bool((obj & ~union).sum() == 0) and bool((union & ~with_bg).sum() == 0)  # objects ⊆ concepts ⊆ +bg
    assert obj.flatten(1).any(1).all()  # every scene shows its class evidence
    for i in idx:  # never any background pixel without include_background
        bg = scenes.masks(i)[[scenes.concepts.index(c) for c in scenes.concept_groups["background"]]].any(0)
        assert not (union[i] & bg).any()
    with pytest.raises(InputError, match="mode"):
        class_evidence_masks(scenes, idx, mode="rule")


def test_real_data_path_end_to_end(tmp_path):
    """--model (a saved SALF-CBM on a timm backbone) + --imagenet-seg (a v7.3 .mat): the whole CLI, offline."""
    h5py = pytest.importorskip("h5py")
    torch.manual_seed(0)
    names = ["cat", "dog", "car", "tree"]
    model = salfcbm.wrap("timm:test_resnet", pretrained=False, concepts=[f"An image of a {c}" for c in names],
                         class_names=names, num_classes=4, input_size=(32, 32))
    with torch.no_grad():
        model.concept_std.fill_(1.0)
    model.save_pretrained(tmp_path / "model")

    rng = np.random.default_rng(0)
    mat = tmp_path / "gtsegs_ijcv.mat"
    with h5py.File(mat, "w") as f:  # the layout Chefer et al.'s reader expects (MATLAB is column-major)
        refs, value = f.create_group("#refs#"), f.create_group("value")
        img_ds = value.create_dataset("img", (3, 1), dtype=h5py.ref_dtype)
        gt_ds = value.create_dataset("gt", (3, 1), dtype=h5py.ref_dtype)
        for i in range(3):
            img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            mask = np.zeros((40, 48), dtype=np.uint8)
            mask[10:30, 12 + i : 36] = 1
            img_ds[i, 0] = refs.create_dataset(f"img{i}", data=img.transpose(2, 1, 0)).ref
            m = refs.create_dataset(f"gt{i}", data=mask.T)
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = m.ref
            gt_ds[i, 0] = cell.ref

    spec = importlib.util.spec_from_file_location("bench_attribution", ROOT / "benchmarks" / "bench_attribution.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "res" / "attribution.json"
    methods = ["salfcbm", "gradcam", "integrated_gradients", "random"]
    torch.manual_seed(0)  # the random-init backbone is rebuilt from its spec: same seed, same fingerprint
    d = bench.main([
        "--model", str(tmp_path / "model"), "--imagenet-seg", str(mat), "--size", "32", "--images", "3",
        "--batch-size", "2", "--steps", "4", "--ig-steps", "2", "--timing-repeats", "1", "--examples", "2",
        "--methods", *methods, "--out", str(out), "--no-progress",
    ])
    assert list(d["methods"]) == methods
    for name in methods:
        assert _finite_row(d["methods"][name]), (name, d["methods"][name])
        assert d["methods"][name]["n_images"] == 3
    assert d["meta"]["targets"] == "predicted" and d["forward"]["ratio"] > 0
    assert json.loads(out.read_text())["methods"].keys() == d["methods"].keys()
    main_table, *_ = out.with_suffix(".md").read_text().split("\n\n")
    rows = [ln for ln in main_table.splitlines() if ln.startswith("| ")]
    assert len(rows) == len(methods) + 1  # header + one row per method
    assert "pointing game" in out.with_suffix(".md").read_text()  # the field's metrics table
    assert (out.parent / "attribution_examples.png").stat().st_size > 0


def test_forward_speed_and_argument_errors(scenes, tiny_salfcbm):
    x = torch.stack([scenes[i][0] for i in range(2)])
    f = forward_speed(tiny_salfcbm, tiny_salfcbm.backbone, x, wrapped_preprocess=tiny_salfcbm.preprocess, repeats=1)
    assert f["batch_size"] == 2 and f["ratio"] > 0

    net = tiny_salfcbm.backbone
    ok = {"r": BenchmarkMethod(make_baseline("random", None), net)}
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    with pytest.raises(InputError, match="attribute"):
        BenchmarkMethod(object(), net)
    with pytest.raises(InputError, match="BenchmarkMethod"):
        run_attribution_benchmark({"r": make_baseline("random", None)}, x, masks)
    with pytest.raises(InputError, match="one per image"):
        run_attribution_benchmark(ok, x, masks[:1])
    with pytest.raises(InputError, match="needs `labels`"):
        run_attribution_benchmark(ok, x, masks, targets="labels")
    with pytest.raises(InputError, match="targets"):
        run_attribution_benchmark(ok, x, masks, targets="true")
    with pytest.raises(InputError, match="Unknown method"):
        build_methods(tiny_salfcbm, ["salfcbm", "gradcamm"])
    with pytest.raises(InputError, match="n_steps"):
        run_attribution_benchmark(ok, x, masks, n_steps=0)
    with pytest.raises(InputError, match="No examples"):
        plot_attribution_examples(BenchmarkResult(rows={}))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=4), st.integers(1, 3))
def test_constant_substrate_fills_every_pixel(colour, b):
    x = torch.rand(b, len(colour), 3, 5)
    out = constant_substrate(colour)(x)
    assert out.shape == x.shape
    assert torch.allclose(out, torch.tensor(colour, dtype=x.dtype).view(1, -1, 1, 1).expand_as(x))


def test_table2_protocol_scores_the_class_concept_map_and_keeps_the_logit_row(scenes, tiny_salfcbm):
    from salfcbm.explain.attribution import SALFCBMAttribution

    x = torch.stack([scenes[i][0] for i in range(3)])
    methods, _ = build_methods(tiny_salfcbm, ["salfcbm", "salfcbm_logit"], backbone_preprocess=None)
    target = torch.tensor([0, 1, 0])
    inputs = tiny_salfcbm.preprocess(x)
    maps = tiny_salfcbm(inputs).concept_maps
    got = methods["salfcbm"].attribute(inputs, target)
    for b, t in enumerate(target.tolist()):
        k = tiny_salfcbm.concepts.index(f"An image of a {scenes.classes[t]}")
        want = torch.nn.functional.interpolate(maps[b : b + 1, k : k + 1], size=(32, 32), mode="bilinear")
        assert torch.allclose(got[b : b + 1], want, atol=1e-5)
    logit = SALFCBMAttribution(tiny_salfcbm, mode="class").attribute(inputs, target)
    assert torch.allclose(methods["salfcbm_logit"].attribute(inputs, target), logit)


def test_table2_protocol_needs_class_concepts(scenes):
    net = SmallConvNet(num_classes=scenes.num_classes, width=4).eval()
    plain = salfcbm.wrap(net, concepts=scenes.concepts, num_classes=scenes.num_classes, grid=4, input_size=(32, 32),
                         backbone_weights=None, class_names=scenes.classes)
    with pytest.raises(InputError, match="Table 2"):
        build_methods(plain, ["salfcbm"])
    methods, skipped = build_methods(plain, ["salfcbm", "salfcbm_logit"], on_error="record")
    assert list(methods) == ["salfcbm_logit"] and "An image of a" in skipped["salfcbm"]
