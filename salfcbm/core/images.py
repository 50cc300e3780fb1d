"""The one image entry point: raw images in, the backbone's view of them out.

Every path of salfcbm that takes images (``fit``, ``explain``, the CLI, video, the
image folder dataset, the scorer's supervision) goes through two steps:

1. **Reading** (`load_images`): tensors, NumPy arrays, PIL images, file paths or
   lists of them become float32 ``(B, 3, H, W)`` images in ``[0, 1]``. The rule:

   * ``uint8`` is divided by 255 and ``uint16`` by 65535;
   * a float image must already be in ``[0, 1]``: values above 1 (a float image in
     0..255) or below 0 (an already normalised image) raise `ImageInputError`,
     and so do NaN or infinite pixels;
   * any other dtype (``bool``, signed integers) raises;
   * tensors are channels-first (``(3, H, W)`` or ``(B, 3, H, W)``); a channels-last
     tensor is refused with the ``permute`` that fixes it. NumPy arrays follow the
     image convention, channels-last (``(H, W)``, ``(H, W, C)``, ``(B, H, W, C)``);
   * grayscale is repeated to three channels and the alpha channel of RGBA is
     dropped (as PIL's ``convert("RGB")`` does), each with an
     `ImageConversionWarning`.

2. **Geometry** (`ImageTransform`): the backbone's own evaluation transform
   (timm ``resolve_data_config``, torchvision weights' ``transforms()``): resize the
   shorter side to ``size / crop_pct`` with the model's interpolation, centre-crop
   ``size``, normalise with the model's mean and std. It is recorded in the model's
   ``config.json``. The cropped, un-normalised image (`ImageTransform.view`) is
   what the prompt grid is laid over *and* what the backbone sees, so grid cell
   ``(i, j)`` is the same region of the original image for the scorer and the
   concept maps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from salfcbm.core.image_io import check_image_pixels, is_loaded, load_images, max_image_pixels, open_image
from salfcbm.errors import AlignmentError, ImageConversionWarning, ImageInputError, ImageTooLargeError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.config import ModelConfig

__all__ = [
    "ImageTransform",
    "load_images",
    "open_image",
    "check_image_pixels",
    "max_image_pixels",
    "MAX_ASPECT_RATIO",
    "MAX_RESIZE_PIXELS",
    "resolve_transform",
    "AlignedDataset",
    "align_dataset",
]

CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


# ----------------------------------------------------------------------------- budgets
MAX_ASPECT_RATIO = 100.0
"""The longest side an image may have, in multiples of its shortest, where the crop mode resizes the
shorter side to the input size (``"center"``): a 1 x 8000 px image would otherwise be resized to
``size x 8000 * size`` before the crop (0.5 GB at 64 px). Raise it (``salfcbm.core.images.MAX_ASPECT_RATIO
= 1000``) for such images, or pass them already cropped."""

MAX_RESIZE_PIXELS = 1 << 26
"""The most pixels an image may have once resized, before the crop (67 M pixels, 0.8 GB as float32 RGB)."""

# ----------------------------------------------------------------------------- geometry
def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    try:
        h, w = (int(a) for a in v)
    except (TypeError, ValueError):
        raise ImageInputError(f"`{name}` must be an int or a pair of ints (H, W); got {v!r}.") from None
    if h < 1 or w < 1:
        raise ImageInputError(f"`{name}` must be positive; got {v!r}.")
    return h, w


@dataclass(frozen=True)
class ImageTransform:
    """The backbone's evaluation geometry and normalisation (one per model).

    Args:
        size: ``(H, W)`` the backbone's input (the crop).
        crop_pct: the crop covers this fraction of the resized image: the shorter side is
            first resized to ``floor(size / crop_pct)`` (timm's rule; torchvision's
            ``resize_size=256, crop_size=224`` is ``crop_pct=0.875``).
        crop_mode: ``"center"`` (keep the aspect ratio, crop the centre), ``"squash"``
            (resize each side, then crop) or ``"border"`` (fit the longer side, pad with
            the mean colour), as in timm.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (antialiased).
        mean: per-channel mean of the normalisation.
        std: per-channel std of the normalisation.

    Examples:
        >>> import torch
        >>> t = ImageTransform(size=(4, 4), crop_pct=1.0)
        >>> t.view(torch.rand(1, 3, 4, 8)).shape     # centre 4x4 of a 4x8 image
        torch.Size([1, 3, 4, 4])
    """

    size: tuple[int, int] = (224, 224)
    crop_pct: float = 1.0
    crop_mode: str = "center"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size, "input_size"))
        cp = self.crop_pct
        if isinstance(cp, bool) or not isinstance(cp, (int, float)) or not (0 < cp <= 1) or math.isnan(cp):
            raise ImageInputError(f"`crop_pct` must be a number in (0, 1]; got {cp!r}.")
        object.__setattr__(self, "crop_pct", float(cp))
        if self.crop_mode not in CROP_MODES:
            raise ImageInputError(f"`crop_mode` must be one of {CROP_MODES}; got {self.crop_mode!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ImageInputError(f"`interpolation` must be one of {INTERPOLATIONS}; got {self.interpolation!r}.")
        for name in ("mean", "std"):
            v = tuple(float(a) for a in getattr(self, name))
            if len(v) != 3 or not all(math.isfinite(a) for a in v) or (name == "std" and min(v) <= 0):
                raise ImageInputError(f"`input_{name}` must be three finite numbers{' > 0' if name == 'std' else ''}; got {v}.")
            object.__setattr__(self, name, v)

    # -- config round trip (the keys of SALFCBM's config.json)
    def to_config(self) -> dict[str, Any]:
        """The ``config.json`` keys that record this transform."""
        return {
            "input_size": list(self.size),
            "input_crop_pct": self.crop_pct,
            "input_crop_mode": self.crop_mode,
            "input_interpolation": self.interpolation,
            "input_mean": list(self.mean),
            "input_std": list(self.std),
        }

    @classmethod
    def from_config(cls, config: ModelConfig) -> ImageTransform:
        """Rebuild from a model's config (the fields `to_config` writes)."""
        return cls(
            size=tuple(config.input_size),
            crop_pct=config.input_crop_pct,
            crop_mode=config.input_crop_mode,
            interpolation=config.input_interpolation,
            mean=tuple(config.input_mean),
            std=tuple(config.input_std),
        )

    # -- geometry
    def is_identity_for(self, height: int, width: int) -> bool:
        """Whether `view` returns an ``H x W`` image unchanged."""
        return self.crop_pct == 1.0 and (int(height), int(width)) == self.size

    def scale_size(self) -> tuple[int, int]:
        """The size the crop is taken from: ``floor(size / crop_pct)`` (timm)."""
        return tuple(math.floor(s / self.crop_pct + 1e-6) for s in self.size)  # type: ignore[return-value]

    def view(self, images: Any) -> torch.Tensor:
        """What the backbone sees, before normalisation: ``(B, 3, H, W)`` float in ``[0, 1]``.

        Accepts anything `load_images` reads; images of different sizes are each
        transformed and then stacked.
        """
        batches = images if is_loaded(images) else load_images(images, check=self.check_size)
        out = [self._view_batch(b) for b in batches]
        return out[0] if len(out) == 1 else torch.cat(out)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an ``H x W`` image is resized to before the crop (or the pad)."""
        h, w = int(height), int(width)
        sh, sw = self.scale_size()
        if self.crop_mode == "center" and sh == sw:  # torchvision Resize(int): the longer side int(size * long / short)
            if min(h, w) == sh:
                return h, w
            return (sh, int(sh * w / h)) if h <= w else (int(sh * h / w), sh)
        if self.crop_mode == "squash":
            ry, rx = sh / h, sw / w
        else:
            ry = rx = min(sh / h, sw / w) if self.crop_mode == "border" else max(sh / h, sw / w)
        return max(1, round(h * ry)), max(1, round(w * rx))

    def check_size(self, height: int, width: int) -> None:
        """Refuse an ``H x W`` image whose resize before the crop would blow up (called before decoding).

        In ``"center"`` mode the shorter side is resized to the input size, so a thin image
        (1 x 8000 px, a 102-byte PNG) becomes a huge one before the crop. Refused: an aspect
        ratio over `MAX_ASPECT_RATIO` in that mode, or a resized image over `MAX_RESIZE_PIXELS`.

        Raises:
            ImageTooLargeError: naming the sizes, the limit and how to raise it.
        """
        h, w = int(height), int(width)
        if h < 1 or w < 1 or self.is_identity_for(h, w):
            return
        rh, rw = self.resized_size(h, w)
        ratio = max(h, w) / min(h, w)
        if self.crop_mode == "center" and ratio > MAX_ASPECT_RATIO and (rh, rw) != (h, w):
            raise ImageTooLargeError(
                f"An image of {h}x{w} px (height x width) has an aspect ratio of {ratio:,.0f}:1, over the limit of "
                f"{MAX_ASPECT_RATIO:g}:1 (salfcbm.core.images.MAX_ASPECT_RATIO): resizing its shorter side to "
                f"{self.scale_size()[0]} px would make it {rh}x{rw} px before the crop. Crop it to a less extreme "
                "aspect ratio first, or raise the limit (salfcbm.core.images.MAX_ASPECT_RATIO = ...)."
            )
        if rh * rw > MAX_RESIZE_PIXELS:
            raise ImageTooLargeError(
                f"An image of {h}x{w} px (height x width) would be resized to {rh}x{rw} px ({rh * rw / 1e6:,.0f} M "
                f"pixels) before the crop, over the limit of {MAX_RESIZE_PIXELS:,} (salfcbm.core.images."
                "MAX_RESIZE_PIXELS). Crop or downscale it first, or raise the limit."
            )

    def _view_batch(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.is_identity_for(h, w):
            return x
        self.check_size(h, w)
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        mode = InterpolationMode(self.interpolation)
        sh, sw = self.scale_size()
        antialias = self.interpolation != "nearest"
        if self.crop_mode == "center" and sh == sw:
            if min(h, w) != sh:  # torchvision Resize(int): the shorter side, the longer by int(size * long / short)
                x = TF.resize(x, [sh], interpolation=mode, antialias=antialias).clamp_(0.0, 1.0)
        else:
            if self.crop_mode == "squash":
                ry, rx = sh / h, sw / w
            else:  # "border" fits the longer side, "center" covers the target (timm ResizeKeepRatio)
                ry = rx = min(sh / h, sw / w) if self.crop_mode == "border" else max(sh / h, sw / w)
            new = [max(1, round(h * ry)), max(1, round(w * rx))]
            if new != [h, w]:
                x = TF.resize(x, new, interpolation=mode, antialias=antialias).clamp_(0.0, 1.0)
        return self._crop_or_pad(x)

    def _crop_or_pad(self, x: torch.Tensor) -> torch.Tensor:
        th, tw = self.size
        h, w = x.shape[-2:]
        if h < th or w < tw:  # pad (with the mean colour, as timm's CenterCropOrPad)
            ph, pw = max(th - h, 0), max(tw - w, 0)
            canvas = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            canvas = canvas.expand(x.shape[0], 3, h + ph, w + pw).clone()
            canvas[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w] = x
            x, h, w = canvas, h + ph, w + pw
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return x[..., top : top + th, left : left + tw]

    def view_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The region ``(x0, y0, x1, y1)`` of an ``H x W`` original that the view shows
        (in original pixels; may extend past the image in ``"border"`` mode)."""
        sh, sw = self.scale_size()
        th, tw = self.size
        if self.crop_mode == "squash":
            ry, rx = sh / height, sw / width
        elif self.crop_mode == "border":
            ry = rx = min(sh / height, sw / width)
        elif sh == sw:
            ry = rx = sh / min(height, width)
        else:
            ry = rx = max(sh / height, sw / width)
        nh, nw = height * ry, width * rx
        top, left = (nh - th) / 2.0, (nw - tw) / 2.0
        return left / rx, top / ry, (left + tw) / rx, (top + th) / ry

    # -- normalisation
    def normalize(self, view: torch.Tensor) -> torch.Tensor:
        """``(view - mean) / std`` (in ``view``'s dtype and device)."""
        mean = torch.tensor(self.mean, device=view.device, dtype=view.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=view.device, dtype=view.dtype).view(1, 3, 1, 1)
        return (view - mean) / std

    def __call__(self, images: Any) -> torch.Tensor:
        """Raw images -> backbone-ready ``(B, 3, H, W)`` float32."""
        return self.normalize(self.view(images))


