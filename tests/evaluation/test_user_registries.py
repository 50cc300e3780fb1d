"""Open extension points (issue 20.7): a baseline and a scorer registered from outside the package, used by name.

The baseline goes through `make_baseline`, `build_methods` (with its own benchmark defaults) and
`run_attribution_benchmark`, and labels tables (`method_label`, `reproduce.tables`); the scorer goes
through `scorer_from_name` and `compute_similarity_store`. Also: the evaluation layer names nothing of
the demo world (issue 20.4), and its modules stay under 600 lines (issue 20.3).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

import salfcbm
from salfcbm.demo.scenes import SmallConvNet
from salfcbm.errors import InputError
from salfcbm.evaluation.baselines import (
    Attributor,
    BaselineContext,
    list_baselines,
    make_baseline,
    register_baseline,
    unregister_baseline,
)
from salfcbm.evaluation.benchmark import METRIC_COLUMNS, build_methods, run_attribution_benchmark
from salfcbm.evaluation.methods import method_label
from salfcbm.supervision import scorers
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.scorers import (
    CLIPScorer,
    ConceptScorer,
    DatasetBoundScorer,
    UnpromptedScorer,
    list_scorers,
    register_scorer,
    scorer_from_name,
    unregister_scorer,
)
from salfcbm.supervision.store import compute_similarity_store

ROOT = Path(__file__).resolve().parents[2]
open_clip.factory._MODEL_CONFIGS.setdefault("salf-test-tiny", {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
})


# --------------------------------------------------------------------------- a user's baseline


class BrightnessMap(Attributor):
    """A user's method: the brightness of the pixels, shifted by ``offset`` (its benchmark default
    is the reference colour's mean, taken from the build context)."""

    name = "user_brightness"
    label = "Brightness (user)"

    def __init__(self, model: nn.Module, *, offset: float = 0.0, eval_mode: bool = True) -> None:
        super().__init__(model, eval_mode=eval_mode)
        self.offset = float(offset)

    @classmethod
    def benchmark_kwargs(cls, context: BaselineContext, kwargs):
        kw = dict(kwargs)
        kw.setdefault("offset", -sum(context.reference_colour) / len(context.reference_colour))
        return kw

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return images.mean(1, keepdim=True) + self.offset


