"""Concepts in videos: frame-by-frame concept maps, as a strip or an animated GIF (paper appendix E.2).

SALF-CBM applied to each frame of a sequence tracks concepts over time. `track_concepts`
runs the model over the frames in batches and keeps the upsampled maps of the chosen concepts;
`save_video_strip` and `save_video_gif` draw them over the frames with the concept
names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from salfcbm.errors import InputError, MissingExtraError
from salfcbm.explain.regions import upsample_maps
from salfcbm._utils.io import atomic_write
from salfcbm._utils.modes import module_device
from salfcbm.viz.display import denormalize, heatmap_to_rgb

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["ConceptTrack", "read_video_frames", "track_concepts", "save_video_strip", "save_video_gif"]

_PIL_ANIMATED = (".gif", ".png", ".apng", ".webp", ".tif", ".tiff")


def read_video_frames(path: str | os.PathLike, *, max_frames: int | None = None, stride: int = 1) -> torch.Tensor:
    """Read a video file as ``(T, 3, H, W)`` uint8 frames.

    Animated GIF/PNG/WebP/TIFF files are read with Pillow. Other files go through
    ``torchvision.io.read_video`` when this torchvision has it (it needs PyAV), else through
    ``torchcodec``; if neither is available the error says what to install.

    Args:
        path: the video file.
        max_frames: keep at most this many frames (after ``stride``).
        stride: keep every ``stride``-th frame.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/v.gif"
        >>> Image.new("RGB", (8, 8)).save(p, save_all=True, append_images=[Image.new("RGB", (8, 8), "red")])
        >>> read_video_frames(p).shape
        torch.Size([2, 3, 8, 8])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No video file at {str(path)!r}.")
    if not isinstance(stride, int) or stride < 1:
        raise InputError(f"`stride` must be a positive int, got {stride!r}.")
    if path.suffix.lower() in _PIL_ANIMATED:
        from PIL import ImageSequence

        from salfcbm.core.images import open_image

        with open_image(path) as im:  # a regular file within the pixel budget (per frame)
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    else:
        video = None
        try:
            from torchvision.io import read_video  # removed from recent torchvision releases
        except ImportError:
            read_video = None
        if read_video is not None:
            video, _, _ = read_video(str(path), pts_unit="sec", output_format="TCHW")
        else:
            try:
                from torchcodec.decoders import VideoDecoder
            except ImportError:
                raise MissingExtraError("torchcodec", "video", f"Reading the video file {path.name!r}") from None
            video = VideoDecoder(str(path))[:]
            video = getattr(video, "data", video)
    video = video[::stride]
    if max_frames is not None:
        video = video[:max_frames]
    if video.shape[0] == 0:
        raise InputError(f"{str(path)!r} holds no frames.")
    return video.contiguous()


@dataclass
class ConceptTrack:
    """Maps of chosen concepts over the frames of a video.

    Attributes:
        frames: ``(T, 3, H, W)`` frames in ``[0, 1]`` for display, at the model's input size.
        heatmaps: ``(T, K, H, W)`` concept maps upsampled bilinearly to the frames.
        concepts: the ``K`` concept names; ``concept_indices`` their indices.
        logits: ``(T, L)`` per-frame logits; ``predictions`` the predicted class names.
    """

    frames: torch.Tensor
    heatmaps: torch.Tensor
    concepts: list[str]
    concept_indices: list[int]
    logits: torch.Tensor
    predictions: list[str]

    def __len__(self) -> int:
        return self.frames.shape[0]

    def save_strip(self, path: str | os.PathLike, **kwargs: Any) -> Path:
        """See `save_video_strip`."""
        return save_video_strip(self, path, **kwargs)

    def save_gif(self, path: str | os.PathLike, **kwargs: Any) -> Path:
        """See `save_video_gif`."""
        return save_video_gif(self, path, **kwargs)


def _frames_to_batch(model: SALFCBM, frames: Any, preprocess: bool | None) -> tuple[torch.Tensor, bool]:
    """Frames as one tensor and whether they are views still to be normalised.

    Raw frames (a video file, uint8 tensors, PIL images, arrays, float frames with
    ``preprocess=True``) go through the model's one image entry point
    (`view`); other float tensors are backbone-ready.
    """
    if isinstance(frames, (str, os.PathLike)):
        return model.image_transform.view(read_video_frames(frames)), True
    if isinstance(frames, torch.Tensor):
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise InputError(f"Frames must be a (T, 3, H, W) tensor, got shape {tuple(frames.shape)}.")
        if not frames.is_floating_point() or preprocess:
            return model.image_transform.view(frames), True
        return frames, False
    if isinstance(frames, Sequence) and not isinstance(frames, str) and frames:
        raw = preprocess or any(not (isinstance(f, torch.Tensor) and f.is_floating_point()) for f in frames)
        if raw:
            return model.image_transform.view(list(frames)), True
        if len({tuple(f.shape) for f in frames}) > 1:
            raise InputError("Backbone-ready frames must all have the same size; pass [0, 1] frames with preprocess=True.")
        return torch.stack([f if f.dim() == 3 else f[0] for f in frames]), False
    raise InputError(
        f"`frames` must be a (T, 3, H, W) tensor, a list of images or a video path, got {type(frames).__name__}."
    )


