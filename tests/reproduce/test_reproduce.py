"""Recipes of the paper, their cost, their tables, and one full dry run (random weights, real shapes)."""

import json
from collections import namedtuple

import pytest
import torch

from salfcbm.cli import main
from salfcbm.errors import ConfigMismatchError, DiskSpaceError, InputError
from salfcbm.reproduce import RECIPES, estimate_cost, get_recipe
from salfcbm.reproduce.cost import check_disk, count_flops
from salfcbm.reproduce.recipes import UnknownRecipeError
from salfcbm.reproduce.run import _claim_run_dir, dry_run
from salfcbm.reproduce.tables import comparison_rows, format_table
from salfcbm.training.pipeline import HeadConfig, fit_head


def test_every_recipe_has_the_papers_prompting_and_scorer():
    for r in RECIPES.values():
        assert (r.grid, r.radius, r.line_width, r.scorer, r.alpha) == (7, 32, 2, ("ViT-B-16", "openai"), 0.99) \
            or r.sweep
        assert r.image_size == 224 and r.version >= 1 and r.key.endswith(f"@v{r.version}")


def test_dataset_settings_follow_lf_cbm():
    cub, places, imnet = get_recipe("table1", "cub"), get_recipe("table1", "places365"), get_recipe("table1", "imagenet")
    assert cub.backbone == {"source": "pytorchcv", "name": "resnet18_cub", "weights": "pretrained"}
    assert imnet.backbone == places.backbone == {"source": "torchvision", "name": "resnet50", "weights": "IMAGENET1K_V1"}
    assert (cub.lam, places.lam, imnet.lam) == (2e-4, 3e-4, 1e-4)
    assert (cub.expected_concepts, places.expected_concepts, imnet.expected_concepts) == (370, 2544, 4751)
    assert get_recipe("table2", "imagenet").concepts == "template:an image of a {class}"
    assert get_recipe("appendix-b1-vit-cls").cls_concat and get_recipe("appendix-b1-vit").backbone["name"] == "vit_b_16"
    assert [(r.grid, r.radius) for r in get_recipe("table3", "cub").runs()] == [
        (g, r) for g in (5, 7, 9) for r in (27, 32, 37)]


def test_unknown_recipe_names_the_closest():
    with pytest.raises(UnknownRecipeError, match="table1-cub"):
        get_recipe("table1-cubb")
    with pytest.raises(InputError, match="No recipe for 'table2' on 'cub'"):
        get_recipe("table2", "cub")


def test_table_puts_numbers_next_to_the_papers():
    rows = comparison_rows("table1", "imagenet", {"salfcbm_sparse": 75.0, "standard_sparse": 74.35})
    assert rows[0] == {"row": "SALF-CBM, sparse", "measured": 75.0, "paper": 75.32, "difference": -0.32}
    assert rows[1]["difference"] == 0.0
    t2 = comparison_rows("table2", "imagenet", {"salfcbm": {"miou": 60.0}, "fullgrad": {"miou": 55.78}})
    by = {r["row"]: r for r in t2}
    assert by["SALF-CBM mIoU"]["difference"] == 1.7 and by["FullGrad mIoU"]["paper"] == 55.78
    assert by["GradCAM mIoU"]["paper"] == 53.34 and by["GradCAM mIoU"]["measured"] is None
    md = format_table("table3", "cub", {(7, 32): 74.0})
    assert "| grid 7x7, r = 32 | 74.00 | 74.35 | -0.35 |" in md and md.count("n/a") == 16


def test_flops_are_counted_on_the_real_architectures():
    f = count_flops(get_recipe("table1-imagenet"))
    assert 30e9 < f["scorer_image"] < 40e9  # CLIP ViT-B/16 at 224 px: ~17.5 GMAC
    assert 7e9 < f["backbone"] < 9e9 and f["channels"] == 2048 and f["embedding_dim"] == 512
    assert count_flops(get_recipe("appendix-b1-vit-cls"))["channels"] == 2 * 768


