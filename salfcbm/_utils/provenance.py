"""What a store's shard was computed from: per-shard digests of the input images, and the one digest
of a dataset's file list that the datasets' ``fingerprint()`` records.

A store manifest records the settings (scorer, prompts, backbone, ...); the images are keyed
per shard, so replacing, adding or removing images recomputes exactly the shards whose
images changed. Three ways to key a shard, picked by ``inputs=``:

* ``"files"``: the dataset lists its files (``dataset.samples``, as torchvision's and
  salfcbm's image folders do): path, label, size and modification time of each file.
  Cheap (one ``stat`` per image).
* ``"content"``: the decoded pixels of every image (SHA-256). Always right, costs one pass
  of image loading on resume; opt in for image folders whose files may change in place
  with the same size and time.
* ``"fingerprint"``: the dataset's own ``fingerprint()`` identifies every pixel (for
  generated datasets such as `SyntheticScenes`); recorded in the
  manifest, nothing per shard.

``"auto"`` picks ``"files"``, then ``"fingerprint"``, then ``"content"``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from salfcbm.errors import InputError

__all__ = ["INPUT_MODES", "resolve_inputs", "dataset_identity", "shard_digest", "batch_digest", "files_digest"]

INPUT_MODES = ("auto", "files", "content", "fingerprint")
_PER_SHARD = ("files", "content")


def resolve_inputs(dataset: Any, inputs: str) -> str:
    """The concrete keying mode for ``dataset`` (see the module docstring)."""
    if inputs not in INPUT_MODES:
        raise InputError(f"inputs must be one of {INPUT_MODES}; got {inputs!r}.")
    has_files = isinstance(getattr(dataset, "samples", None), (list, tuple))
    has_fp = callable(getattr(dataset, "fingerprint", None))
    if inputs == "files" and not has_files:
        raise InputError(f"inputs='files' needs a dataset that lists its files (`samples`); {type(dataset).__name__} "
                         "has none. Use inputs='content'.")
    if inputs == "fingerprint" and not has_fp:
        raise InputError(f"inputs='fingerprint' needs a dataset with fingerprint(); {type(dataset).__name__} has "
                         "none. Use inputs='content'.")
    if inputs != "auto":
        return inputs
    return "files" if has_files else "fingerprint" if has_fp else "content"


def dataset_identity(dataset: Any, mode: str) -> dict[str, Any]:
    """The manifest's record of the dataset: what is not keyed per shard."""
    ident: dict[str, Any] = {"type": type(dataset).__name__, "inputs": mode}
    fp = getattr(dataset, "fingerprint", None)
    if mode == "fingerprint":
        ident["fingerprint"] = fp()
    elif callable(fp):  # settings such as the image size; the file list and length are keyed per shard
        ident["settings"] = {k: v for k, v in fp().items() if k not in ("files_sha", "length", "root")}
    return ident


def _image(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def _update(h: Any, image: torch.Tensor) -> None:
    t = torch.as_tensor(image).detach().to("cpu", torch.float32).contiguous()
    h.update(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())


def shard_digest(dataset: Any, start: int, stop: int, mode: str) -> str:
    """Digest of items ``start .. stop - 1`` (``""`` in ``"fingerprint"`` mode)."""
    if mode not in _PER_SHARD:
        return ""
    h = hashlib.sha256()
    if mode == "files":
        for path, label in dataset.samples[start:stop]:
            try:
                st = os.stat(path)
                h.update(f"{os.path.abspath(path)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}\tmissing\n".encode())
    else:
        for n in range(start, stop):
            _update(h, _image(dataset[n]))
    return h.hexdigest()[:24]


def batch_digest(h: Any, images: torch.Tensor) -> None:
    """Add a batch of images to a running ``"content"`` digest (same bytes as `shard_digest`)."""
    for image in images:
        _update(h, image)


def files_digest(samples: Any, root: str | os.PathLike, *, sizes: bool = False) -> str:
    """Digest of a dataset's ``(path, label)`` list: paths relative to ``root``, labels and (with
    ``sizes``) file sizes; the ``files_sha`` of the datasets' ``fingerprint()``.

    Examples:
        >>> files_digest([("/data/a.jpg", 0), ("/data/b.jpg", 1)], "/data")
        '2f0177535936839aa73f0b68'
    """
    h = hashlib.sha256()
    for path, label in samples:
        size = f"\t{os.path.getsize(path)}" if sizes else ""
        h.update(f"{os.path.relpath(path, root)}\t{label}{size}\n".encode())
    return h.hexdigest()[:24]
