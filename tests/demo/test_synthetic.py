"""Tests of the procedural dataset, the ground-truth scorer and the stand-in backbone."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salfcbm.errors import ConceptNotFoundError, InputError, SalfCBMError
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.demo.scenes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    TEXTURES,
    GroundTruthScorer,
    SmallConvNet,
    SyntheticScenes,
    pretrain_backbone,
)


@pytest.fixture(scope="module")
def ds() -> SyntheticScenes:
    return SyntheticScenes(n=240, image_size=64, seed=3)


@pytest.fixture(scope="module")
def samples(ds):
    return [ds.sample(i) for i in range(len(ds))]


@pytest.fixture(scope="module")
def all_masks(samples) -> torch.Tensor:
    return torch.stack([m for _, _, m in samples])  # (N, K, H, W) bool


def _groups(ds):
    g = ds.concept_groups
    idx = {k: [ds.concepts.index(c) for c in v] for k, v in g.items()}
    return idx


# ---------------------------------------------------------------- the dataset
def test_items_are_images_in_unit_range(ds):
    image, label = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert isinstance(label, int) and 0 <= label < len(ds.classes)
    assert len(ds) == 240
    assert ds[-1][1] == ds[239][1]
    assert ds.labels.tolist() == [ds[i][1] for i in range(len(ds))]


def test_same_seed_same_pixels_other_seed_or_split_other_pixels():
    a = SyntheticScenes(n=10, seed=7)
    b = SyntheticScenes(n=50, seed=7)  # length does not change item i
    c = SyntheticScenes(n=10, seed=8)
    v = SyntheticScenes(n=10, seed=7, split="val")
    for i in range(10):
        assert torch.equal(a[i][0], b[i][0])
        assert torch.equal(a.masks(i), b.masks(i))
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], v[0][0])
    # the same object, asked twice, renders the same pixels
    assert torch.equal(a[3][0], a[3][0])


def test_sample_matches_getitem_and_masks(ds):
    image, label, masks = ds.sample(5)
    assert torch.equal(image, ds[5][0]) and label == ds[5][1]
    assert torch.equal(masks, ds.masks(5))
    assert masks.shape == (len(ds.concepts), 64, 64) and masks.dtype == torch.bool
    assert ds.masks_batch([1, 2]).shape == (2, len(ds.concepts), 64, 64)


def test_concept_and_class_metadata(ds):
    assert len(ds.concepts) == len(SHAPES) + len(COLOURS) + len(TEXTURES) + len(BACKGROUNDS) == 16
    assert len(set(ds.concepts)) == len(ds.concepts)
    assert "a circle" in ds.concepts and "something blue" in ds.concepts and "a grassy background" in ds.concepts
    assert len(ds.classes) == 8 and set(ds.class_concepts) == set(ds.classes)
    for name, concepts in ds.class_concepts.items():
        assert concepts and set(concepts) <= set(ds.concepts), name
    # no pure red anywhere in the palette: the prompts are red
    assert all(rgb != (1.0, 0.0, 0.0) for rgb in COLOURS.values())
    fp = ds.fingerprint()
    assert fp["seed"] == 3 and fp["n"] == 240 and fp["image_size"] == 64 and "generator_version" in fp


def test_masks_partition_every_pixel(all_masks, ds):
    g = _groups(ds)
    bg = all_masks[:, g["background"]]  # (N, 3, H, W)
    obj = ~bg.any(1)
    assert torch.equal(bg.any(3).any(2).sum(1), torch.ones(len(ds), dtype=torch.long))  # one background kind
    assert torch.equal(bg.sum(1), (~obj).long())  # covering exactly the non-object pixels
    for kind in ("shape", "colour", "texture"):
        # one shape, one colour and one texture on every object pixel, none elsewhere
        assert torch.equal(all_masks[:, g[kind]].sum(1), obj.long()), kind


def test_colour_masks_have_that_colour(samples, ds):
    palette = torch.tensor(list(COLOURS.values()))
    palette = palette / palette.norm(dim=1, keepdim=True)
    g = _groups(ds)
    hits = total = 0
    for image, _, m in samples[:60]:
        for k, ci in enumerate(g["colour"]):
            px = image[:, m[ci]].T  # (N, 3)
            if len(px) == 0:
                continue
            nearest = (px / px.norm(dim=1, keepdim=True).clamp_min(1e-6) @ palette.T).argmax(1)
            hits += int((nearest == k).sum())
            total += len(px)
    assert total > 0 and hits / total > 0.97


def test_background_masks_look_like_their_background(samples, ds):
    g = _groups(ds)
    sky, grass, sand = g["background"]
    means = {sky: [], grass: [], sand: []}
    for image, _, m in samples[:60]:
        for ci in means:
            if m[ci].any():
                means[ci].append(image[:, m[ci]].mean(1))
    sky_rgb, grass_rgb, sand_rgb = (torch.stack(means[c]).mean(0) for c in (sky, grass, sand))
    assert sky_rgb[2] > sky_rgb[0]  # blue-ish
    assert grass_rgb[1] > grass_rgb[0] and grass_rgb[1] > grass_rgb[2]  # green-ish
    assert sand_rgb[0] > sand_rgb[2]  # warm


def test_every_concept_appears_and_is_spatial(all_masks, ds):
    present = all_masks.any(3).any(2)  # (N, K)
    assert not bool(present.all(0).any())  # no concept is in every image
    counts = present.sum(0)
    assert bool((counts > 0).all()), [c for c, k in zip(ds.concepts, counts) if k == 0]
    # object concepts cover a small part of the image: something for concept maps to localise
    g = _groups(ds)
    obj_idx = g["shape"] + g["colour"] + g["texture"]
    fractions = all_masks[:, obj_idx].float().mean((2, 3))
    assert float(fractions[fractions > 0].mean()) < 0.2


def _rule_holds(name: str, objects: list[dict], background: str) -> bool:
    """An independent re-implementation of the documented class rules."""

    def has(pred, k=1):
        # k distinct objects, each matching one predicate of the list (or the same predicate k times)
        preds = pred if isinstance(pred, list) else [pred] * k
        from itertools import permutations

        return any(all(p(o) for p, o in zip(preds, perm)) for perm in permutations(objects, len(preds)))

    def obj(shape=None, colour=None, texture=None):
        return lambda o: (
            (shape is None or o["shape"] == shape)
            and (colour is None or o["colour"] == colour)
            and (texture is None or o["texture"] == texture)
        )

    table = {
        "yellow circle in the sky": background == "sky" and has(obj("circle", "yellow")),
        "purple cross on grass": background == "grass" and has(obj("cross", "purple")),
        "striped circle on sand": background == "sand" and has(obj("circle", texture="striped")),
        "orange triangle and blue square": has([obj("triangle", "orange"), obj("square", "blue")]),
        "ring and cross": has([obj("ring"), obj("cross")]),
        "dotted square and green triangle": has([obj("square", texture="dotted"), obj("triangle", "green")]),
        "two blue objects": has(obj(colour="blue"), 2),
        "striped square and dotted circle": has([obj("square", texture="striped"), obj("circle", texture="dotted")]),
    }
    return table[name]


def test_class_rule_holds_for_exactly_the_label(ds, samples):
    for i, (_, label, masks) in enumerate(samples):
        d = ds.describe(i)
        assert d["label"] == label and d["class"] == ds.classes[label]
        assert 2 <= len(d["objects"]) <= 3
        holds = [c for c in ds.classes if _rule_holds(c, d["objects"], d["background"])]
        assert holds == [ds.classes[label]], (i, d)
        # the rule's concepts are all visible in the masks
        present = {ds.concepts[k] for k in torch.nonzero(masks.any((1, 2))).flatten().tolist()}
        assert set(ds.class_concepts[ds.classes[label]]) <= present
    # the described objects are what the masks show: the centre pixel of every (non-ring)
    # object carries exactly that object's shape, colour and texture
    checked = agree = 0
    for i, (_, _, masks) in enumerate(samples):
        for o in ds.describe(i)["objects"]:
            if o["shape"] == "ring":  # a ring's centre is a hole
                continue
            cy, cx = (int(v) for v in o["centre"])
            on = {ds.concepts[k] for k in torch.nonzero(masks[:, cy, cx]).flatten().tolist()}
            checked += 1
            agree += on == {f"a {o['shape']}", f"something {o['colour']}", f"a {o['texture']} texture"}
    assert checked > 100 and agree / checked > 0.95


def test_no_single_concept_gives_the_class_away(all_masks, ds):
    present = all_masks.any(3).any(2)
    labels = ds.labels
    for k, concept in enumerate(ds.concepts):
        classes_with = set(labels[present[:, k]].tolist())
        assert len(classes_with) >= 3, (concept, classes_with)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), i=st.integers(0, 999), size=st.sampled_from([16, 32, 48, 64]))
def test_any_item_is_valid(seed, i, size):
    ds = SyntheticScenes(n=1000, image_size=size, seed=seed, num_classes=10)
    image, label, masks = ds.sample(i)
    assert image.shape == (3, size, size) and masks.shape == (16, size, size)
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert label == i % 10
    assert int(masks.sum(0).max()) <= 3  # shape + colour + texture at most; background alone otherwise


def test_arguments_are_validated():
    with pytest.raises(InputError, match="split"):
        SyntheticScenes(split="training")
    with pytest.raises(InputError, match="num_classes"):
        SyntheticScenes(num_classes=11)
    with pytest.raises(InputError, match="image_size"):
        SyntheticScenes(image_size=8)
    with pytest.raises(InputError, match="n must"):
        SyntheticScenes(n=0)
    ds = SyntheticScenes(n=3)
    with pytest.raises(IndexError, match="out of range"):
        ds[3]
    with pytest.raises(InputError):
        ds[1.5]


def test_fewer_classes_use_the_first_rules():
    ds = SyntheticScenes(n=20, num_classes=3)
    assert ds.classes == SyntheticScenes(n=1).classes[:3]
    assert set(ds.labels.tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- the ground-truth scorer
def _reference_coverage(masks: torch.Tensor, centres: torch.Tensor, radius: float) -> torch.Tensor:
    """Loop-based disc coverage, (Hg, Wg, K), for one image."""
    k, h, w = masks.shape
    yy, xx = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    hg, wg = centres.shape[:2]
    out = torch.zeros(hg, wg, k)
    for a in range(hg):
        for b in range(wg):
            cy, cx = centres[a, b].double().tolist()
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            out[a, b] = masks[:, disc].float().mean(1)
    return out


def test_embed_shape_and_matches_reference(ds):
    scorer = GroundTruthScorer(ds)
    prompts = PromptGrid(grid=(3, 4), radius=7, reference_size=64)  # 7 px on the 64 px scenes
    idx = torch.tensor([4, 9, 17])
    images = torch.stack([ds[int(i)][0] for i in idx])
    emb = scorer.embed(images, idx, prompts)
    assert emb.shape == (3, 3, 4, len(ds.concepts)) and emb.dtype == torch.float32
    for b, i in enumerate(idx.tolist()):
        ref = _reference_coverage(ds.masks(i), prompts.centres(64, 64), 7)
        torch.testing.assert_close(emb[b], ref, atol=1e-5, rtol=0)
    # coverage fractions: shapes sum to the object share, shapes + backgrounds sum to one
    g = _groups(ds)
    torch.testing.assert_close(
        emb[..., g["shape"]].sum(-1) + emb[..., g["background"]].sum(-1), torch.ones(3, 3, 4), atol=1e-5, rtol=0
    )


def test_disc_inside_an_object_scores_one_for_its_concepts_only():
    ds = SyntheticScenes(n=400, image_size=64, seed=0)
    scorer = GroundTruthScorer(ds)
    prompts = PromptGrid(grid=(1, 1), radius=3, reference_size=64)  # one centre at (32, 32), 3 px
    found = 0
    for i in range(len(ds)):
        d = ds.describe(i)
        for o in d["objects"]:
            if o["shape"] != "circle":
                continue
            if math.hypot(o["centre"][0] - 32, o["centre"][1] - 32) + 3 + 1 < o["radius"]:
                emb = scorer.embed(ds[i][0][None], [i], prompts)[0, 0, 0]
                own = {"a circle", f"something {o['colour']}", f"a {o['texture']} texture"}
                for k, c in enumerate(ds.concepts):
                    expected = 1.0 if c in own else 0.0
                    assert abs(float(emb[k]) - expected) < 1e-6, (i, c, float(emb[k]))
                found += 1
    assert found >= 3


def test_similarity_selects_columns_and_text_embeddings_are_one_hot(ds):
    scorer = GroundTruthScorer(ds)
    images = torch.stack([ds[i][0] for i in range(2)])
    emb = scorer.embed(images, torch.tensor([0, 1]), PromptGrid(grid=2, radius=10))
    sel = scorer.similarity(emb, ["something blue", "a circle", "something blue"])
    assert sel.shape == (2, 2, 2, 3)
    b, c = ds.concepts.index("something blue"), ds.concepts.index("a circle")
    assert torch.equal(sel[..., 0], emb[..., b]) and torch.equal(sel[..., 1], emb[..., c])
    t = scorer.text_embeddings(["a circle", "a sandy background"])
    assert t.shape == (2, 16) and torch.equal(t.sum(1), torch.ones(2))
    # similarity is what a CLIP-like scorer computes: embeddings against text embeddings
    torch.testing.assert_close(emb @ t.T, scorer.similarity(emb, ["a circle", "a sandy background"]))


def test_unknown_concept_names_the_closest():
    scorer = GroundTruthScorer(SyntheticScenes(n=2))
    emb = torch.zeros(1, 16)
    with pytest.raises(ConceptNotFoundError, match=r"Unknown concept 'a circel'.*'a circle'") as info:
        scorer.similarity(emb, ["a circel"])
    assert isinstance(info.value, KeyError) and isinstance(info.value, SalfCBMError)
    with pytest.raises(ConceptNotFoundError, match="red stop sign"):
        scorer.text_embeddings(["a red stop sign"])
    with pytest.raises(InputError, match="D = 16"):
        scorer.similarity(torch.zeros(1, 5), ["a circle"])


def test_embed_validates_its_inputs(ds):
    scorer = GroundTruthScorer(ds)
    p = PromptGrid(grid=2, radius=4)
    with pytest.raises(InputError, match="one dataset index per image"):
        scorer.embed(torch.zeros(2, 3, 64, 64), [0], p)
    with pytest.raises(InputError, match=r"\[0, 240\)"):
        scorer.embed(torch.zeros(1, 3, 64, 64), [240], p)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        scorer.embed(torch.zeros(3, 64, 64), [0], p)
    with pytest.raises(InputError, match="SyntheticScenes"):
        GroundTruthScorer([1, 2, 3])  # type: ignore[arg-type]
    assert scorer.embed(torch.zeros(0, 3, 64, 64), torch.zeros(0, dtype=torch.long), p).shape == (0, 2, 2, 16)


def test_context_noise_and_resolution_options(ds):
    p = PromptGrid(grid=3, radius=5)
    idx = torch.tensor([0, 1, 2])
    images = torch.stack([ds[i][0] for i in idx.tolist()])
    clean = GroundTruthScorer(ds).embed(images, idx, p)
    ctx = GroundTruthScorer(ds, context=0.2).embed(images, idx, p)
    present = torch.stack([ds.masks(i).any((1, 2)) for i in idx.tolist()]).float()[:, None, None, :]
    torch.testing.assert_close(ctx, 0.8 * clean + 0.2 * present)
    noisy = GroundTruthScorer(ds, noise=0.05)
    a, b = noisy.embed(images, idx, p), noisy.embed(images[1:], idx[1:], p)
    torch.testing.assert_close(a[1:], b)  # per-item noise: the same item gets the same noise in any batch
    assert 0.01 < float((a - clean).std()) < 0.1
    # resolution=224: the paper's default grid placed on a 224 px copy; the radius has one unit
    hi = GroundTruthScorer(ds, resolution=224)
    centres, radius = hi.geometry(PromptGrid())
    assert radius == 9 == GroundTruthScorer(ds).geometry(PromptGrid())[1]
    assert centres[0, 0].tolist() == pytest.approx([28 * 64 / 224] * 2)
    assert hi.fingerprint() != GroundTruthScorer(ds).fingerprint()


def test_fingerprint_identifies_dataset_and_settings(ds):
    fp = GroundTruthScorer(ds, noise=0.1).fingerprint()
    assert fp["dataset"]["seed"] == 3 and fp["dataset"]["n"] == 240 and fp["dataset"]["image_size"] == 64
    assert fp["noise"] == 0.1 and fp["scorer"] == "GroundTruthScorer" and "version" in fp
    import json

    json.dumps(fp)


def test_scorer_satisfies_the_protocol_if_available(ds):
    scorers = pytest.importorskip("salfcbm.supervision.scorers")
    proto = getattr(scorers, "ConceptScorer", None)
    if proto is None:
        pytest.skip("salfcbm.supervision.scorers has no ConceptScorer yet")
    try:
        assert isinstance(GroundTruthScorer(ds), proto)
    except TypeError:  # a Protocol that is not runtime_checkable
        for name in ("fingerprint", "embed", "similarity", "text_embeddings"):
            assert callable(getattr(GroundTruthScorer(ds), name))


# ---------------------------------------------------------------- the stand-in backbone
def test_small_conv_net_shapes_and_named_last_stage():
    net = SmallConvNet(num_classes=5, width=4)
    x = torch.rand(2, 3, 64, 64)
    assert net(x).shape == (2, 5)
    assert net.forward_features(x).shape == (2, 16, 8, 8)
    assert "stages.3" in dict(net.named_modules())
    with pytest.raises(InputError, match="width"):
        SmallConvNet(width=0)


@pytest.fixture
def one_thread():
    """Tiny CPU training is dominated by thread synchronisation on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_pretrain_backbone_learns_above_chance_and_is_deterministic(one_thread):
    train = SyntheticScenes(n=96, image_size=32, seed=0, num_classes=2)
    val = SyntheticScenes(n=64, image_size=32, seed=0, split="val", num_classes=2)
    kw = dict(epochs=3, batch_size=16, width=4, lr=1e-2, seed=1, progress=False)
    state = torch.random.get_rng_state()
    net = pretrain_backbone(train, val_dataset=val, **kw)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert not net.training
    x, y = val.tensors()
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    assert acc > 0.75  # chance is 0.5
    assert len(net.history) == 3 and "val_acc" in net.history[-1]
    again = pretrain_backbone(train, **kw)
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_pretrain_backbone_validates():
    with pytest.raises(InputError, match="epochs"):
        pretrain_backbone(SyntheticScenes(n=4), epochs=0)
    with pytest.raises(InputError, match="num_classes"):
        pretrain_backbone([(torch.rand(3, 16, 16), 0)], progress=False)  # type: ignore[arg-type]


