"""Table-driven: bad input to a public entry point raises a SalfCBMError naming the problem and the fix."""

from __future__ import annotations

import math

import pytest
import torch

import salfcbm
from salfcbm.demo import SyntheticScenes, pretrain_backbone
from salfcbm.errors import ConfigError, InputError, SalfCBMError

from . import _models as M


class _Classes(torch.utils.data.Dataset):
    def __init__(self, classes):
        self.classes = classes

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8), 0


def _wrap(**kw):
    args = {"concepts": M.CONCEPTS, "num_classes": 3, "layer": "2", "input_size": (32, 32), **kw}
    return lambda: salfcbm.wrap(M.backbone(), **args)


def _model():
    return M.model(0)


def _img():
    return torch.rand(3, 32, 32)


def _set_config():
    _model().config["concepts"] = ["x"]


CASES = {
    # name: (call, error class, regex that names the problem ... and the fix)
    "wrap(concepts='water')": (_wrap(concepts="water"), InputError, r"single string 'water'.*Pass \['water'\]"),
    "wrap(concepts=[1, None])": (_wrap(concepts=[1, None]), InputError, r"non-empty string.*Convert or remove"),
    "wrap(concepts=[])": (_wrap(concepts=[]), InputError, r"non-empty list"),
    "wrap(concepts=duplicates)": (_wrap(concepts=["a", "a"]), InputError, r"unique.*Deduplicate"),
    "wrap(num_classes=True)": (_wrap(num_classes=True), InputError, r"num_classes.*positive int, got True"),
    "wrap(grid=True)": (_wrap(grid=True), InputError, r"grid.*pair of positive ints"),
    "wrap(grid=(7, 0))": (_wrap(grid=(7, 0)), InputError, r"grid.*pair of positive ints"),
    "intervene(concept=None)": (lambda: _model().intervene(_img(), None), InputError,
                                r"name \(str\) or an index.*Pass one of `model.concepts`"),
    "explain_region(box=NaN)": (lambda: _model().explain_region(_img(), box=(math.nan, 0, 8, 8)), InputError,
                                r"NaN or infinite.*pass finite pixel coordinates"),
    "select_concepts(duplicates)": (lambda: _model().select_concepts(["water", "water"]), InputError,
                                    r"more than once.*List each once"),
    "select_concepts('water')": (lambda: _model().select_concepts("water"), InputError, r"wrap it in a list"),
    "explain(heatmap_size=huge)": (lambda: _model().explain(torch.rand(1, 3, 32, 32), heatmap_size=(10**5, 10**5)),
                                   InputError, r"GiB.*smaller size"),
    "explain(heatmap_size=True)": (lambda: _model().explain(torch.rand(1, 3, 32, 32), heatmap_size=(True, 4)),
                                   InputError, r"heatmap_size must be \(H, W\)"),
    "BottleneckConfig(lr=nan)": (lambda: salfcbm.BottleneckConfig(lr=math.nan), InputError, r"lr must be a finite"),
    "BottleneckConfig(batch_size=2.5)": (lambda: salfcbm.BottleneckConfig(batch_size=2.5), InputError,
                                         r"batch_size must be a positive int"),
    "BottleneckConfig(cutoff=inf)": (lambda: salfcbm.BottleneckConfig(cutoff=math.inf), InputError, r"cutoff.*finite"),
    "fit(val classes differ)": (lambda: salfcbm.fit(_model(), _Classes(["cat", "dog"]), _Classes(["cat", "cow"]),
                                                    scorer=object()), InputError,
                                r"only in train_data: \['dog'\].*same class sub-folders"),
    "fit(val classes reordered)": (lambda: salfcbm.fit(_model(), _Classes(["cat", "dog"]), _Classes(["dog", "cat"]),
                                                       scorer=object()), InputError, r"another order"),
    "from_pretrained(missing)": (lambda: salfcbm.SALFCBM.from_pretrained("./no/such/model"),
                                 salfcbm.errors.ModelNotFoundError, r"does not exist.*save_pretrained"),
    "config['x'] = ...": (_set_config, ConfigError, r"read-only.*dataclasses.replace"),
    "pretrain_backbone(lr=nan)": (lambda: pretrain_backbone(SyntheticScenes(n=4, image_size=16),
                                                                    lr=math.nan, progress=False), InputError,
                                  r"lr must be a finite"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_a_salfcbm_error(case):
    call, error, match = CASES[case]
    with pytest.raises(error, match=match) as info:
        call()
    assert isinstance(info.value, SalfCBMError)


def test_from_pretrained_rejects_unknown_keywords(tmp_path):
    _model().save_pretrained(tmp_path)
    with pytest.raises(InputError, match="unexpected keyword arguments \\['bogus'\\]"):
        salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=M.backbone(), bogus=1)


@pytest.mark.parametrize("n", [4, 6, 8, 12])
def test_short_backbone_pretraining_does_not_divide_by_zero(n):
    """OneCycleLR divided by zero at exactly 4 steps (n=8, batch 2, 1 epoch)."""
    data = SyntheticScenes(n=n, image_size=16, seed=0)
    net = pretrain_backbone(data, epochs=1, batch_size=2, width=2, progress=False)
    assert all(torch.isfinite(p).all() for p in net.parameters())