def test_cost_counts_prompted_forwards_and_bytes():
    r = get_recipe("table1-imagenet")
    c = estimate_cost(r, throughput=1000.0, gpus=2)
    assert c.clip_forwards == 1_281_167 * 49 and c.text_forwards == 4751
    assert c.similarity_store_bytes == 1_281_167 * 49 * 512 * 2
    assert c.feature_cache_bytes == (1_281_167 + 50_000) * 2048 * 49 * 2
    assert c.throughput_source == "measured" and c.hours < estimate_cost(r, throughput=1000.0).hours
    assert estimate_cost(get_recipe("table3-imagenet")).clip_forwards == 1_281_167 * 3 * (25 + 49 + 81)


def test_a_run_that_would_fill_the_disk_stops_before_it_starts(tmp_path, monkeypatch):
    cost = estimate_cost(get_recipe("table1-imagenet"))
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda p: Usage(10 * 2**30, 0, 10 * 2**30))
    with pytest.raises(DiskSpaceError, match=r"writes 308.*10\.0 GiB free"):
        check_disk(cost, tmp_path / "run")
    check_disk(cost, tmp_path / "run", force=True)


def test_fixed_lambda_head_is_one_point():
    torch.manual_seed(0)
    x, y = torch.randn(60, 8), torch.randint(0, 3, (60,))
    fit = fit_head(x[:40], y[:40], x[40:], y[40:], 3, HeadConfig(lam=0.05), progress=False)
    # the solution at GLM-SAGA's lam / alpha (warm-started down from lam_max: the last path point)
    assert fit.lam == pytest.approx(0.05 / 0.99) and fit.selected == len(fit.path) - 1 and fit.criterion == "fixed"
    with pytest.raises(InputError, match="lam must be a positive"):
        HeadConfig(lam=0)


def test_run_dir_of_another_recipe_version_is_refused(tmp_path):
    _claim_run_dir(tmp_path, get_recipe("table1-cub"), force=False)
    with pytest.raises(ConfigMismatchError, match="table1-cub@v2, not table1-places365@v2"):
        _claim_run_dir(tmp_path, get_recipe("table1-places365"), force=False)


def test_cli_prints_the_cost(capsys):
    assert main(["reproduce", "table1", "--dataset", "cub", "--cost-only"]) == 0
    out = capsys.readouterr().out
    assert "293,706 prompted CLIP forwards" in out and "370 text forwards" in out
    assert main(["reproduce", "--list"]) == 0 and "table2-imagenet-seg@v2" in capsys.readouterr().out
    assert main(["reproduce", "table9", "--dataset", "cub", "--cost-only"]) == 2


@pytest.mark.slow
def test_dry_run_cub_at_full_size(tmp_path):
    """The CUB recipe end to end: 224 px, ResNet-18 (CUB) random init, 370 concepts, 7x7 grid, resumed once."""
    res = dry_run(get_recipe("table1-cub"), tmp_path, scorer="tiny", images=(8, 4), bottleneck_steps=5)
    run = res["runs"]["table1-cub"]
    assert run["concepts"]["final"] == 370 and run["checks"]["reload_max_abs_diff"] < 1e-4
    assert {"salfcbm_sparse", "standard_sparse", "salfcbm_dense", "standard_dense", "standard_dense_refit"} <= set(run)
    assert "| SALF-CBM, sparse |" in res["table"] and "74.35" in res["table"]
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["grid"] == [7, 7] and saved["input_size"] == [224, 224] and len(saved["concepts"]) == 370
    assert (tmp_path / "run" / "table.md").exists() and (tmp_path / "run" / "explanations.html").exists()
    assert len(run["checks"]["neurons"]) == 5 and (tmp_path / "run" / "neurons.png").exists()


def test_dry_run_weights_are_the_same_in_every_process():
    """A dry run resumed in a new process (or another torchrun rank) must meet the same random weights."""
    from salfcbm.reproduce.run import build_backbone, dry_run_scorer

    r = get_recipe("table1-cub")
    assert dry_run_scorer(r, "tiny").fingerprint() == dry_run_scorer(r, "tiny").fingerprint()
    a, b = build_backbone(r, pretrained=False), build_backbone(r, pretrained=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_sweep_points_spread_from_smallest_to_largest_grid():
    from salfcbm.reproduce.run import _spread

    sweep = get_recipe("table3-cub").sweep
    assert _spread(sweep, 2) == ((5, 27), (9, 37)) and _spread(sweep, None) == sweep
    assert _spread(sweep, 3) == ((5, 27), (7, 32), (9, 37)) and _spread(sweep, 1) == ((5, 27),)