class LayerNorm2(Attributor):
    """A user's layer method: the norm of the layer's output, upsampled (``uses_layer``)."""

    name = "user_layer_norm"
    uses_layer = True
    optional = True

    def __init__(self, model: nn.Module, layer: str | None = None, *, eval_mode: bool = True) -> None:
        super().__init__(model, eval_mode=eval_mode)
        self.layer_name = layer

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        out: list[torch.Tensor] = []
        handle = dict(self.model.named_modules())[self.layer_name].register_forward_hook(lambda m, i, o: out.append(o))
        try:
            self.model(images)
        finally:
            handle.remove()
        norm = out[0].norm(dim=1, keepdim=True)
        return nn.functional.interpolate(norm, size=images.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture
def user_baselines():
    register_baseline(BrightnessMap)
    register_baseline(LayerNorm2)
    yield
    unregister_baseline("user_brightness")
    unregister_baseline("user_layer_norm")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return salfcbm.wrap(SmallConvNet(num_classes=3, width=4), num_classes=3, concepts=["red", "blue", "round"],
                        grid=4, input_size=(32, 32), backbone_weights=None)


def test_registered_baseline_is_listed_built_and_labelled(user_baselines):
    assert list_baselines()[-1] == "user_brightness"  # after the package's own, in registration order
    assert "user_layer_norm" not in list_baselines() and list_baselines(optional=True)[-1] == "user_layer_norm"
    images = torch.rand(2, 3, 8, 8)
    heat = make_baseline("user_brightness", nn.Conv2d(3, 1, 1), offset=1.0).attribute(images, 0)
    assert torch.allclose(heat, images.mean(1, keepdim=True) + 1.0)
    with pytest.raises(InputError, match=r"takes no argument\(s\) \['gain'\]; it accepts \['offset', 'eval_mode'\]"):
        make_baseline("user_brightness", nn.Conv2d(3, 1, 1), gain=2)
    assert method_label("user_brightness") == "Brightness (user)"
    assert method_label("user_layer_norm") == "user_layer_norm"  # no label: its name


def test_build_methods_and_the_runner_pick_a_user_baseline_by_name(user_baselines, model):
    methods, skipped = build_methods(model, ["salfcbm_logit", "user_brightness", "user_layer_norm"],
                                     backbone_preprocess=None, reference_colour=[0.2, 0.4, 0.6])
    assert skipped == {}
    assert methods["user_brightness"].attributor.offset == pytest.approx(-0.4)  # its own benchmark default
    assert methods["user_layer_norm"].attributor.layer_name == model.layer  # the tapped layer, as for Grad-CAM
    over = build_methods(model, ["user_brightness"], baseline_kwargs={"user_brightness": {"offset": 3.0}})[0]
    assert over["user_brightness"].attributor.offset == 3.0  # the user's keyword wins over the default
    images, masks = torch.rand(4, 3, 32, 32), torch.rand(4, 32, 32) > 0.5
    res = run_attribution_benchmark(methods, images, masks, n_steps=4, progress=False, faithfulness_runs=0,
                                    timing_repeats=1, reference="user_brightness", n_examples=1)
    for name in methods:
        assert all(k in res.rows[name] for k in METRIC_COLUMNS), res.rows[name]
    assert res.rows["user_brightness"]["speed_ratio"] == pytest.approx(1.0)
    assert res.rows["user_brightness"]["explains"] == "backbone"


def test_unregistered_names_are_refused_everywhere(model):
    with pytest.raises(InputError, match="Unknown method"):
        build_methods(model, ["user_brightness"])
    with pytest.raises(InputError, match="Unknown baseline 'user_brightness'"):
        make_baseline("user_brightness", nn.Conv2d(3, 1, 1))
    with pytest.raises(InputError, match="Unknown baseline"):
        unregister_baseline("user_brightness")


def test_register_baseline_refuses_bad_classes(user_baselines):
    class Clash(Attributor):
        name = "gradcam"

    class Reserved(Attributor):
        name = "salfcbm"

    class Nameless(Attributor):
        pass

    with pytest.raises(InputError, match="'gradcam' is already registered"):
        register_baseline(Clash)
    with pytest.raises(InputError, match="SALF-CBM's own method"):
        register_baseline(Reserved)
    with pytest.raises(InputError, match="has no `name`"):
        register_baseline(Nameless)
    with pytest.raises(InputError, match="subclass of salfcbm.evaluation.baselines.Attributor"):
        register_baseline(dict)
    register_baseline(BrightnessMap)  # registering the same class again is a no-op
    assert list_baselines().count("user_brightness") == 1


def test_table_labels_come_from_the_baseline_classes():
    from salfcbm.reproduce import tables

    assert tables.TABLE2_METHODS == {"lrp": "LRP", "integrated_gradients": "IG", "gradcam": "GradCAM",
                                     "gradcam++": "GradCAM++", "scorecam": "ScoreCAM", "fullgrad": "FullGrad",
                                     "salfcbm": "SALF-CBM"}
    assert tables.comparison_rows("table2", "imagenet", {"gradcam": {"miou": 50.0}})[7]["row"] == "GradCAM mIoU"


# --------------------------------------------------------------------------- a user's scorer


class ColourScorer:
    """A user's scorer: the mean colour of each prompt cell, ``dim`` times over (``"user_colour:DIM"``)."""

    def __init__(self, dim: str | int = 3, *, scale: float = 1.0) -> None:
        self.dim, self.scale = int(dim), float(scale)

    def fingerprint(self) -> dict:
        return {"type": "user_colour", "dim": self.dim, "scale": self.scale}

    def embed(self, images: torch.Tensor, indices: torch.Tensor, prompts: PromptGrid) -> torch.Tensor:
        cells = nn.functional.adaptive_avg_pool2d(images, prompts.grid)  # (B, 3, Hg, Wg)
        return (self.scale * cells.permute(0, 2, 3, 1)).repeat(1, 1, 1, self.dim)[..., : self.dim]

    def similarity(self, embeddings: torch.Tensor, concepts) -> torch.Tensor:
        return embeddings[..., : len(concepts)]

    def text_embeddings(self, texts) -> torch.Tensor:
        raise NotImplementedError


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], 0


