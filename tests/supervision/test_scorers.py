"""CLIPScorer (paper 3.2): batched prompting + preprocessing on a tiny random open_clip model."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from salfcbm.errors import InputError
from salfcbm.supervision.prompts import PromptGrid
from salfcbm._utils.io import sha256_file
from salfcbm.supervision.scorers import CLIPScorer, ConceptScorer

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
open_clip.factory._MODEL_CONFIGS["salf-test-tiny"] = TINY


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return CLIPScorer("salf-test-tiny", pretrained=None, device="cpu", batch_size=7)


def _naive_embed(scorer: CLIPScorer, images: torch.Tensor, prompts: PromptGrid) -> torch.Tensor:
    """Draw with PromptGrid.draw on the resized image, then normalise and encode one at a time."""
    x = scorer.preprocess(images)
    drawn = prompts.draw(x)  # (B, P, 3, H, W)
    mean = torch.tensor(scorer.mean).view(3, 1, 1)
    std = torch.tensor(scorer.std).view(3, 1, 1)
    out = torch.stack(
        [
            torch.stack([F.normalize(scorer.model.encode_image(((im - mean) / std)[None]), dim=-1)[0] for im in row])
            for row in drawn
        ]
    )
    return out.view(images.shape[0], *prompts.grid, -1)


def test_protocol_and_shapes(scorer):
    assert isinstance(scorer, ConceptScorer)
    prompts = PromptGrid(grid=(2, 3), radius=5)
    emb = scorer.embed(torch.rand(3, 3, 40, 40), torch.arange(3), prompts)
    assert emb.shape == (3, 2, 3, 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3, 2, 3))
    assert scorer.embedding_dim == 32
    sims = scorer.similarity(emb, ["a cat", "a dog"])
    assert sims.shape == (3, 2, 3, 2)


@torch.no_grad()
def test_embed_equals_one_prompt_at_a_time(scorer):
    prompts = PromptGrid(grid=(3, 2), radius=6)
    images = torch.rand(2, 3, 36, 36)
    torch.testing.assert_close(scorer.embed(images, torch.arange(2), prompts), _naive_embed(scorer, images, prompts), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_prompts_change_the_embedding_and_are_drawn_at_model_resolution(scorer):
    prompts = PromptGrid(grid=(2, 2), radius=6)
    img = torch.rand(1, 3, 64, 64)
    emb = scorer.embed(img, torch.arange(1), prompts).view(4, -1)
    assert (emb[0] - emb[3]).abs().max() > 1e-4
    # the same image at 2x resolution gives (almost) the same embeddings: circles are
    # drawn after resizing, so their size in model pixels does not depend on the input size
    big = F.interpolate(img, scale_factor=2, mode="nearest")
    emb_big = scorer.embed(big, torch.arange(1), prompts).view(4, -1)
    assert F.cosine_similarity(emb, emb_big).min() > 0.99


def test_preprocess_matches_open_clip_pil_transform(scorer):
    rng = np.random.default_rng(0)
    # smooth image so bicubic implementations agree closely
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    pil = Image.fromarray(small).resize((60, 60), Image.BILINEAR)
    tf = open_clip.image_transform(scorer.image_size, is_train=False, mean=scorer.mean, std=scorer.std)
    ref = tf(pil)
    x = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()[None] / 255
    ours = scorer._normalise(scorer.preprocess(x))[0]
    assert ours.shape == ref.shape == (3, 32, 32)
    assert (ours - ref).abs().mean() < 0.01 and (ours - ref).abs().max() < 0.06  # ~1-2 grey levels


def test_non_square_images_are_refused_not_cropped(scorer):
    """Issue 15.1: cropping would move the prompts off the backbone's cells."""
    from salfcbm.errors import AlignmentError

    with pytest.raises(AlignmentError, match="crop"):
        scorer.embed(torch.rand(1, 3, 32, 48), torch.arange(1), PromptGrid(grid=2))
    assert scorer.embed(torch.rand(1, 3, 64, 64), torch.arange(1), PromptGrid(grid=2)).shape == (1, 2, 2, 32)


