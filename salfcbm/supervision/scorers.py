"""Concept scorers: what turns prompted images into local concept similarities.

Paper section 3.2: ``P[n, m, h, w] = cos(E_I(x_n^(h,w)), E_T(t_m))``. A scorer
splits that in two so the expensive half can be stored once and reused for any
concept list:

* `ConceptScorer.embed` runs the image side for every prompt of a batch
  and returns ``(B, Hg, Wg, D)`` vectors;
* `ConceptScorer.similarity` maps those vectors to ``(..., M)`` concept
  similarities (for CLIP: one matmul with the normalised text embeddings).

`ConceptScorer` is a protocol: CLIP (`CLIPScorer`) is the default
implementation, and any object with these four methods (a ground-truth scorer
for synthetic data, a different vision-language model) can be plugged in, by
name too: `register_scorer` and `scorer_from_name` (`salfcbm.supervision.scorer_registry`,
importable from here) build one from the CLI's ``--scorer`` strings.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from salfcbm._utils.io import sha256_file
from salfcbm._utils.tensors import PRECISIONS, check_precision
from salfcbm.errors import AlignmentError, InputError
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.scorer_registry import (
    CLIP_PREFIXES,
    list_scorers,
    register_scorer,
    scorer_from_name,
    unregister_scorer,
)

__all__ = [
    "CLIPScorer",
    "ConceptScorer",
    "DatasetBoundScorer",
    "UnpromptedScorer",
    "clip_scorer",
    "list_scorers",
    "register_scorer",
    "scorer_from_name",
    "unregister_scorer",
]



@runtime_checkable
class ConceptScorer(Protocol):
    """What salfcbm needs from a concept scorer (paper 3.2).

    Examples:
        >>> isinstance(object(), ConceptScorer)
        False
    """

    def fingerprint(self) -> dict:
        """JSON-able dict of everything that determines `embed`'s output."""
        ...

    def embed(self, images: torch.Tensor, indices: torch.Tensor, prompts: PromptGrid) -> torch.Tensor:
        """``(B, 3, H, W)`` float images in ``[0, 1]`` (not normalised, any size) and
        their ``(B,)`` indices -> ``(B, Hg, Wg, D)``, one vector per prompted image.

        ``indices`` are the images' positions ``0 .. len(dataset) - 1`` in the dataset being
        stored (the ``dataset`` of `compute_similarity_store`); they
        restart at 0 for every split. A scorer should read the pixels it is given. A scorer
        that reads data *by index* instead (like
        `GroundTruthScorer`) must know which dataset the indices
        refer to: it puts that dataset's fingerprint under ``"dataset"`` in
        `fingerprint` (a store of another dataset is then refused), and may offer
        ``for_dataset(dataset) -> scorer``, which `compute_similarity_store`
        calls so one scorer serves every split.
        """
        ...

    def similarity(self, embeddings: torch.Tensor, concepts: Sequence[str]) -> torch.Tensor:
        """``(..., D)`` embeddings -> ``(..., M)`` similarities to ``concepts``."""
        ...

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``(M, D)`` L2-normalised text embeddings; may raise ``NotImplementedError``."""
        ...

    # Optional capabilities, each a protocol of its own below: `UnpromptedScorer` (``embed_images``)
    # and `DatasetBoundScorer` (``for_dataset``). Test for them with ``isinstance``.


@runtime_checkable
class UnpromptedScorer(Protocol):
    """A scorer that also embeds whole images, without a prompt: ``embed_images(images, indices) -> (B, D)``.

    With it, the concept filter of `salfcbm.fit` measures "never fires" on whole images as LF-CBM
    does; without it, on the best prompted cell of each image. `CLIPScorer` is one.

    Examples:
        >>> isinstance(CLIPScorer.__new__(CLIPScorer), UnpromptedScorer), isinstance(object(), UnpromptedScorer)
        (True, False)
    """

    def embed_images(self, images: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` images in ``[0, 1]`` -> ``(B, D)`` L2-normalised unprompted embeddings."""
        ...