@pytest.fixture
def user_scorer():
    register_scorer("user_colour")(ColourScorer)
    yield
    unregister_scorer("user_colour")


def test_scorer_from_name_builds_a_user_scorer(user_scorer, tmp_path):
    assert list_scorers()[0] == "clip" and list_scorers()[-1] == "user_colour"
    s = scorer_from_name("user_colour:2", scale=0.5)
    assert isinstance(s, ColourScorer) and (s.dim, s.scale) == (2, 0.5)
    assert scorer_from_name("user_colour").dim == 3  # the name alone: the factory's defaults
    assert isinstance(s, ConceptScorer) and not isinstance(s, UnpromptedScorer) and not isinstance(s, DatasetBoundScorer)
    store = compute_similarity_store(tmp_path / "sims", Images(5), s, PromptGrid(grid=(2, 2), radius=4),
                                     progress=False, dtype=torch.float32)
    want = s.embed(Images(5).x, torch.arange(5), PromptGrid(grid=(2, 2), radius=4))
    assert torch.allclose(store.embeddings(list(range(5))).float(), want)
    assert torch.allclose(store.targets([0, 1], ["r", "g"], layout="NHWC").float(), want[:2, ..., :2])


def test_scorer_names_keep_the_cli_syntax():
    torch.manual_seed(0)
    plain = scorer_from_name("salf-test-tiny", pretrained=None, device="cpu")  # `--scorer salf-test-tiny`
    torch.manual_seed(0)
    prefixed = scorer_from_name("clip:salf-test-tiny/none", device="cpu")
    torch.manual_seed(0)
    direct = CLIPScorer("salf-test-tiny", pretrained=None, device="cpu")
    assert type(plain) is type(prefixed) is CLIPScorer
    assert plain.fingerprint() == prefixed.fingerprint() == direct.fingerprint()
    assert isinstance(plain, UnpromptedScorer)
    with pytest.raises(InputError, match="pretrained tag 'openai' and pretrained= is given too"):
        scorer_from_name("clip:salf-test-tiny/openai", pretrained=None)


def test_register_scorer_refuses_bad_names_and_non_scorers(user_scorer):
    for bad, msg in (("", "non-empty string"), ("a:b", "without ':'"), ("hf-hub", "open_clip model prefix")):
        with pytest.raises(InputError, match=msg):
            register_scorer(bad)
    with pytest.raises(InputError, match="'user_colour' is already registered"):
        register_scorer("user_colour")(lambda **kw: None)
    register_scorer("user_broken")(lambda *a, **kw: object())
    try:
        with pytest.raises(InputError, match="lacks the ConceptScorer methods"):
            scorer_from_name("user_broken")
    finally:
        unregister_scorer("user_broken")
    with pytest.raises(InputError, match="No scorer named 'nope'"):
        unregister_scorer("nope")
    with pytest.raises(InputError, match="non-empty string"):
        scorer_from_name("")


def test_sha256_file_is_not_a_scorer_export():
    assert "sha256_file" not in scorers.__all__
    assert {"register_scorer", "scorer_from_name", "UnpromptedScorer", "DatasetBoundScorer"} <= set(scorers.__all__)


# --------------------------------------------------------------------------- layering and size


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_evaluation_names_nothing_of_the_demo_world():
    """Not even under TYPE_CHECKING, and no private attribute of the demo's scenes (issue 20.4)."""
    offenders = []
    for path in sorted((ROOT / "salfcbm" / "evaluation").rglob("*.py")):
        offenders += [f"{path.name}: import {m}" for m in _imports(path) if m.startswith("salfcbm.demo")]
        if re.search(r"\._rules\b|\"_rules\"", path.read_text()):
            offenders.append(f"{path.name}: reads `_rules`")
    assert offenders == []


def test_evaluation_modules_are_one_idea_each():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for p in (ROOT / "salfcbm" / "evaluation").rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v >= 600} == {}


def test_the_scorer_registry_module_needs_no_torch():
    """The CLI's --help can list scorer names cheaply: the registry module imports no torch of its own and
    knows "clip" before CLIP's module is loaded (the `salfcbm.supervision` package itself still imports torch)."""
    import subprocess
    import sys

    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('r', 'salfcbm/supervision/"
            "scorer_registry.py'); m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(m.list_scorers(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['clip'] False", out.stderr
