"""Tests for salfcbm.evaluation.metrics (segmentation protocol, deletion / insertion) and salfcbm.datasets.imagenet_seg."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from salfcbm.errors import InputError, MissingExtraError, SalfCBMError
from salfcbm.evaluation.metrics import DeletionInsertion, SegmentationMetrics, blur_substrate, deletion_insertion

# --------------------------------------------------------------------------- segmentation: hand-computed


def _two_images() -> tuple[torch.Tensor, torch.Tensor]:
    heat = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 9.0]]])
    mask = torch.tensor([[[False, True], [True, True]], [[False, False], [False, False]]])
    return heat, mask


def test_hand_computed_two_images():
    # Image 1: R = [0, 1/3, 2/3, 1], mean 1/2 -> predicted fg [0, 0, 1, 1]; G = [0, 1, 1, 1].
    #   correct 3 of 4; fg: inter 2 (p2, p3), union 3 (p1, p2, p3); bg: inter 1 (p0), union 2 (p0, p1).
    #   AP on targets (1-G, G) = [1,0,0,0, 0,1,1,1] and scores (1-R, R) = [1,2/3,1/3,0, 0,1/3,2/3,1]:
    #     score >= 1   : tp 2, fp 0 -> P 1,   R 1/2
    #     score >= 2/3 : tp 3, fp 1 -> P 3/4, R 3/4
    #     score >= 1/3 : tp 4, fp 2 -> P 2/3, R 1
    #   AP = 1/2 * 1 + 1/4 * 3/4 + 1/4 * 2/3 = 41/48.
    # Image 2: R = [0, 0, 0, 1], mean 1/4 -> predicted fg [0, 0, 0, 1]; G all background.
    #   correct 3 of 4; fg: inter 0, union 1; bg: inter 3, union 4.
    #   AP on targets [1,1,1,1, 0,0,0,0], scores [1,1,1,0, 0,0,0,1]:
    #     score >= 1 : tp 3, fp 1 -> P 3/4, R 3/4;  score >= 0 : P 1/2, R 1.  AP = 9/16 + 1/8 = 11/16.
    # Dataset: pixel acc 6/8; IoU bg (1+3)/(2+4) = 2/3, IoU fg (2+0)/(3+1) = 1/2; mIoU 7/12;
    #   mAP (41/48 + 33/48) / 2 = 37/48.
    heat, mask = _two_images()
    m = SegmentationMetrics()
    per = m.update(heat, mask)
    out = m.compute()
    assert out["n_images"] == 2
    assert out["pixel_accuracy"] == pytest.approx(6 / 8)
    assert out["iou_background"] == pytest.approx(2 / 3)
    assert out["iou_foreground"] == pytest.approx(1 / 2)
    assert out["miou"] == pytest.approx(7 / 12)
    assert out["map"] == pytest.approx(37 / 48)
    assert per["ap"].tolist() == pytest.approx([41 / 48, 11 / 16])
    assert per["iou_foreground"].tolist() == pytest.approx([2 / 3, 0.0])


def test_torch_ap_backend_matches_hand_computed():
    heat, mask = _two_images()
    m = SegmentationMetrics(ap_backend="torch")
    per = m.update(heat, mask)
    assert per["ap"].tolist() == pytest.approx([41 / 48, 11 / 16])
    assert m.compute()["map"] == pytest.approx(37 / 48)
    with pytest.raises(InputError, match="ap_backend"):
        SegmentationMetrics(ap_backend="numpy")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40).flatmap(
        lambda n: st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=n, max_size=n)
    )
)
def test_torch_average_precision_equals_sklearn_with_ties(rows):
    from sklearn.metrics import average_precision_score

    from salfcbm.evaluation.segmentation import average_precision_rows

    scores = torch.tensor([r[0] / 4 for r in rows], dtype=torch.float64)
    targets = torch.tensor([r[1] for r in rows])
    got = average_precision_rows(scores[None], targets[None]).item()
    if targets.any():
        assert got == pytest.approx(average_precision_score(targets.numpy(), scores.numpy()), abs=1e-12)
    else:
        assert got == 0.0


def test_iou_is_accumulated_over_dataset_not_averaged_per_image():
    heat, mask = _two_images()
    m = SegmentationMetrics()
    m.update(heat[:1], mask[:1])
    m.update(heat[1:, None], mask[1:])  # (B, 1, H, W) works too
    out = m.compute()
    assert out["iou_foreground"] == pytest.approx(1 / 2)  # not mean(2/3, 0) = 1/3
    assert out["miou"] == pytest.approx(7 / 12)
    assert out["map"] == pytest.approx(37 / 48)


def test_constant_heatmap_predicts_background_and_ap_half():
    # The reference divides 0 by 0 and zeroes the NaNs: both one-hot channels are 0 -> background,
    # and all AP scores are 0 -> AP equals the positive rate of the concatenated targets, 1/2.
    mask = torch.tensor([[[True, False], [False, False]]])
    m = SegmentationMetrics()
    m.update(torch.full((1, 2, 2), 7.0), mask)
    out = m.compute()
    assert out["pixel_accuracy"] == pytest.approx(3 / 4)
    assert out["iou_foreground"] == 0.0
    assert out["iou_background"] == pytest.approx(3 / 4)
    assert out["map"] == pytest.approx(0.5)


def test_heatmap_is_resized_to_mask():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4, :4] = True
    heat = torch.zeros(1, 1, 2, 2)
    heat[..., 0, 0] = 1.0  # top-left cell
    m = SegmentationMetrics()
    m.update(heat, mask)
    out = m.compute()
    assert out["pixel_accuracy"] > 0.9
    assert out["iou_foreground"] > 0.7


def test_reset_and_repr():
    heat, mask = _two_images()
    m = SegmentationMetrics()
    m.update(heat, mask)
    assert "n_images=2" in repr(m)
    m.reset()
    assert m.n_images == 0
    with pytest.raises(InputError, match="before any update"):
        m.compute()


@pytest.mark.parametrize(
    ("heat", "mask", "match"),
    [
        (torch.zeros(2, 2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), "one channel"),
        (torch.zeros(4, 4), torch.zeros(1, 4, 4, dtype=torch.bool), r"\(B, 1, H, W\)"),
        (torch.zeros(2, 4, 4), torch.zeros(3, 4, 4, dtype=torch.bool), "one mask per heatmap"),
        (torch.zeros(1, 4, 4), torch.full((1, 4, 4), 2), "only 0 and 1"),
        (torch.tensor([[[float("nan"), 0.0]]]), torch.zeros(1, 1, 2, dtype=torch.bool), "NaN"),
        ([[0.0]], torch.zeros(1, 1, 1, dtype=torch.bool), "torch.Tensor"),
    ],
)
def test_segmentation_input_errors(heat, mask, match):
    with pytest.raises(InputError, match=match):
        SegmentationMetrics().update(heat, mask)


def test_integer_masks_accepted():
    heat, mask = _two_images()
    a, b = SegmentationMetrics(), SegmentationMetrics()
    a.update(heat, mask)
    b.update(heat, mask.long())
    assert a.compute() == b.compute()


# --------------------------------------------------------------------------- segmentation: properties

masks_st = st.integers(2, 6).flatmap(
    lambda n: st.lists(st.booleans(), min_size=n * n, max_size=n * n)
    .filter(lambda v: 0 < sum(v) < len(v))  # both classes present
    .map(lambda v: torch.tensor(v).view(1, n, n))
)


@settings(max_examples=40, deadline=None)
@given(mask=masks_st)
def test_heatmap_equal_to_mask_is_perfect(mask):
    m = SegmentationMetrics()
    m.update(mask.float(), mask)
    out = m.compute()
    assert out["pixel_accuracy"] == pytest.approx(1.0)
    assert out["miou"] == pytest.approx(1.0)
    assert out["map"] == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    data=st.integers(2, 5).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(-20, 20), min_size=n * n, max_size=n * n),
            st.lists(st.booleans(), min_size=n * n, max_size=n * n),
            st.just(n),
        )
    ),
    scale=st.integers(1, 1000),
    shift=st.integers(-1000, 1000),
)
def test_invariant_to_positive_affine_transform(data, scale, shift):
    values, mask_values, n = data
    # integer-valued heatmaps keep the normalisation exact, so results must match bit for bit
    heat = torch.tensor(values, dtype=torch.float64).view(1, n, n)
    mask = torch.tensor(mask_values).view(1, n, n)
    a, b = SegmentationMetrics(), SegmentationMetrics()
    a.update(heat, mask)
    b.update(heat * scale + shift, mask)
    assert a.compute() == b.compute()


# --------------------------------------------------------------------------- deletion / insertion


class _PixelSum(nn.Module):
    """Logit of class 0 = sum of all pixels of channel 0; class 1 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0].flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_deletion_hand_computed_auc():
    # 4x4 image of ones; raw score = number of remaining pixels. With 4 steps of 4 pixels:
    # curve 16, 12, 8, 4, 0 over fractions 0, 1/4, ..., 1 -> trapezoid area 8.
    images = torch.ones(1, 1, 4, 4)
    sal = torch.arange(16.0).view(1, 4, 4)
    out = deletion_insertion(
        _PixelSum(), images, sal, target=0, n_steps=4, softmax=False, modes="deletion", progress=False
    )
    assert out["deletion_curve"][0].tolist() == [16.0, 12.0, 8.0, 4.0, 0.0]
    assert out["fractions"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert out["deletion_auc"].tolist() == pytest.approx([8.0])
    assert "insertion_auc" not in out


def test_insertion_hand_computed_auc():
    # Insertion into zeros (custom substrate): curve 0, 4, 8, 12, 16 -> area 8 as well.
    images = torch.ones(1, 1, 4, 4)
    out = deletion_insertion(
        _PixelSum(), images, torch.rand(1, 4, 4), target=0, n_steps=4, softmax=False,
        insertion_substrate_fn=torch.zeros_like, modes=["insertion"], progress=False,
    )
    assert out["insertion_curve"][0].tolist() == [0.0, 4.0, 8.0, 12.0, 16.0]
    assert out["insertion_auc"].item() == pytest.approx(8.0)


_PATTERN = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2.0 - 1.0  # 4x4 checkerboard of +-1


class _RegionModel(nn.Module):
    """Only the top-left 4x4 patch matters: class 0 wins while it shows the checkerboard (which blur erases)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, :, :4, :4] * _PATTERN).mean(dim=(1, 2, 3))
        return torch.stack([4 * s, torch.zeros_like(s)], dim=1)


def test_saliency_on_the_region_beats_reversed_saliency():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16) * 0.1
    images[:, :, :4, :4] = 2.0 * _PATTERN
    good = torch.zeros(2, 1, 16, 16)
    good[..., :4, :4] = 1.0
    good = good + 0.01 * torch.rand(2, 1, 16, 16)
    bad = -good
    model = _RegionModel()
    metric = DeletionInsertion(model, n_steps=16, batch_size=7, progress=False)
    g, b = metric(images, good), metric(images, bad)
    assert (g["target"] == 0).all()
    assert (g["deletion_auc"] < b["deletion_auc"] - 0.2).all()
    assert (g["insertion_auc"] > b["insertion_auc"] + 0.2).all()
    # endpoints: deletion starts at the original image, insertion ends there
    p0 = model(images).softmax(1)[:, 0]
    assert torch.allclose(g["deletion_curve"][:, 0], p0)
    assert torch.allclose(g["insertion_curve"][:, -1], p0)


def test_batch_size_does_not_change_results_and_accumulator():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    images, sal = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    a = deletion_insertion(model, images, sal, n_steps=5, batch_size=1, progress=False)
    b = deletion_insertion(model, images, sal, n_steps=5, batch_size=100, progress=False)
    for k in ("deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve"):
        assert torch.allclose(a[k], b[k], atol=1e-6)
    metric = DeletionInsertion(model, n_steps=5, progress=False)
    metric.update(images[:2], sal[:2])
    metric.update(images[2:], sal[2:])
    res = metric.compute()
    assert res["n_images"] == 3
    assert res["deletion_auc"] == pytest.approx(float(a["deletion_auc"].mean()), abs=1e-6)


def test_mode_restored_and_eval_during_call():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x.flatten(1)[:, :3]

    model = Probe().train()
    deletion_insertion(model, torch.randn(1, 3, 4, 4), torch.rand(1, 4, 4), n_steps=2, progress=False)
    assert seen and not any(seen)
    assert model.training


def test_blur_substrate_keeps_shape_and_smooths():
    x = torch.zeros(1, 3, 21, 21)
    x[..., 10, 10] = 1.0
    y = blur_substrate(x)
    assert y.shape == x.shape
    assert y[..., 10, 10].max() < 0.1 and y.sum() == pytest.approx(3.0, rel=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_steps": 0}, "n_steps"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"modes": ("deletion", "bogus")}, "modes"),
        ({"deletion_substrate_fn": 3}, "callable"),
    ],
)
def test_deletion_insertion_constructor_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        DeletionInsertion(_PixelSum(), **kwargs)


def test_deletion_insertion_call_errors():
    metric = DeletionInsertion(_PixelSum(), n_steps=100, progress=False)
    with pytest.raises(InputError, match="exceeds"):
        metric(torch.ones(1, 1, 4, 4), torch.rand(1, 4, 4))
    metric = DeletionInsertion(_PixelSum(), n_steps=2, progress=False)
    with pytest.raises(InputError, match="one map per image"):
        metric(torch.ones(2, 1, 4, 4), torch.rand(1, 4, 4))
    with pytest.raises(InputError, match="one class index per image"):
        metric(torch.ones(2, 1, 4, 4), torch.rand(2, 4, 4), target=[0, 1, 0])
    with pytest.raises(InputError, match="logits"):
        DeletionInsertion(lambda x: x, n_steps=2, progress=False)(torch.ones(1, 1, 4, 4), torch.rand(1, 4, 4))
    with pytest.raises(InputError):
        metric.compute()


# --------------------------------------------------------------------------- ImageNet-segmentation reader


def _write_mat(path, images, masks):
    """A file laid out like MATLAB v7.3 gtsegs_ijcv.mat: object references under value/img and value/gt."""
    import h5py

    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        value = f.create_group("value")
        img_ds = value.create_dataset("img", (len(images), 1), dtype=h5py.ref_dtype)
        gt_ds = value.create_dataset("gt", (len(images), 1), dtype=h5py.ref_dtype)
        for i, (img, mask) in enumerate(zip(images, masks)):
            d = refs.create_dataset(f"img{i}", data=img.transpose(2, 1, 0))  # stored (3, W, H), column-major
            img_ds[i, 0] = d.ref
            m = refs.create_dataset(f"gt{i}", data=mask.T)  # stored (W, H)
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = m.ref
            gt_ds[i, 0] = cell.ref


@pytest.fixture()
def mat_file(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in ((6, 10, 3), (12, 8, 3))]
    masks = [np.zeros((6, 10), np.uint8), np.zeros((12, 8), np.uint8)]
    masks[0][1:4, 2:7] = 1
    masks[1][5:, :3] = 1
    path = tmp_path / "gtsegs_ijcv.mat"
    _write_mat(path, images, masks)
    return path, images, masks


def test_imagenet_seg_reads_raw_orientation(mat_file):
    from salfcbm.datasets.imagenet_seg import ImagenetSegmentation

    path, images, masks = mat_file
    ds = ImagenetSegmentation(path, size=None)
    assert len(ds) == 2
    for i in range(2):
        img, gt = ds.read_raw(i)
        np.testing.assert_array_equal(img, images[i])
        np.testing.assert_array_equal(gt, masks[i])
        image, mask = ds[i]
        assert image.shape == (3, *images[i].shape[:2]) and image.dtype == torch.float32
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), images[i] / 255.0, atol=1e-6)
        assert mask.dtype == torch.bool and mask.numpy().tolist() == (masks[i] != 0).tolist()
    assert ds[-1][1].shape == (12, 8)
    with pytest.raises(IndexError):
        ds[2]
    ds.close()


def test_imagenet_seg_resize_transform_and_pickle(mat_file):
    from salfcbm.datasets.imagenet_seg import ImagenetSegmentation

    path, _, masks = mat_file
    ds = ImagenetSegmentation(path, size=24)
    image, mask = ds[1]
    assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
    assert mask[-1, 0] and not mask[0, -1]  # nearest resize keeps the bottom-left object
    ds2 = pickle.loads(pickle.dumps(ds))  # open h5py handle is not pickled; DataLoader workers reopen
    assert torch.equal(ds2[1][1], mask)
    ds3 = ImagenetSegmentation(path, transform=lambda im: im.size, size=16)
    assert ds3[0][0] == (16, 16)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    imgs, msks = next(iter(loader))
    assert imgs.shape == (2, 3, 24, 24) and msks.shape == (2, 24, 24)


def test_imagenet_seg_errors(tmp_path):
    from salfcbm.datasets.imagenet_seg import DatasetNotFoundError, ImagenetSegmentation

    with pytest.raises(DatasetNotFoundError, match="gtsegs_ijcv.mat") as e:
        ImagenetSegmentation(tmp_path / "missing.mat")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, SalfCBMError)
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="HDF5"):
        ImagenetSegmentation(bad)
    import h5py

    other = tmp_path / "other.mat"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(InputError, match="value/img"):
        ImagenetSegmentation(other)
    with pytest.raises(InputError, match="size"):
        ImagenetSegmentation(other, size=0)


def test_imagenet_seg_missing_h5py(monkeypatch, tmp_path):
    from salfcbm.datasets.imagenet_seg import ImagenetSegmentation

    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MissingExtraError, match=r"h5py.*salfcbm\[baselines\]"):
        ImagenetSegmentation(tmp_path / "x.mat")
