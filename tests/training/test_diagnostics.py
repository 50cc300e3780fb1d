"""Degenerate results never pass silently: warnings, a log line, metrics.json, and progress bars that say why they stopped."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import salfcbm
from salfcbm.training.diagnostics import chance_level, head_findings
from salfcbm.errors import AllConceptsCutError, DegenerateResultWarning
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import compute_similarity_store
from salfcbm.training import BottleneckConfig, HeadConfig, fit


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from salfcbm.demo.scenes import GroundTruthScorer, SyntheticScenes

    root = tmp_path_factory.mktemp("scenes")
    train = SyntheticScenes(n=48, split="train", num_classes=2, image_size=32)
    val = SyntheticScenes(n=24, split="val", num_classes=2, image_size=32)
    prompts = PromptGrid(grid=(4, 4), radius=5)
    sims = {s: compute_similarity_store(root / s, d, GroundTruthScorer(d), prompts, progress=False)
            for s, d in (("train", train), ("val", val))}
    return train, val, sims


def _model(train):
    from salfcbm.demo.scenes import SmallConvNet

    torch.manual_seed(0)
    return salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=train.concepts, num_classes=2,
                        grid=4, input_size=(32, 32), backbone_weights=None)


def test_degenerate_fit_warns_logs_records_and_closes_the_bar(scenes, tmp_path, capsys, caplog, monkeypatch):
    from dataclasses import replace

    import salfcbm.training.head_stage as training  # where fit's head stage looks up fit_head

    train, val, sims = scenes
    solver = training.fit_head

    def empty_head(*args, **kwargs):  # what the issue met on a small folder: the selected head is all zeros
        fit_ = solver(*args, **kwargs)
        return replace(fit_, weight=torch.zeros_like(fit_.weight))

    monkeypatch.setattr(training, "fit_head", empty_head)
    with caplog.at_level(logging.WARNING, logger="salfcbm"), pytest.warns(DegenerateResultWarning) as rec:
        res = fit(_model(train), train, val, train_similarities=sims["train"], val_similarities=sims["val"],
                  run_dir=tmp_path / "run", baseline=False, progress=True,
                  bottleneck=BottleneckConfig(max_steps=40, val_every=2, patience=1, batch_size=16, lr=1e-12,
                                              cutoff=-1.0),
                  head=HeadConfig(n_lambdas=3))
    kinds = {f["kind"] for f in res.metrics["degenerate"]}
    assert {"empty_head", "constant_head", "chance_accuracy", "bottleneck_not_improved"} <= kinds
    warned = " ".join(str(w.message) for w in rec)
    for k in ("empty_head", "constant_head", "chance_accuracy", "bottleneck_not_improved"):
        assert k in warned and k in caplog.text
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {f["kind"] for f in saved["degenerate"]} == kinds
    assert saved["salfcbm"]["nnz"] == 0
    assert saved["bottleneck"]["stop_reason"].startswith("early stop at step 2/40")
    err = capsys.readouterr().err
    assert "early stop at step 2/40" in err  # the bar says why it stopped short


def test_healthy_head_has_no_findings():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    logits = torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(300, 3, generator=g)
    assert head_findings(torch.eye(3), logits, y) == []
    chance, threshold = chance_level(y, 3)
    assert 1 / 3 <= chance < threshold < 0.5


def test_every_concept_cut_is_recorded_before_the_error(scenes, tmp_path):
    train, val, sims = scenes
    with pytest.raises(AllConceptsCutError, match="interpretability cutoff") as e:
        fit(_model(train), train, val, train_similarities=sims["train"], val_similarities=sims["val"],
            run_dir=tmp_path / "run", baseline=False, progress=False,
            bottleneck=BottleneckConfig(max_steps=4, val_every=2, batch_size=16, cutoff=1.5))
    assert isinstance(e.value, ValueError) and e.value.similarities
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "failed" and saved["degenerate"][0]["kind"] == "all_concepts_cut"


def test_head_path_bar_says_why_it_stopped(capsys):
    from salfcbm.head.solver import fit_sparse_head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long()
    fit_sparse_head(x[:80], y[:80], x[80:], y[80:], n_lambdas=20, patience=1, progress=True)
    assert "no validation gain in 1 points" in capsys.readouterr().err


def test_cli_explain_never_prints_an_empty_table(tmp_path, capsys):
    from PIL import Image

    from salfcbm.cli import main

    model = salfcbm.wrap("timm:test_vit", pretrained=False, concepts=["a", "b"], num_classes=2)
    with torch.no_grad():
        model.head.weight.zero_()
    model.save_pretrained(tmp_path / "m")
    img = tmp_path / "x.png"
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(img)
    with pytest.warns(DegenerateResultWarning):
        assert main(["explain", "--model", str(tmp_path / "m"), str(img), "--out", str(tmp_path / "r.html"),
                     "--no-verify-backbone"]) == 0  # a random timm backbone is rebuilt with other weights
    out = capsys.readouterr().out
    assert "NO CONTRIBUTING CONCEPT" in out
    assert "No concept contributes to this class" in (tmp_path / "r.html").read_text()