def test_default_prompt_radius_is_the_papers_proportion_not_dataset_pixels(ds):
    """Issue 15.9: PromptGrid() (r = 32 at 224 px) means 9 px on a 64 px scene for every scorer."""
    _, radius = GroundTruthScorer(ds).geometry(PromptGrid())
    assert radius == 9  # was 32: a circle half the scene wide
    assert radius == PromptGrid().radius_px(ds.image_size, ds.image_size)


def test_images_that_are_not_the_datasets_own_pixels_cannot_be_aligned(ds):
    """Issue 15.1: the masks are in dataset pixels; a cropped or resized image is refused."""
    from salfcbm.errors import AlignmentError
    from salfcbm.core.images import ImageTransform

    scorer = GroundTruthScorer(ds)
    image = ds[3][0][None]
    cropped = ImageTransform(size=(64, 64), crop_pct=0.875, interpolation="bicubic").view(image)
    with pytest.raises(AlignmentError, match="input_crop_pct=1.0"):
        scorer.embed(cropped, [3], PromptGrid(grid=2))
    with pytest.raises(AlignmentError, match="not the dataset's"):
        scorer.embed(ds[4][0][None], [3], PromptGrid(grid=2))
    assert scorer.embed(image, [3], PromptGrid(grid=2)).shape == (1, 2, 2, len(ds.concepts))
