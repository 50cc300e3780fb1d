"""fit at scale: held-out features computed once, pool-then-project activations (issue 21.1, 21.4).

Above the feature-cache limit `fit` computes training features on the fly. The validation
features used to be recomputed by the backbone at every validation check (about 10 million
backbone forwards for ImageNet's validation set); now they are computed once, into a store in
the run's precision, whatever the number of checks.
"""

from __future__ import annotations

import pytest
import torch

import salfcbm
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import compute_similarity_store
from salfcbm.training import BottleneckConfig, HeadConfig, fit


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from salfcbm.demo.scenes import GroundTruthScorer, SyntheticScenes

    root = tmp_path_factory.mktemp("scenes")
    train = SyntheticScenes(n=40, split="train", num_classes=2, image_size=32)
    val = SyntheticScenes(n=20, split="val", num_classes=2, image_size=32)
    test = SyntheticScenes(n=12, split="test", num_classes=2, image_size=32)
    prompts = PromptGrid(grid=(4, 4), radius=5)
    sims = {s: compute_similarity_store(root / s, d, GroundTruthScorer(d), prompts, progress=False)
            for s, d in (("train", train), ("val", val))}
    return train, val, test, sims


def _model(train, pooling="mean"):
    from salfcbm.demo.scenes import SmallConvNet

    torch.manual_seed(0)
    return salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=train.concepts, num_classes=2,
                        grid=4, input_size=(32, 32), backbone_weights=None, pooling=pooling)


class _ImagesSeen:
    """Counts the images every backbone forward runs on (independently of fit's own counter)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.backbone.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.n += int(args[0].shape[0])


@pytest.mark.parametrize("val_every", [2, 7])
def test_validation_features_are_computed_once_whatever_the_number_of_checks(scenes, tmp_path, val_every):
    train, val, test, sims = scenes
    model = _model(train)
    seen = _ImagesSeen(model)
    res = fit(model, train, val, test_data=test, train_similarities=sims["train"], val_similarities=sims["val"],
              run_dir=tmp_path / "run", cache_features=False, shard_size=16, progress=False,
              filter_concepts=False, bottleneck=BottleneckConfig(max_steps=28, val_every=val_every, patience=100,
                                                                 batch_size=8, cutoff=-2.0),
              head=HeadConfig(n_lambdas=3))
    seen.handle.remove()
    checks = len(res.bottleneck.history)
    assert checks == 28 // val_every  # several validation checks ran...
    counts = res.metrics["backbone_images"]
    assert counts["val"] == len(val)  # ...and the backbone saw each validation image once
    assert counts["test"] == len(test)
    assert counts["train"] >= 28 * 8  # the training split is computed on the fly, epoch after epoch
    assert sum(counts.values()) == seen.n  # the counter is the backbone's own count
    assert res.metrics["features"]["cached"] is False
    stored = sorted(p.name for p in (tmp_path / "run" / "features").iterdir())
    assert stored == ["test-fp32", "val-fp32"]  # in the run's precision; nothing for train


def test_stored_validation_features_are_the_on_the_fly_ones(scenes, tmp_path):
    """In fp32 the stored validation features are exactly what the backbone computes on the fly."""
    from salfcbm.training import OnTheFlyFeatures, feature_store

    train, val, _, _ = scenes
    model = _model(train)
    fly = OnTheFlyFeatures(model, val, shard_size=16)
    store = feature_store(model, val, tmp_path / "val", shard_size=16, progress=False, dtype=torch.float32)
    for (a, x), (b, y) in zip(fly.iter_shards(), store.iter_shards()):
        assert a == b and torch.equal(x, y)
    assert fly.images_computed == len(val)


def test_cached_features_count_each_image_once_and_a_resumed_run_none(scenes, tmp_path):
    train, val, _, sims = scenes
    kw = dict(train_similarities=sims["train"], val_similarities=sims["val"], run_dir=tmp_path / "run",
              cache_features=True, progress=False, filter_concepts=False, baseline=False,
              bottleneck=BottleneckConfig(max_steps=6, val_every=2, batch_size=8, cutoff=-2.0),
              head=HeadConfig(n_lambdas=3))
    first = fit(_model(train), train, val, **kw)
    assert first.metrics["backbone_images"] == {"train": len(train), "val": len(val)}
    again = fit(_model(train), train, val, **kw)
    assert again.metrics["backbone_images"] == {"train": 0, "val": 0}


def _store(tmp_path, n=37, c=6, grid=4, seed=0):
    from salfcbm.supervision.store import ShardedStore

    g = torch.Generator().manual_seed(seed)
    store = ShardedStore(tmp_path / "f", manifest={"kind": "test"}, item_shape=(c, grid, grid), length=n,
                         shard_size=16, dtype=torch.float32)
    feats = torch.randn(n, c, grid, grid, generator=g) * 3 + torch.randn(1, c, 1, 1, generator=g)
    for i in range(store.num_shards):
        a, b = store.shard_range(i)
        store.write_shard(i, feats[a:b])
    return store


def _conv_model(pooling):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1))
    model = salfcbm.wrap(net, concepts=[f"c{i}" for i in range(5)], num_classes=2, grid=4, input_size=(8, 8),
                         pooling=pooling)
    with torch.no_grad():
        model.bottleneck.weight.normal_()
        if model.bottleneck.bias is not None:
            model.bottleneck.bias.normal_()
    return model


@pytest.mark.parametrize("pooling", ["mean", "max", "softmax"])
def test_concept_activations_equal_the_pooled_maps(tmp_path, pooling):
    """Pool-then-project (mean pooling) equals projecting every cell and pooling the maps; other poolings
    take the maps' path exactly."""
    from salfcbm.training.batches import map_features
    from salfcbm.training.features import store_concept_activations

    model, store = _conv_model(pooling), _store(tmp_path)
    fast, exact = store_concept_activations(model, store, batch=10), map_features(model, store, model.pool, batch=10)
    assert fast.shape == (37, 5)
    if pooling == "mean":
        torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(fast, exact)


def test_mean_pooled_activations_cost_one_projection_per_image(tmp_path):
    """The multiply-adds of the projection: one per image, not one per grid cell (16 cells here)."""
    from torch.utils.flop_counter import FlopCounterMode

    from salfcbm.training.features import store_concept_activations

    model, store = _conv_model("mean"), _store(tmp_path)
    with FlopCounterMode(display=False) as counter:
        store_concept_activations(model, store)
    n, m, c = 37, 5, 6
    assert counter.get_total_flops() == 2 * n * m * c  # the maps' path: 16 times this
