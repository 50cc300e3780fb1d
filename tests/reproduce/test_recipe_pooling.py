"""Recipes pool concept maps as the authors' released model does (issue 18, item 2), and the
bottleneck settings LF-CBM's regime needs (item 4) are recipe fields, recorded in ``recipe.json``.

The authors' ``cbm.py`` (github.com/itaybenou/show-and-tell, commit e45f864) pools the
``(N, M, H, W)`` concept maps with ``SoftmaxPooling2D(kernel_size=map_size)``: ``F.unfold`` with
the whole map as one patch, ``F.softmax`` over its ``H*W`` cells (temperature 1), and the
softmax-weighted sum of the cells. ``_authors_softmax_pooling`` is a transcription of it.
"""

import json
import math
from dataclasses import replace

import pytest
import timm
import torch
import torch.nn.functional as F

from salfcbm.core.model import wrap
from salfcbm.errors import InputError
from salfcbm.reproduce import RECIPES, get_recipe
from salfcbm.reproduce.run import _claim_run_dir
from salfcbm.training.pipeline import BottleneckConfig, init_bottleneck


def _authors_softmax_pooling(x: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    n, c, h, w = x.shape
    kh, kw = kernel_size
    patches = F.unfold(x, kernel_size=(kh, kw), stride=kernel_size, padding=0).view(n, c, kh * kw, -1)
    pooled = (patches * F.softmax(patches, dim=2)).sum(dim=2)
    return pooled.view(n, c, (h - kh) // kh + 1, (w - kw) // kw + 1)


@pytest.fixture(scope="module")
def softmax_model():
    r = get_recipe("table1-imagenet")
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    return wrap(net, concepts=["a", "b", "c"], num_classes=2, grid=r.grid, pooling=r.pooling,
                softmax_temperature=r.softmax_temperature, backbone_weights=None, input_size=(64, 64))


@pytest.mark.parametrize("grid", [(7, 7), (12, 12)])
def test_softmax_pooling_equals_the_authors_softmaxpooling2d(softmax_model, grid):
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 10.0, 60.0):  # flat maps to one dominant cell; large values must not overflow
        maps = scale * torch.randn(4, 3, *grid, generator=g)
        ours = softmax_model.pool(maps)
        theirs = _authors_softmax_pooling(maps, grid).squeeze(-1).squeeze(-1)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(softmax_model.pool(maps), maps.flatten(2).mean(-1))  # not the mean


def test_every_recipe_pools_as_the_authors_and_records_it(tmp_path):
    for r in RECIPES.values():
        assert (r.pooling, r.softmax_temperature) == ("softmax", 1.0) and r.version >= 2
    r = get_recipe("table1-cub")
    _claim_run_dir(tmp_path, r, force=False)
    saved = json.loads((tmp_path / "recipe.json").read_text())
    assert (saved["pooling"], saved["softmax_temperature"], saved["concept_filters"]) == ("softmax", 1.0, "activation")
    for k in ("batch_size", "max_steps", "patience", "val_every", "init"):
        assert saved["bottleneck"][k] == getattr(r.bottleneck, k)
    mean = replace(r, pooling="mean")  # the mean stays an option
    assert mean.to_dict()["pooling"] == "mean"


def test_recipe_and_wrap_refuse_bad_pooling_settings():
    r = get_recipe("table1-cub")
    with pytest.raises(InputError, match="pooling must be one of"):
        replace(r, pooling="avg")
    with pytest.raises(InputError, match="concept_filters must be one of"):
        replace(r, concept_filters="all")
    with pytest.raises(InputError, match="softmax_temperature"):
        replace(r, softmax_temperature=0.0)
    with pytest.raises(InputError, match="bottleneck.init"):
        replace(r, bottleneck=replace(r.bottleneck, init="xavier"))
    with pytest.raises(InputError, match="init must be one of"):
        BottleneckConfig(init="xavier")
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    with pytest.raises(InputError, match="softmax_temperature"):
        wrap(net, concepts=["a"], num_classes=2, pooling="softmax", softmax_temperature=float("nan"),
             backbone_weights=None, input_size=(64, 64))


def test_lf_cbm_init_is_nn_linear_default():
    conv = torch.nn.Conv2d(400, 300, 1, bias=False)
    torch.manual_seed(0)
    init_bottleneck(conv, "lf-cbm")
    w, bound = conv.weight, 1 / math.sqrt(400)
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound  # uniform on [-1/sqrt(C), 1/sqrt(C)]
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.01 * bound
    init_bottleneck(conv, "normal")
    assert abs(conv.weight.std().item() - bound) < 0.01 * bound


def test_recipes_train_the_bottleneck_in_lf_cbms_regime_where_it_fits():
    from salfcbm.reproduce.run import bottleneck_config

    cub, imnet = get_recipe("table1-cub"), get_recipe("table1-imagenet")
    c = bottleneck_config(cub, 5394)  # CUB's training images after the 10% hold-out: all of them, every step
    assert (c.batch_size, c.max_steps, c.val_every, c.patience, c.init, c.lr) == (5394, 1000, 50, 1, "lf-cbm", 1e-3)
    i = bottleneck_config(imnet, 1_255_000)
    assert i.batch_size == 8192 and i.cutoff == imnet.interpretability_cutoff
    assert bottleneck_config(imnet, 3).batch_size == 3  # a tiny (dry-run) set: never an image twice in a step
