"""Bottleneck training batches at the speed of the arithmetic: channels-last, contiguous, prefetched,
and the feature-cache choice of fit."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

import salfcbm
from salfcbm.training.batches import prefetch, project_channels_last

sys.path.insert(0, str(Path(__file__).parent))
from test_training import _linear_problem  # noqa: E402

CONCEPTS = ["a wing", "a beak", "water"]


def test_channels_last_projection_is_the_conv():
    conv = torch.nn.Conv2d(8, 5, 1)
    x = torch.randn(3, 8, 4, 6)
    torch.testing.assert_close(project_channels_last(conv, x.permute(0, 2, 3, 1).contiguous()),
                               conv(x).permute(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_prefetch_keeps_order_and_raises_producer_errors():
    assert list(prefetch(range(10), depth=2)) == list(range(10))

    def broken():
        yield 1
        raise ValueError("bad shard")

    it = prefetch(broken())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad shard"):
        next(it)
    early = prefetch(iter(range(100)), depth=1)
    assert next(early) == 0
    early.close()  # stops the producer


def test_targets_are_contiguous_in_either_layout(tmp_path):
    _, sims = _linear_problem(tmp_path, 8, 0)
    concepts = ["c0", "c1", "c2", "c3"]
    nchw, nhwc = sims.targets(range(5), concepts), sims.targets(range(5), concepts, layout="NHWC")
    assert nchw.shape == (5, 4, 3, 3) and nchw.is_contiguous()
    assert nhwc.shape == (5, 3, 3, 4) and nhwc.is_contiguous()
    torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), nchw)


def test_shard_batches_are_contiguous_channels_last_and_cover_every_image_once(tmp_path):
    from salfcbm.training.batches import shard_batches

    feats, sims = _linear_problem(tmp_path, 150, 0)  # shards of 64: 64, 64, 22
    concepts = ["c0", "c1", "c2", "c3"]
    batches = shard_batches(feats, sims, concepts, 32, random.Random(0))
    seen = []
    for x, p in batches:
        assert x.dtype == p.dtype == torch.float32 and x.is_contiguous() and p.is_contiguous()
        assert x.shape[1:] == (3, 3, 6) and p.shape[1:] == (3, 3, 4) and x.shape[0] >= 2
        seen.append(x)
    assert batches.wait_seconds >= 0
    rows = torch.cat(seen)
    assert rows.shape[0] == 150
    every = feats.read(range(150)).permute(0, 2, 3, 1)
    order = torch.cdist(rows.flatten(1), every.flatten(1)).argmin(1)
    assert sorted(order.tolist()) == list(range(150))  # each image exactly once
    # features and targets stay paired: P = A F for c0..c2
    first_x, first_p = next(iter(shard_batches(feats, sims, concepts, 32, random.Random(0))))
    a = torch.randn(3, 6, generator=torch.Generator().manual_seed(1234))
    torch.testing.assert_close(first_x @ a.T, first_p[..., :3], rtol=1e-4, atol=1e-4)


def test_fit_says_whether_it_caches_features_and_why(caplog):
    from salfcbm.training.features import choose_feature_cache

    model = salfcbm.wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 2048, 3, stride=32, padding=1)), concepts=CONCEPTS,
                         num_classes=2, grid=7, input_size=(224, 224), backbone_weights=None)
    imagenet = [range(1_281_167)]
    cache, why = choose_feature_cache(model, imagenet, "auto", 64.0)
    assert not cache and "257 GB exceeds max_feature_cache_gb=64" in why and "on the fly" in why
    cache, why = choose_feature_cache(model, imagenet, "auto", 300)
    assert cache and "within" in why
    assert choose_feature_cache(model, [range(10)], False, 64.0)[0] is False
    with pytest.raises(salfcbm.errors.InputError, match="cache_features"):
        choose_feature_cache(model, [range(10)], "yes", 64.0)


def test_repeated_batches_run_epochs_back_to_back(tmp_path):
    from salfcbm.training.batches import shard_batches

    feats, sims = _linear_problem(tmp_path, 100, 0)
    stream = shard_batches(feats, sims, ["c0", "c1"], 32, random.Random(0), repeat=True)
    rows = sum(next(stream)[0].shape[0] for _ in range(10))  # more than three epochs' worth of batches
    stream.close()
    assert rows > 100
