"""Reader for the ImageNet-segmentation benchmark (``gtsegs_ijcv.mat``).

The dataset of Guillaumin et al. (IJCV 2014): 4,276 ImageNet validation images
with foreground masks of the class object, distributed as one MATLAB v7.3 file
(an HDF5 file). It is the zero-shot segmentation benchmark of Chefer et al.
(CVPR 2021) and of the SALF-CBM paper (section 4.2, Table 2).

The layout, as read by Chefer et al.'s ``data/Imagenet.py``:

* ``f["value/img"]`` is an ``(N, 1)`` array of HDF5 object references; the
  ``i``-th dereferences to the image stored ``(3, W, H)`` (MATLAB is
  column-major), transposed to ``(H, W, 3)`` on reading;
* ``f["value/gt"]`` is an ``(N, 1)`` array of references to ``(1, 1)`` cells,
  whose single reference dereferences to the mask stored ``(W, H)``,
  transposed to ``(H, W)``.

Needs ``h5py`` (``pip install 'salfcbm[baselines]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from salfcbm.errors import DatasetNotFoundError, InputError, MissingExtraError

__all__ = ["ImagenetSegmentation", "DatasetNotFoundError", "h5py_module"]


def h5py_module() -> Any:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is installed in the dev environment
        raise MissingExtraError("h5py", "baselines", "Reading the ImageNet-segmentation .mat file") from None
    return h5py


class ImagenetSegmentation(torch.utils.data.Dataset):
    """The ImageNet-segmentation dataset (``gtsegs_ijcv.mat``) as a torch ``Dataset``.

    Each item is ``(image, mask)``:

    * ``image``: with ``transform=None``, a float tensor ``(3, size, size)`` in
      ``[0, 1]`` (bilinear resize, no normalisation: apply your model's mean/std);
      otherwise whatever ``transform(pil_image)`` returns (the PIL image is
      resized to ``size x size`` first, as in Chefer et al.'s
      ``Resize((224, 224))``, unless ``size=None``);
    * ``mask``: a bool tensor ``(size, size)``, ``True`` on the object, resized
      with nearest-neighbour interpolation (as in the reference).

    The HDF5 file is opened lazily in each process (so the dataset works with
    ``DataLoader(num_workers > 0)``) and kept open; `close` closes it.

    Args:
        path: path to ``gtsegs_ijcv.mat``.
        transform: optional callable applied to the resized RGB PIL image.
        size: side of the square evaluation resolution (224 in the paper);
            ``None`` keeps each image's own size.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        InputError: the file is not an HDF5 file with ``value/img`` and ``value/gt``.
        MissingExtraError: ``h5py`` is not installed.

    Examples:
        >>> ds = ImagenetSegmentation("gtsegs_ijcv.mat")  # doctest: +SKIP
        >>> image, mask = ds[0]  # doctest: +SKIP
        >>> image.shape, mask.shape, mask.dtype  # doctest: +SKIP
        (torch.Size([3, 224, 224]), torch.Size([224, 224]), torch.bool)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        size: int | None = 224,
    ) -> None:
        h5py = h5py_module()
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise InputError(f"`size` must be a positive int or None, got {size!r}.")
        if transform is not None and not callable(transform):
            raise InputError(f"`transform` must be callable or None, got {type(transform).__name__}.")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DatasetNotFoundError(
                f"No file at {self.path!r}. Expected the ImageNet-segmentation file gtsegs_ijcv.mat "
                "(Guillaumin et al. 2014, as used by Chefer et al. 2021); download it and pass its path."
            )
        self.transform = transform
        self.size = size
        try:
            with h5py.File(self.path, "r") as f:
                if "value/img" not in f or "value/gt" not in f:
                    raise InputError(
                        f"{self.path!r} has no 'value/img' and 'value/gt' datasets (top-level keys: "
                        f"{sorted(f.keys())}). Expected the MATLAB v7.3 file gtsegs_ijcv.mat."
                    )
                n_img, n_gt = len(f["value/img"]), len(f["value/gt"])
        except OSError as e:
            raise InputError(
                f"{self.path!r} is not readable as an HDF5 (MATLAB v7.3) file: {e}. "
                "Expected gtsegs_ijcv.mat from the ImageNet-segmentation dataset."
            ) from None
        if n_img != n_gt:
            raise InputError(f"{self.path!r} holds {n_img} images but {n_gt} masks; the file looks truncated.")
        self._len = n_img
        self._file: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self._len

    def _handle(self) -> Any:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py_module().File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored image ``(H, W, 3)`` uint8 (or ``(H, W)``) and mask ``(H, W)`` at full resolution."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InputError(f"Index must be an int, got {type(index).__name__}.")
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"Index {index} is out of range for a dataset of {self._len} images.")
        f = self._handle()
        img = np.array(f[f["value/img"][index, 0]])
        img = img.transpose((2, 1, 0)) if img.ndim == 3 else img.T
        gt = np.array(f[f[f["value/gt"][index, 0]][0, 0]]).T
        return img, gt

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        img, gt = self.read_raw(index)
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        pil = Image.fromarray(img).convert("RGB")
        mask = Image.fromarray((gt != 0).astype(np.uint8))
        if self.size is not None:
            pil = pil.resize((self.size, self.size), Image.BILINEAR)
            mask = mask.resize((self.size, self.size), Image.NEAREST)
        if self.transform is not None:
            image = self.transform(pil)
        else:
            image = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return image, torch.from_numpy(np.asarray(mask) != 0)

    def close(self) -> None:
        """Close the HDF5 file (it reopens on the next access)."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None  # h5py handles do not pickle; each worker reopens
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"ImagenetSegmentation(path={self.path!r}, size={self.size}, n={self._len})"
