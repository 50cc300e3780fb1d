"""Small figures: intervention curves, a neuron's top images, the randomisation sanity check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from salfcbm.errors import InputError
from salfcbm.explain import NeuronTopImages
from salfcbm.viz import plot_intervention_curves, plot_randomisation, plot_top_images


def test_intervention_curves_draw_one_line_per_policy_with_its_area_in_the_legend():
    curves = {
        "ks": [0, 1, 2],
        "accuracy": {"random": [0.5, 0.6, 0.7], "oracle": [0.5, 0.8, 0.9]},
        "true_class_probability": {"random": [0.3, 0.4, 0.5], "oracle": [0.3, 0.6, 0.8]},
        "auc": {"random": {"accuracy": 0.6, "true_class_probability": 0.4},
                "oracle": {"accuracy": 0.75, "true_class_probability": 0.575}},
        "mode": "concept", "meta": {"targets": "labels"}, "n_images": 12,
    }
    fig = plot_intervention_curves(curves)
    assert len(fig.axes) == 2
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "true-class probability"]
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["random (AUC 0.600)", "oracle (AUC 0.750)"]
    assert list(fig.axes[1].lines[1].get_ydata()) == [0.3, 0.6, 0.8]
    assert fig.get_suptitle() == "Intervention curves (concept mode; targets: labels; 12 images)"
    with pytest.raises(InputError, match="Nothing to plot"):
        plot_intervention_curves({"accuracy": {}})


def test_top_images_have_one_row_per_neuron_titled_with_its_activation():
    tops = [NeuronTopImages(name, i, [0, 1, 2][:n], torch.tensor([0.9, 0.5, 0.25])[:n], torch.rand(n, 3, 8, 8),
                            torch.rand(n, 8, 8)) for i, (name, n) in enumerate([("fur", 3), ("sky", 2)])]
    fig = plot_top_images(tops)
    assert len(fig.axes) == 5  # 3 + 2 panels on a 2 x 3 grid
    assert [ax.get_title() for ax in fig.axes] == ["fur\nc*=0.900", "c*=0.500", "c*=0.250", "sky\nc*=0.900", "c*=0.500"]
    assert fig.axes[3].get_subplotspec().rowspan.start == 1
    with pytest.raises(InputError, match="Nothing to plot"):
        plot_top_images([])


def test_randomisation_shows_both_similarities_and_the_maps_of_each_step(tmp_path):
    steps, methods = ["head", "layer4"], ["salfcbm", "gradcam"]
    result = SimpleNamespace(
        steps=steps, methods=methods, spearman={m: [0.9, 0.2] for m in methods}, ssim={m: [0.8, 0.1] for m in methods},
        expected_change={m: [True, True] for m in methods}, failures=[("gradcam", "head")], passed=False,
        examples={"salfcbm": [torch.rand(4, 4) for _ in range(3)]},
    )
    fig = plot_randomisation(result, tmp_path / "r.png")
    assert (tmp_path / "r.png").exists()
    assert len(fig.axes) == 2 + 3  # two curve panels, the intact map and one map per step
    assert [ax.get_title() for ax in fig.axes[2:]] == ["intact", "head", "layer4"]
    assert fig.get_suptitle().endswith("FAILED")
    assert [t.get_color() for t in fig.texts if t.get_text() == fig.get_suptitle()] == ["red"]
    crosses = [ln for ln in fig.axes[0].lines if ln.get_marker() == "x"]
    assert len(crosses) == 1  # the failure is marked once per panel
    with pytest.raises(InputError, match="Expected a RandomisationResult"):
        plot_randomisation(object())
