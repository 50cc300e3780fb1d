"""Reading images: tensors, NumPy arrays, PIL images, file paths or lists of them -> float32
``(B, 3, H, W)`` in ``[0, 1]`` (step 1 of `salfcbm.core.images`, whose docstring states the rule).

Files are opened safely (regular files only, pixel budget `max_image_pixels`, EXIF orientation);
every refusal is an `ImageInputError` (or `CorruptImageError`, `ImageTooLargeError`) naming the fix.
"""

from __future__ import annotations

import os
import stat
import warnings
from typing import Any

import torch

from salfcbm.errors import (
    CorruptImageError,
    ImageConversionWarning,
    ImageInputError,
    ImageTooLargeError,
    SalfCBMError,
)

__all__ = ["check_image_pixels", "is_loaded", "load_images", "max_image_pixels", "open_image"]

_TOL = 1e-3  # float images may overshoot [0, 1] by this much (resampling); clamped
_CHANNELS = (1, 3, 4)


# ----------------------------------------------------------------------------- reading
def load_images(images: Any, *, check: Any = None) -> list[torch.Tensor]:
    """Read images of any supported kind into float32 ``(b, 3, H, W)`` batches in ``[0, 1]``.

    Returns one batch per input item of its own size (one batch for a 4-D tensor or
    array). See the module docstring for the dtype and layout rule.

    Files and PIL images are refused before they are decoded when their header size is over
    `max_image_pixels` (`ImageTooLargeError`); ``check(height, width)``, if given, is called
    on that size too (`ImageTransform.view` passes its resize budget). A path must be a
    regular file (a FIFO or a device is refused, never opened for reading), and the EXIF
    orientation of a file or a PIL image is applied (``ImageOps.exif_transpose``), so a
    photo gives the same pixels as a path and as a PIL image.

    Raises:
        ImageInputError: for an empty batch, a wrong layout or dtype, values out of
            range, NaN or inf pixels, or a path that is missing or not a regular file.
        ImageTooLargeError: more pixels than `max_image_pixels`, or (through ``check``) over the
            geometry's resize budget.
        CorruptImageError: a file that cannot be decoded.

    Examples:
        >>> import torch
        >>> [b.shape for b in load_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))]
        [torch.Size([2, 3, 8, 8])]
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageInputError("Got an empty list of images; pass at least one image.")
        batches = [b for item in images for b in _load_one(item, single=True, check=check)]
    else:
        batches = _load_one(images, single=False, check=check)
    for b in batches:
        if b.shape[-1] == 0 or b.shape[-2] == 0:
            raise ImageInputError(
                f"Got an image with no pixels (height x width {b.shape[-2]} x {b.shape[-1]}); pass images "
                "of at least one pixel in each direction."
            )
    return batches


def _load_one(item: Any, *, single: bool, check: Any = None) -> list[torch.Tensor]:
    if isinstance(item, (str, os.PathLike)):
        return [_from_path(item, check)]
    if _is_pil(item):
        return [_from_pil(item, check=check)]
    if type(item).__module__ == "numpy" and hasattr(item, "ndim"):
        return [_from_numpy(item, single=single)]
    if isinstance(item, torch.Tensor):
        if single and item.dim() == 4 and item.shape[0] != 1:
            raise ImageInputError(
                f"A list item is a batch of {item.shape[0]} images {tuple(item.shape)}; list items must be single "
                "images. Pass the batch itself, or a list of (3, H, W) tensors."
            )
        return [_from_tensor(item, source="tensor")]
    raise ImageInputError(
        f"Cannot read images from a {type(item).__name__}. Pass a (B, 3, H, W) or (3, H, W) tensor, a NumPy "
        "array (H, W, C), a PIL image, a file path, or a list of these."
    )


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with torchvision
        return False
    return isinstance(x, Image.Image)


def max_image_pixels() -> int | None:
    """The most pixels an image file or PIL image may have: PIL's own ``PIL.Image.MAX_IMAGE_PIXELS``
    (89,478,485 by default, a 0.25 GB RGB image), read at each call, so setting it raises (or,
    with ``None``, lifts) the limit for PIL and salfcbm at once."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def _too_large(name: str, size: str, pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"Image {name} {size}{pixels / 1e6:,.1f} M pixels, more than the limit of {max_image_pixels():,} "
        "pixels (PIL.Image.MAX_IMAGE_PIXELS); it was not decoded (a decompression bomb costs gigabytes). Downscale "
        "it, or, if you trust the file, raise the limit: `PIL.Image.MAX_IMAGE_PIXELS = N` (None lifts it). Image "
        "folders skip it with skip_corrupt=True / `--skip-corrupt`."
    )


def check_image_pixels(width: int, height: int, name: str = "image") -> None:
    """Refuse a ``width x height`` image over `max_image_pixels` (called on the header, before decoding).

    Raises:
        ImageTooLargeError: naming the size, the limit and how to raise it.
    """
    limit = max_image_pixels()
    if limit is not None and int(width) * int(height) > limit:
        raise _too_large(name, f"is {int(width)}x{int(height)}: ", int(width) * int(height))