# ----------------------------------------------------------------------------- the model's data config
def _timm_data_config(backbone) -> dict[str, Any] | None:
    cfg = getattr(backbone, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not cfg:
        return None
    if not cfg.get("architecture"):  # not a timm model: only the keys it states (timm would fill its defaults)
        keys = ("crop_pct", "crop_mode", "interpolation", "mean", "std")
        return {k: cfg[k] for k in keys if cfg.get(k) is not None}
    try:
        from timm.data import resolve_model_data_config

        return dict(resolve_model_data_config(backbone))
    except Exception:  # noqa: BLE001 - fall back to the defaults below
        return None


def _torchvision_data_config(backbone, spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not type(backbone).__module__.startswith("torchvision.models"):
        return None
    try:
        import torchvision

        from salfcbm.core.backbones import infer_spec

        spec = spec if spec and spec.get("source") == "torchvision" else infer_spec(backbone, weights=None)
        if spec.get("source") != "torchvision":
            return None
        enum = torchvision.models.get_model_weights(spec["name"])
        tag = spec.get("weights")
        weights = enum[tag] if isinstance(tag, str) and tag in enum.__members__ else enum.DEFAULT
        t = weights.transforms()
        crop, resize = t.crop_size[0], t.resize_size[0]
        return {
            "crop_pct": crop / resize,
            "interpolation": str(t.interpolation.value),
            "crop_mode": "center",
            "mean": tuple(t.mean),
            "std": tuple(t.std),
        }
    except Exception:  # noqa: BLE001 - builders without weights or presets without a crop
        return None


def resolve_transform(
    backbone,
    *,
    spec: Mapping[str, Any] | None = None,
    input_size: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    interpolation: str | None = None,
) -> ImageTransform:
    """The backbone's own eval transform (timm data config, torchvision weights' transforms),
    with any explicitly given field taking precedence. Other modules get
    ``crop_pct=1.0`` (resize the shorter side to the input, centre crop) and bilinear."""
    from salfcbm.core.backbones import input_stats

    cfg = _timm_data_config(backbone) or _torchvision_data_config(backbone, spec) or {}
    d_mean, d_std = input_stats(backbone)
    interp = interpolation or cfg.get("interpolation") or "bilinear"
    if interp not in INTERPOLATIONS:
        warnings.warn(f"The model's interpolation {interp!r} is not supported; using 'bicubic'.", ImageConversionWarning, stacklevel=3)
        interp = "bicubic"
    return ImageTransform(
        size=tuple(input_size),
        crop_pct=crop_pct if crop_pct is not None else float(cfg.get("crop_pct") or 1.0),
        crop_mode=crop_mode or cfg.get("crop_mode") or "center",
        interpolation=interp,
        mean=tuple(mean) if mean is not None else tuple(cfg.get("mean") or d_mean),
        std=tuple(std) if std is not None else tuple(cfg.get("std") or d_std),
    )


# ----------------------------------------------------------------------------- datasets
class AlignedDataset(torch.utils.data.Dataset):
    """A dataset whose images are replaced by the model's views (`ImageTransform.view`).

    Items keep their label and any other fields; indices are the wrapped dataset's.
    Use `align_dataset`, which returns the dataset itself when it already yields
    the views.
    """

    def __init__(self, dataset, transform: ImageTransform):
        self.dataset, self.image_transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        if isinstance(item, (tuple, list)):
            return (self.image_transform.view(item[0])[0], *item[1:])
        return self.image_transform.view(item)[0]

    def __getattr__(self, name: str):  # labels, targets, classes, samples, ... of the wrapped dataset
        if name in ("dataset", "image_transform") or name.startswith("__"):
            raise AttributeError(name)
        if name == "fingerprint":  # only when the wrapped dataset has one, extended by the geometry
            inner = getattr(self.dataset, "fingerprint", None)
            if not callable(inner):
                raise AttributeError(name)
            return lambda: {**inner(), "view": self.image_transform.to_config()}
        return getattr(self.dataset, name)


def _first_image(dataset) -> Any:
    item = dataset[0]
    return item[0] if isinstance(item, (tuple, list)) else item


def align_dataset(dataset, transform: ImageTransform):
    """``dataset`` as the model sees it: every image through ``transform.view``.

    Returns ``dataset`` unchanged when it already yields these views (it carries the same
    ``image_transform``, or its images are float ``[0, 1]`` at the input size and the
    transform is the identity for them).

    Raises:
        AlignmentError: the dataset declares another geometry (``dataset.image_transform``
            differs), so its images cannot be mapped to the model's grid cells.
    """
    own = getattr(dataset, "image_transform", None)
    if isinstance(own, ImageTransform):
        if (own.size, own.crop_pct, own.crop_mode, own.interpolation) == (
            transform.size, transform.crop_pct, transform.crop_mode, transform.interpolation
        ):
            return dataset
        if callable(getattr(dataset, "with_transform", None)):  # re-crop from the original files
            return dataset.with_transform(transform)
        raise AlignmentError(
            f"The dataset yields images already cropped by another geometry ({_describe(own)}) while the model's is "
            f"{_describe(transform)}; the prompt grid and the concept cells would cover different regions. Build "
            "the dataset with the model's transform (ImageFolderDataset(root, transform=model.image_transform)) or "
            "from the raw images."
        )
    if len(dataset) == 0:
        return dataset
    first = _first_image(dataset)
    if (
        isinstance(first, torch.Tensor)
        and first.dim() == 3
        and first.shape[0] == 3
        and first.dtype == torch.float32
        and transform.is_identity_for(*first.shape[-2:])
    ):
        load_images(first)  # validate the dtype/range rule on the first item
        return dataset
    return AlignedDataset(dataset, transform)


def _describe(t: ImageTransform) -> str:
    return f"size {t.size[0]}x{t.size[1]}, crop_pct {t.crop_pct:g}, {t.crop_mode}, {t.interpolation}"