def test_text_embeddings_cached_and_cosine(scorer, monkeypatch):
    calls = []
    orig = scorer.model.encode_text

    def counting(tokens, *a, **k):
        calls.append(tokens.shape[0])
        return orig(tokens, *a, **k)

    monkeypatch.setattr(scorer.model, "encode_text", counting)
    concepts = ["striped fur", "a red roof", "water drops"]
    t1 = scorer.text_embeddings(concepts)
    t2 = scorer.text_embeddings(concepts)
    assert t1 is t2 and sum(calls) == 3
    scorer.text_embeddings(["water drops", "sky"])  # only "sky" is new
    assert sum(calls) == 4
    torch.testing.assert_close(t1.norm(dim=-1), torch.ones(3))
    emb = torch.randn(5, 32)
    expected = F.normalize(emb, dim=-1) @ t1.T
    torch.testing.assert_close(scorer.similarity(emb, concepts), expected)
    with pytest.raises(InputError, match="D=7"):
        scorer.similarity(torch.randn(2, 7), concepts)


def test_fingerprint_random_init_and_checkpoint_file(tmp_path, scorer):
    fp = scorer.fingerprint()
    json.dumps(fp)
    assert fp["model_name"] == "salf-test-tiny" and fp["image_size"] == [32, 32]
    assert "random_init_sha256" in fp["pretrained"]
    torch.manual_seed(1)
    other = CLIPScorer("salf-test-tiny", pretrained=None, device="cpu")
    assert other.fingerprint() != fp  # different random weights, different fingerprint
    ckpt = tmp_path / "tiny.pt"
    torch.save(scorer.model.state_dict(), ckpt)
    loaded = CLIPScorer("salf-test-tiny", pretrained=str(ckpt), device="cpu")
    assert loaded.fingerprint()["pretrained"] == {"file": "tiny.pt", "sha256": sha256_file(ckpt)}
    img = torch.rand(1, 3, 32, 32)
    p = PromptGrid(grid=(2, 2), radius=4)
    torch.testing.assert_close(loaded.embed(img, torch.arange(1), p), scorer.embed(img, torch.arange(1), p))


def test_local_dir_model_uses_its_preprocess_cfg(tmp_path, scorer):
    from safetensors.torch import save_file

    d = tmp_path / "tiny-clip"
    d.mkdir()
    (d / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}})
    )
    save_file({k: v.contiguous() for k, v in scorer.model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    s = CLIPScorer(f"local-dir:{d}", device="cpu")
    assert s.mean == (0.5, 0.5, 0.5) and s.std == (0.25, 0.25, 0.25) and s.interpolation == "bilinear"
    fp = s.fingerprint()
    assert fp["pretrained"]["local_dir_sha256"]["open_clip_model.safetensors"] == sha256_file(d / "open_clip_model.safetensors")
    assert s.embed(torch.rand(1, 3, 32, 32), torch.arange(1), PromptGrid(grid=1, radius=4)).shape == (1, 1, 1, 32)


def test_bf16_close_to_fp32(scorer):
    low = CLIPScorer("salf-test-tiny", pretrained=None, device="cpu", precision="bf16", model=scorer.model)
    p = PromptGrid(grid=(2, 2), radius=5)
    img = torch.rand(2, 3, 32, 32)
    a, b = scorer.embed(img, torch.arange(2), p), low.embed(img, torch.arange(2), p)
    assert b.dtype == torch.float32
    assert F.cosine_similarity(a, b, dim=-1).min() > 0.98
    assert low.fingerprint()["precision"] == "bf16" and "weights_sha256" in low.fingerprint()["pretrained"]


def test_errors_are_helpful():
    with pytest.raises(InputError, match="Closest names"):
        CLIPScorer("ViT-B-61", pretrained=None)
    with pytest.raises(InputError, match="neither a known open_clip tag"):
        CLIPScorer("salf-test-tiny", pretrained="nonexistent-tag")
    with pytest.raises(InputError, match="precision"):
        CLIPScorer("salf-test-tiny", pretrained=None, precision="fp8")
    with pytest.raises(InputError, match="batch_size"):
        CLIPScorer("salf-test-tiny", pretrained=None, batch_size=0)


def test_bad_inputs(scorer):
    p = PromptGrid(grid=2, radius=3)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        scorer.embed(torch.rand(3, 32, 32), torch.arange(1), p)
    with pytest.raises(InputError, match="uint8"):
        scorer.embed(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.arange(1), p)
    with pytest.raises(InputError, match="PromptGrid"):
        scorer.embed(torch.rand(1, 3, 32, 32), torch.arange(1), (7, 7))
    with pytest.raises(InputError, match="single string"):
        scorer.text_embeddings("a cat")