# ----------------------------------------------------------------------------- files
def _open_regular(p: str):
    """A binary file object for ``p``, refused unless it is a regular file (never blocks on a FIFO)."""
    try:
        st = os.stat(p)  # follows symlinks
    except OSError:
        raise ImageInputError(
            f"Image file {p!r} does not exist; check the path (relative to {os.getcwd()!r})."
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageInputError(_not_regular(p, st.st_mode))
    try:  # O_NONBLOCK: a file swapped for a FIFO after the stat does not block the open either
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CorruptImageError(f"Cannot open image {p!r} ({e.strerror or e}); check its permissions.") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageInputError(_not_regular(p, os.stat(p).st_mode))
    return os.fdopen(fd, "rb")


def _not_regular(p: str, mode: int) -> str:
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a directory" if stat.S_ISDIR(mode)
            else "not a regular file")
    return (f"{p!r} is {kind}, not an image file; salfcbm reads images only from regular files (reading a FIFO "
            "or a device could block forever). Pass the path of an image file (image folders skip such entries "
            "with a warning).")


def open_image(path: str | os.PathLike):
    """Open an image file lazily (header only), refusing what salfcbm will not decode.

    The file must be a regular file (a FIFO, socket or device is refused without being
    opened for reading) and its header size within `max_image_pixels`. Returns an unloaded
    PIL image that owns its file (``with open_image(p) as im: ...`` closes it).

    Raises:
        ImageInputError: a missing path or not a regular file.
        ImageTooLargeError: more pixels than `max_image_pixels`.
        CorruptImageError: a file PIL cannot identify.
    """
    from PIL import Image

    p = os.fspath(path)
    f = _open_regular(p)
    try:
        im = Image.open(f)
        check_image_pixels(*im.size, name=repr(p))
    except SalfCBMError:
        f.close()
        raise
    except Image.DecompressionBombError as e:  # PIL's own check (over twice its limit) comes first
        f.close()
        raise _too_large(repr(p), "has ", _bomb_pixels(e)) from None
    except Exception as e:  # noqa: BLE001 - whatever a broken header makes PIL raise
        f.close()
        raise _corrupt(p, e) from e
    im._exclusive_fp = True  # the image owns the file: closing the image closes it
    return im


def _bomb_pixels(e: Exception) -> int:
    import re

    m = re.search(r"\((\d+) pixels\)", str(e))
    return int(m.group(1)) if m else 0


def _corrupt(p: str, e: BaseException) -> CorruptImageError:
    return CorruptImageError(
        f"Cannot read image {p!r} ({type(e).__name__}: {e}). Remove or replace the file (image folders can "
        "skip unreadable images: ImageFolderDataset(..., skip_corrupt=True), `salfcbm ... --skip-corrupt`)."
    )


def _from_path(path: str | os.PathLike, check: Any = None) -> torch.Tensor:
    p = os.fspath(path)
    with open_image(p) as im:
        return _from_pil(im, name=p, check=check)


def _orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: no rotation (as image viewers do)
        return 1


def _upright(im, name: str):
    """``im`` turned as its EXIF orientation tag says (PIL's ``ImageOps.exif_transpose``)."""
    from PIL import ImageOps

    if _orientation(im) in (1, 0) or _orientation(im) > 8:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except SalfCBMError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CorruptImageError(f"Cannot apply the EXIF orientation of {name} ({type(e).__name__}: {e}).") from e


def _from_pil(im, name: str = "PIL image", check: Any = None) -> torch.Tensor:
    import numpy as np

    check_image_pixels(*im.size, name="(a PIL image)" if name == "PIL image" else repr(name))
    if check is not None:  # the geometry's budget (`ImageTransform.check_size`), before decoding
        check(im.size[1], im.size[0])
    try:
        im.load()  # a lazily opened image (Image.open, open_image) is decoded here
    except Exception as e:  # noqa: BLE001 - truncated data, broken chunks: whatever the decoder raises
        raise _corrupt(name, e) from e
    im = _upright(im, name)
    mode = im.mode
    if mode == "RGB":
        return _from_numpy(np.asarray(im), single=True)
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
        mode = im.mode
        if mode == "RGB":
            return _from_numpy(np.asarray(im), single=True)
    if mode in ("RGBA", "RGBa", "RGBX"):
        return _from_numpy(np.asarray(im), single=True, name=name)
    if mode in ("LA", "La"):
        warnings.warn("The alpha channel of grayscale+alpha images was dropped.", ImageConversionWarning, stacklevel=4)
        return _from_numpy(np.asarray(im)[..., 0], single=True, name=name)
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode in ("L", "F") or mode.startswith("I;16"):
        arr = np.asarray(im)
        return _from_numpy(arr.astype(np.uint16) if mode.startswith("I;16") else arr, single=True, name=name)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageInputError(f"{name}: 32-bit integer pixels outside 0..65535; convert it to 8 or 16 bits.")
        return _from_numpy(arr.astype(np.uint16), single=True, name=name)
    warnings.warn(f"{name}: converted from PIL mode {mode!r} to RGB.", ImageConversionWarning, stacklevel=4)
    try:
        rgb = im.convert("RGB")
    except ValueError as e:
        raise ImageInputError(f"{name}: PIL cannot convert mode {mode!r} to RGB ({e}); convert it yourself.") from e
    return _from_numpy(np.asarray(rgb), single=True, name=name)