@runtime_checkable
class DatasetBoundScorer(Protocol):
    """A scorer that reads data by index and can be rebound to another split: ``for_dataset(dataset) -> scorer``.

    `compute_similarity_store` asks such a scorer for a copy bound to the dataset it stores, so one
    scorer serves every split (the demo world's ground-truth scorer is one).

    Examples:
        >>> isinstance(CLIPScorer.__new__(CLIPScorer), DatasetBoundScorer)
        False
    """

    def for_dataset(self, dataset: Any) -> ConceptScorer:
        """A scorer like this one whose ``indices`` refer to ``dataset``."""
        ...


def _state_dict_sha256(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _resize_shortest(images: torch.Tensor, size: tuple[int, int], interpolation: str, mode: str, fill: float) -> torch.Tensor:
    """open_clip's eval transform (Resize + CenterCrop / pad) as batched tensor ops."""
    h, w = images.shape[-2:]
    th, tw = size
    if mode == "squash":
        new_h, new_w = th, tw
    elif mode == "longest":
        scale = min(th / h, tw / w)
        new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    else:  # shortest, as torchvision Resize(int) / timm ResizeKeepRatio
        if th == tw:
            short, long = (h, w) if h <= w else (w, h)
            new_short, new_long = th, int(th * long / short)
            new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
        else:
            scale = max(th / h, tw / w)
            new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (new_h, new_w) != (h, w):
        antialias = interpolation in ("bilinear", "bicubic")
        images = F.interpolate(
            images, size=(new_h, new_w), mode=interpolation, align_corners=False if antialias else None, antialias=antialias
        )
        images = images.clamp_(0.0, 1.0)
    # center crop, padding with ``fill`` where the image is smaller than the target
    if new_h < th or new_w < tw:
        pad_h, pad_w = max(th - new_h, 0), max(tw - new_w, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
        new_h, new_w = images.shape[-2:]
    top = int(round((new_h - th) / 2.0))
    left = int(round((new_w - tw) / 2.0))
    return images[..., top : top + th, left : left + tw]


class CLIPScorer:
    """CLIP (open_clip) as the concept scorer, with batched visual prompting (paper 3.2).

    The image side resizes the image to CLIP's resolution with the model's
    interpolation (``model.visual.preprocess_cfg``) and normalises it with the
    model's mean/std, as tensor ops; it draws the red circles *after* resizing (at
    `PromptGrid.radius_px` of CLIP's resolution: ``r = 32`` at 224 px, as in the
    paper) and encodes ``batch_size`` prompted images per forward pass. Embeddings
    are L2-normalised ``encode_image`` outputs; similarities are cosine.

    It never crops: the image it gets is the region the prompt grid covers, the
    same region the backbone sees (``fit`` passes the model's views,
    `salfcbm.core.images.ImageTransform.view`). An image whose aspect ratio differs
    from CLIP's input raises `AlignmentError`, because
    cropping it (open_clip's own transform) would move every prompt off the
    backbone's grid cell.

    Deviation from Algorithm 1: the circle is drawn on the resized image instead
    of the original, and the anti-aliased bicubic resize is torch's rather than
    PIL's, so pixels differ slightly from a PIL pipeline (well under the noise
    between CLIP checkpoints).

    Args:
        model_name: an open_clip model name (``"ViT-B-16"``), or ``"hf-hub:org/repo"``
            / ``"local-dir:/path"``. For schema names ``pretrained`` is ignored.
        pretrained: an open_clip pretrained tag (``"openai"``), a path to a local
            checkpoint file, or ``None`` for random init.
        device: where the model runs; default CUDA if available, else CPU.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast around the
            fp32 model).
        batch_size: prompted images per ``encode_image`` call (and texts per
            ``encode_text`` call).
        cache_dir: forwarded to open_clip for downloads.
        model: an already built open_clip model to use instead of building one
            (``model_name`` then only labels the fingerprint, ``pretrained`` is
            ignored and the fingerprint holds a sha256 of the model's weights).

    Examples:
        >>> import open_clip, torch
        >>> open_clip.factory._MODEL_CONFIGS["doc-tiny"] = dict(embed_dim=16,
        ...     vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=8),
        ...     text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
        >>> scorer = CLIPScorer("doc-tiny", pretrained=None, device="cpu")
        >>> emb = scorer.embed(torch.rand(2, 3, 48, 48), torch.arange(2), PromptGrid((2, 2), radius=6))
        >>> emb.shape, scorer.similarity(emb, ["a cat", "a dog", "sky"]).shape
        (torch.Size([2, 2, 2, 16]), torch.Size([2, 2, 2, 3]))
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str | os.PathLike | None = "openai",
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        batch_size: int = 256,
        cache_dir: str | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        try:
            import open_clip
        except ImportError as e:  # pragma: no cover - a hard dependency
            raise ImportError("CLIPScorer needs open_clip_torch: pip install open_clip_torch") from e
        if not isinstance(model_name, str) or not model_name:
            raise InputError(f"model_name must be a non-empty string; got {model_name!r}.")
        check_precision(precision)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int; got {batch_size!r}.")
        self.model_name = model_name
        self.precision = precision
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        schema = model_name.split(":", 1)[0] if ":" in model_name else None
        if schema is not None and schema not in ("hf-hub", "local-dir"):
            raise InputError(f"Unknown model_name schema {schema!r} in {model_name!r}; expected 'hf-hub:' or 'local-dir:'.")
        if schema is not None:
            pretrained = None
        pretrained = os.fspath(pretrained) if pretrained is not None else None
        self._pretrained_fp: Any = None
        given_model = model is not None
        if model is None:
            if schema is None:
                if model_name not in open_clip.list_models():
                    from salfcbm.errors import closest

                    near = closest(model_name, open_clip.list_models())
                    raise InputError(
                        f"open_clip has no model {model_name!r}."
                        + (f" Closest names: {', '.join(map(repr, near))}." if near else "")
                        + " See open_clip.list_models(), or use 'hf-hub:org/repo' / 'local-dir:/path'."
                    )
                if pretrained is not None and not os.path.isfile(pretrained):
                    tags = open_clip.list_pretrained_tags_by_model(model_name)
                    if pretrained not in tags:
                        raise InputError(
                            f"pretrained={pretrained!r} is neither a known open_clip tag for {model_name!r} "
                            f"({', '.join(map(repr, tags)) or 'none'}) nor an existing checkpoint file. "
                            "Pass a tag, a file path, or None for random init."
                        )
            model = open_clip.create_model(model_name, pretrained=pretrained, device=self.device, cache_dir=cache_dir)
        else:
            model = model.to(self.device)
        self.model = model.eval()
        self.model.requires_grad_(False)
        if given_model:
            self._pretrained_fp = {"weights_sha256": _state_dict_sha256(self.model)}
        elif pretrained is None and schema is None:
            self._pretrained_fp = {"random_init_sha256": _state_dict_sha256(self.model)}
        elif schema == "local-dir":
            d = Path(model_name.split(":", 1)[1])
            files = sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []
            # the files alone do not identify the model: a folder without weights gives random ones
            self._pretrained_fp = {"local_dir_sha256": {p.name: sha256_file(p) for p in files},
                                   "weights_sha256": _state_dict_sha256(self.model)}
        elif schema == "hf-hub":
            self._pretrained_fp = {"hf_hub": model_name.split(":", 1)[1], "weights_sha256": _state_dict_sha256(self.model)}
        elif os.path.isfile(pretrained):
            self._pretrained_fp = {"file": os.path.basename(pretrained), "sha256": sha256_file(pretrained)}
        else:
            self._pretrained_fp = {"tag": pretrained}

        visual = getattr(self.model, "visual", self.model)
        cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size", getattr(visual, "image_size", 224))
        if isinstance(size, int):
            size = (size, size)
        self.image_size: tuple[int, int] = (int(size[-2]), int(size[-1]))
        mean = cfg.get("mean", getattr(visual, "image_mean", None)) or open_clip.OPENAI_DATASET_MEAN
        std = cfg.get("std", getattr(visual, "image_std", None)) or open_clip.OPENAI_DATASET_STD
        self.mean = tuple(float(m) for m in (mean if isinstance(mean, (list, tuple)) else (mean,) * 3))
        self.std = tuple(float(s) for s in (std if isinstance(std, (list, tuple)) else (std,) * 3))
        interp = cfg.get("interpolation") or "bicubic"
        self.interpolation = "bilinear" if interp == "bilinear" else "bicubic"
        self.resize_mode = cfg.get("resize_mode") or "shortest"
        self.fill_color = float(cfg.get("fill_color", 0) or 0) / 255.0
        self._tokenizer = None
        self._text_cache: dict[str, torch.Tensor] = {}
        self._list_cache: collections.OrderedDict[tuple[str, ...], torch.Tensor] = collections.OrderedDict()

    # -- protocol -----------------------------------------------------------------
    def fingerprint(self) -> dict:
        """Everything that determines `embed`'s output, JSON-able: model name,
        pretrained tag / checkpoint sha256 / random-init weights sha256, input size,
        mean/std, interpolation, resize mode and precision."""
        return {
            "scorer": "CLIPScorer",
            "model_name": self.model_name,
            "pretrained": self._pretrained_fp,
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "precision": self.precision,
            # PromptGrid.radius is in pixels of a 224 px image; at other resolutions the drawn
            # radius changed with that unit, so older stores must not match (224: unchanged)
            **({"prompt_unit": "reference_size"} if min(self.image_size) != 224 else {}),
        }

    @property
    def embedding_dim(self) -> int:
        """``D``, the size of the image (and text) embeddings."""
        if getattr(self, "_dim", None) is None:
            dim = getattr(getattr(self.model, "visual", None), "output_dim", None)
            if not isinstance(dim, int):
                with torch.inference_mode():
                    dim = int(self.encode(self._normalise(torch.zeros(1, 3, *self.image_size, device=self.device))).shape[-1])
            self._dim = dim
        return self._dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to the model's resolution (values stay in ``[0, 1]``, not normalised).

        Raises:
            AlignmentError: the images' aspect ratio differs from the model's input, so they
                would have to be cropped and the prompts would not match the backbone's cells.
        """
        _check_images(images)
        h, w = images.shape[-2:]
        th, tw = self.image_size
        if abs(h * tw - w * th) > max(th, tw, h, w):  # more than about one pixel would be cropped
            raise AlignmentError(
                f"The CLIP scorer got {h}x{w} images but its input is {th}x{tw}: it would have to crop them, and "
                "the prompt grid would then cover another region than the backbone's concept cells. Pass the "
                "model's views (fit does; or salfcbm.core.images.align_dataset(data, model.image_transform)), whose "
                "shape matches, or use a backbone input with the same aspect ratio."
            )
        images = images.to(self.device, torch.float32, non_blocking=True)
        return _resize_shortest(images, self.image_size, self.interpolation, self.resize_mode, self.fill_color)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(-1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(-1, 3, 1, 1)
        return (images - mean) / std

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``encode_image`` of already preprocessed, normalised images, in chunks."""
        outs = []
        with self._autocast():
            for start in range(0, images.shape[0], self.batch_size):
                feats = self.model.encode_image(images[start : start + self.batch_size])
                outs.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(outs)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, indices: torch.Tensor, prompts: PromptGrid) -> torch.Tensor:
        """Embed every prompted copy of every image: ``(B, 3, H, W)`` -> ``(B, Hg, Wg, D)``.

        Prompted copies are built ``batch_size`` at a time (bounded memory) with one
        ``torch.where`` each: the images are normalised once and the circle colour
        is normalised with the same mean/std, which equals drawing then
        normalising.
        """
        if not isinstance(prompts, PromptGrid):
            raise InputError(f"prompts must be a PromptGrid; got {type(prompts).__name__}.")
        x = self._normalise(self.preprocess(images))
        b = x.shape[0]
        hg, wg = prompts.grid
        p = hg * wg
        masks = prompts.ring_masks(*self.image_size, device=x.device)  # (P, H, W)
        color = self._normalise(prompts.color_tensor(x.device).view(1, 3, 1, 1))  # (1, 3, 1, 1)
        total = b * p
        outs = []
        with self._autocast():
            for start in range(0, total, self.batch_size):
                flat = torch.arange(start, min(start + self.batch_size, total), device=x.device)
                prompted = torch.where(masks[flat % p][:, None], color, x[flat // p])
                feats = self.model.encode_image(prompted)
                outs.append(F.normalize(feats.float(), dim=-1))
        emb = torch.cat(outs)
        return emb.view(b, hg, wg, emb.shape[-1])

    @torch.inference_mode()
    def embed_images(self, images: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Unprompted image embeddings ``(B, D)``: what LF-CBM scores its concepts with.

        Used by the "never fires" concept filter (LF-CBM's top-5 cutoff on the training
        images, without red circles). ``indices`` is accepted for the protocol and ignored.
        """
        return self.encode(self._normalise(self.preprocess(images)))

    def _get_tokenizer(self):
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._tokenizer

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``(M, D)`` L2-normalised text embeddings (fp32, on ``self.device``), cached.

        Each distinct text is encoded once per scorer; the stacked matrix of the
        last few concept lists is cached too, so repeated ``similarity`` calls with
        the same list cost one matmul.
        """
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of strings, not a single string; wrap it in a list.")
        key = tuple(texts)
        if not all(isinstance(t, str) for t in key):
            raise InputError("texts must all be strings.")
        if key in self._list_cache:
            self._list_cache.move_to_end(key)
            return self._list_cache[key]
        missing = list(dict.fromkeys(t for t in key if t not in self._text_cache))
        if missing:
            tok = self._get_tokenizer()
            with self._autocast():
                for start in range(0, len(missing), self.batch_size):
                    chunk = missing[start : start + self.batch_size]
                    feats = self.model.encode_text(tok(chunk).to(self.device))
                    feats = F.normalize(feats.float(), dim=-1)
                    for t, f in zip(chunk, feats):
                        self._text_cache[t] = f.clone()
        if not key:
            dim = getattr(self.model, "embed_dim", None) or self._probe_dim()
            out = torch.zeros(0, dim, device=self.device)
        else:
            out = torch.stack([self._text_cache[t] for t in key])
        self._list_cache[key] = out
        while len(self._list_cache) > 4:
            self._list_cache.popitem(last=False)
        return out

    def _probe_dim(self) -> int:
        tok = self._get_tokenizer()
        return int(self.model.encode_text(tok(["a"]).to(self.device)).shape[-1])

    def similarity(self, embeddings: torch.Tensor, concepts: Sequence[str]) -> torch.Tensor:
        """Cosine similarities ``(..., D)`` -> ``(..., M)`` (fp32), one matmul."""
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim < 1:
            raise InputError(f"embeddings must be a (..., D) tensor; got {type(embeddings).__name__}.")
        text = self.text_embeddings(concepts)
        if embeddings.shape[-1] != text.shape[-1]:
            raise InputError(
                f"embeddings have D={embeddings.shape[-1]} but this scorer's text embeddings have D={text.shape[-1]}; "
                "were they computed by a different model?"
            )
        emb = F.normalize(embeddings.to(text.device, torch.float32), dim=-1)
        return emb @ text.T

    def __repr__(self) -> str:
        return (
            f"CLIPScorer(model_name={self.model_name!r}, pretrained={self._pretrained_fp!r}, "
            f"image_size={self.image_size}, precision={self.precision!r}, device={str(self.device)!r})"
        )


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a (B, 3, H, W) tensor of floats in [0, 1]; got {shape}.")
    if not images.is_floating_point():
        raise InputError(f"images must be float in [0, 1]; got dtype {images.dtype}. Divide uint8 images by 255.")


def clip_scorer(spec: str | None = None, **kwargs: Any) -> CLIPScorer:
    """The ``"clip"`` factory of `scorer_from_name`: ``spec`` is an open_clip model name (default ``"ViT-B-16"``),
    ``hf-hub:ORG/REPO`` or ``local-dir:PATH``, optionally ``MODEL/TAG`` for ``pretrained=TAG``
    (``none``: random init); ``kwargs`` go to `CLIPScorer`."""
    model = spec or "ViT-B-16"
    if "/" in model and not model.startswith(tuple(p + ":" for p in CLIP_PREFIXES)):
        model, tag = model.split("/", 1)
        if "pretrained" in kwargs:
            raise InputError(f"The scorer 'clip:{spec}' names its pretrained tag {tag!r} and pretrained= is given too; "
                             "give it once.")
        kwargs["pretrained"] = None if tag in ("", "none") else tag
    return CLIPScorer(model, **kwargs)