def track_concepts(
    model: SALFCBM,
    frames: Any,
    concepts: int | str | Sequence[int | str],
    *,
    batch_size: int = 16,
    preprocess: bool | None = None,
    progress: bool = True,
) -> ConceptTrack:
    """Run SALF-CBM frame by frame and keep the maps of ``concepts`` (paper appendix E.2).

    Args:
        model: a `SALFCBM`.
        frames: a ``(T, 3, H, W)`` tensor, a list of images (PIL or tensors) or a video file path.
            Float tensors are taken as backbone-ready unless ``preprocess=True``; uint8 tensors, PIL
            images, arrays and files go through the model's image entry point (scaled, cropped with the
            backbone's data config and normalised, as `preprocess`).
        concepts: concept names or indices to follow.
        batch_size: frames per forward pass.
        preprocess: force (``True``) or skip (``False``) ``model.preprocess`` on float frames.
        progress: show a tqdm bar.

    Returns:
        A `ConceptTrack`.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["ball", "grass"],
        ...                  num_classes=2, backbone_weights=None)
        >>> track_concepts(m, torch.randn(3, 3, 64, 64), ["ball"], progress=False).heatmaps.shape
        torch.Size([3, 1, 64, 64])
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    names = [concepts] if isinstance(concepts, (int, str)) else list(concepts)
    if not names:
        raise InputError("`concepts` must name at least one concept to follow.")
    idx = [model.concept_index(c) for c in names]
    x, need_pre = _frames_to_batch(model, frames, preprocess)
    T = x.shape[0]
    device = module_device(model)
    dtype = model.bottleneck.weight.dtype
    sel = torch.tensor(idx, device=device)
    heat, logits, disp = [], [], []
    bar = tqdm(total=T, desc="frames", unit="frame", disable=not progress or T <= batch_size)
    try:
        with torch.no_grad():
            for s in range(0, T, batch_size):
                chunk = x[s : s + batch_size].to(device=device)
                if need_pre:  # views of the raw frames: normalise only (they are already cropped)
                    chunk = model.image_transform.normalize(chunk)
                chunk = chunk.to(dtype)
                out = model(chunk)
                size = tuple(chunk.shape[-2:])
                heat.append(upsample_maps(out.concept_maps_at(sel), size).cpu())  # the tracked maps only
                logits.append(out.logits.detach().float().cpu())
                disp.append(denormalize(chunk, model).cpu())
                bar.update(chunk.shape[0])
    finally:
        bar.close()
    logits_t = torch.cat(logits)
    cls = model.class_names
    return ConceptTrack(
        frames=torch.cat(disp),
        heatmaps=torch.cat(heat),
        concepts=[model.concepts[i] for i in idx],
        concept_indices=idx,
        logits=logits_t,
        predictions=[cls[int(i)] for i in logits_t.argmax(-1)],
    )


def _pick(track: ConceptTrack, concepts: Any) -> list[int]:
    if concepts is None:
        return list(range(len(track.concepts)))
    names = [concepts] if isinstance(concepts, (int, str)) else list(concepts)
    out = []
    for c in names:
        if isinstance(c, int) and not isinstance(c, bool):
            if c in track.concept_indices:
                out.append(track.concept_indices.index(c))
                continue
        elif c in track.concepts:
            out.append(track.concepts.index(c))
            continue
        raise InputError(f"Concept {c!r} was not tracked; tracked concepts: {track.concepts}. Pass it to track_concepts.")
    return out


def _tiles(track: ConceptTrack, cols: list[int], frames: list[int], alpha: float, cmap: str, normalize: str,
           show_frame: bool) -> list[list[Any]]:
    """PIL tiles [row][frame]: an optional row of plain frames, then one row per concept."""
    from PIL import Image, ImageDraw

    if normalize not in ("video", "frame"):
        raise InputError(f"`normalize` must be 'video' (one colour scale per concept) or 'frame', got {normalize!r}.")
    if not 0 <= alpha <= 1:
        raise InputError(f"`alpha` must be in [0, 1], got {alpha!r}.")
    imgs = track.frames.permute(0, 2, 3, 1).numpy()
    rows: list[list[Any]] = []

    def label(im: Any, text: str) -> Any:
        d = ImageDraw.Draw(im)
        box = d.textbbox((3, 2), text)
        d.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        d.text((3, 2), text, fill=(255, 255, 255))
        return im

    if show_frame:
        rows.append([label(Image.fromarray((imgs[t] * 255).round().astype(np.uint8)), f"t={t} {track.predictions[t]}") for t in frames])
    for k in cols:
        h = track.heatmaps[:, k]
        lo, hi = (float(h[frames].min()), float(h[frames].max())) if normalize == "video" else (None, None)
        row = []
        for t in frames:
            rgb = heatmap_to_rgb(h[t], cmap=cmap, vmin=lo, vmax=hi)
            blend = (1 - alpha) * imgs[t] + alpha * rgb
            row.append(label(Image.fromarray((np.clip(blend, 0, 1) * 255).round().astype(np.uint8)), track.concepts[k]))
        rows.append(row)
    return rows


def _frame_ids(T: int, max_frames: int | None, every: int) -> list[int]:
    if not isinstance(every, int) or every < 1:
        raise InputError(f"`every` must be a positive int, got {every!r}.")
    ids = list(range(0, T, every))
    if max_frames is not None:
        if not isinstance(max_frames, int) or max_frames < 1:
            raise InputError(f"`max_frames` must be a positive int or None, got {max_frames!r}.")
        if len(ids) > max_frames:
            ids = [ids[round(i * (len(ids) - 1) / (max_frames - 1))] for i in range(max_frames)] if max_frames > 1 else ids[:1]
    return ids


def save_video_strip(
    track: ConceptTrack,
    path: str | os.PathLike,
    *,
    concepts: Any = None,
    max_frames: int | None = 8,
    every: int = 1,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalize: str = "video",
    show_frames: bool = True,
) -> Path:
    """Save a PNG strip: frames left to right, a row of plain frames, then one row per concept.

    Args:
        track: from `track_concepts`.
        path: the image file (format from the suffix; PNG recommended).
        concepts: which tracked concepts to draw (default all).
        max_frames: at most this many frames, evenly spaced (``None``: all).
        every: take every ``every``-th frame before ``max_frames``.
        alpha: overlay opacity.
        cmap: matplotlib colormap of the heatmaps.
        normalize: ``"video"`` (one colour scale per concept over the shown frames, so strengths
            compare over time) or ``"frame"``.
        show_frames: add the row of plain frames (with frame index and prediction).

    Examples:
        >>> import tempfile, timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["ball"],
        ...                  num_classes=2, backbone_weights=None)
        >>> t = track_concepts(m, torch.randn(3, 3, 64, 64), "ball", progress=False)
        >>> save_video_strip(t, tempfile.mkdtemp() + "/strip.png").suffix
        '.png'
    """
    from PIL import Image

    rows = _tiles(track, _pick(track, concepts), _frame_ids(len(track), max_frames, every), alpha, cmap, normalize, show_frames)
    tw, th = rows[0][0].size
    sheet = Image.new("RGB", (tw * len(rows[0]) + 2 * (len(rows[0]) - 1), th * len(rows) + 2 * (len(rows) - 1)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * (tw + 2), r * (th + 2)))
    fmt = Path(path).suffix.lstrip(".").upper() or "PNG"
    fmt = {"JPG": "JPEG"}.get(fmt, fmt)
    return atomic_write(path, lambda tmp: sheet.save(tmp, format=fmt))


def save_video_gif(
    track: ConceptTrack,
    path: str | os.PathLike,
    *,
    concepts: Any = None,
    fps: float = 4.0,
    every: int = 1,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalize: str = "video",
    show_frames: bool = False,
    loop: int = 0,
) -> Path:
    """Save an animated GIF that follows the concepts: each GIF frame shows one overlay per concept side by side.

    Args:
        track: from `track_concepts`.
        path: the ``.gif`` file.
        concepts: which tracked concepts to show (default all).
        fps: frames per second.
        every: keep every ``every``-th frame.
        alpha: overlay opacity, as in `save_video_strip`.
        cmap: colormap, as in `save_video_strip`.
        normalize: colour scale per video or per frame, as in `save_video_strip`.
        show_frames: put the plain frame first in each GIF frame.
        loop: GIF loop count (0 = forever).

    Examples:
        >>> import tempfile, timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["ball"],
        ...                  num_classes=2, backbone_weights=None)
        >>> t = track_concepts(m, torch.randn(3, 3, 64, 64), "ball", progress=False)
        >>> save_video_gif(t, tempfile.mkdtemp() + "/t.gif").suffix
        '.gif'
    """
    from PIL import Image

    if not isinstance(fps, (int, float)) or fps <= 0:
        raise InputError(f"`fps` must be a positive number, got {fps!r}.")
    ids = _frame_ids(len(track), None, every)
    rows = _tiles(track, _pick(track, concepts), ids, alpha, cmap, normalize, show_frames)
    tw, th = rows[0][0].size
    out = []
    for j in range(len(ids)):
        canvas = Image.new("RGB", (tw * len(rows) + 2 * (len(rows) - 1), th), "white")
        for r, row in enumerate(rows):
            canvas.paste(row[j], (r * (tw + 2), 0))
        out.append(canvas)
    duration = max(1, int(round(1000 / fps)))

    def write(tmp: str) -> None:
        out[0].save(tmp, format="GIF", save_all=True, append_images=out[1:], duration=duration, loop=loop, disposal=1)

    return atomic_write(path, write)