def _from_numpy(arr, *, single: bool, name: str = "array") -> torch.Tensor:
    import numpy as np

    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim not in (3, 4) or arr.shape[-1] not in _CHANNELS:
        raise ImageInputError(
            f"A NumPy image must be (H, W), (H, W, C) or (B, H, W, C) with C in {_CHANNELS} (channels last, the "
            f"image convention); got shape {arr.shape}. For a channels-first array pass torch.from_numpy(arr)."
        )
    if arr.ndim == 4 and single:
        raise ImageInputError(f"A list item is a batch of images {arr.shape}; pass single (H, W, C) images in a list.")
    if arr.dtype == np.uint16:
        arr = arr.astype(np.int32)  # torch's uint16 supports few ops
        t = torch.from_numpy(np.ascontiguousarray(arr)).float() / 65535.0
    else:
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # PIL's arrays are read-only
    t = t.permute(2, 0, 1) if t.dim() == 3 else t.permute(0, 3, 1, 2)
    return _from_tensor(t, source=name, already_scaled=arr.dtype == np.int32 and t.is_floating_point())


def _from_tensor(t: torch.Tensor, *, source: str, already_scaled: bool = False) -> torch.Tensor:
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ImageInputError(
            f"Images must be (3, H, W) or (B, 3, H, W); got a {t.dim()}-D {source} of shape {tuple(t.shape)}."
        )
    if t.shape[0] == 0:
        raise ImageInputError(f"Got an empty batch of images {tuple(t.shape)}; pass at least one image.")
    c = t.shape[1]
    if c not in _CHANNELS:
        if t.shape[-1] in _CHANNELS:
            raise ImageInputError(
                f"Got a channels-last (NHWC) {source} of shape {tuple(t.shape)}; torch images are channels-first. "
                "Pass images.permute(0, 3, 1, 2) (or .permute(2, 0, 1) for one image)."
            )
        raise ImageInputError(
            f"Images must have 1, 3 or 4 channels in dim 1; got a {source} of shape {tuple(t.shape)}."
        )
    x = t if already_scaled else _to_unit_float(t, source)
    if c == 1:
        warnings.warn(
            "Grayscale images were repeated to 3 channels (RGB).", ImageConversionWarning, stacklevel=5
        )
        x = x.expand(-1, 3, -1, -1)
    elif c == 4:
        warnings.warn(
            "The alpha channel of RGBA images was dropped (as PIL's convert('RGB') does).",
            ImageConversionWarning,
            stacklevel=5,
        )
        x = x[:, :3]
    return x.contiguous()


def _to_unit_float(t: torch.Tensor, source: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.dtype == torch.uint16:
        return t.to(torch.int32).float() / 65535.0
    if not t.is_floating_point():
        raise ImageInputError(
            f"Images of dtype {t.dtype} are not supported ({source} {tuple(t.shape)}): pass uint8 (0..255), "
            "uint16 (0..65535) or float in [0, 1]."
        )
    x = t.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ImageInputError(
            f"{bad} pixel value(s) of the {source} {tuple(t.shape)} are NaN or infinite. Fix the image (e.g. "
            "torch.nan_to_num) before passing it; salfcbm would otherwise return NaN probabilities."
        )
    lo, hi = float(x.min()), float(x.max())
    if hi > 1 + _TOL:
        raise ImageInputError(
            f"Float images must be in [0, 1]; got values up to {hi:g} ({source} {tuple(t.shape)}), which looks like "
            "0..255. Divide by 255, or pass a uint8 tensor."
        )
    if lo < -_TOL:
        raise ImageInputError(
            f"Float images must be in [0, 1]; got values down to {lo:g} ({source} {tuple(t.shape)}), which looks "
            "already normalised. Pass the raw images (in [0, 1]); salfcbm applies the model's normalisation."
        )
    return x.clamp(0.0, 1.0) if (hi > 1 or lo < 0) else x



def is_loaded(images: Any) -> bool:
    """Whether ``images`` is already what `load_images` returns (a list of float32 ``(b, 3, H, W)`` batches)."""
    return isinstance(images, list) and bool(images) and all(
        isinstance(b, torch.Tensor) and b.dim() == 4 and b.shape[1] == 3 and b.dtype == torch.float32 for b in images
    )
