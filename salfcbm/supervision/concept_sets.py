"""LF-CBM's published concept sets and class names, fetched once into the user cache.

The SALF-CBM paper (section 4.1) uses "the same initial concept list ... as in [LF-CBM]":
the filtered GPT-3 concept sets that Oikarinen et al. publish in their repository
(``data/concept_sets/*_filtered.txt``). `lf_cbm_concepts` downloads one of them
from a pinned commit, checks its sha256 and keeps it under the user cache
(`cache_dir`), so every later call is offline. ``load_concepts("lf-cbm:imagenet")``
calls it.

Recorded counts (non-blank lines of the pinned files; the paper's 4,741 ImageNet concepts
are what is left of the 4,751 after the training-time activation cutoff):

========== ======== ============
name       concepts classes file
========== ======== ============
cifar10    143      10
cifar100   892      100
cub        370      200
places365  2,544    365
imagenet   4,751    1,000
========== ======== ============

Offline (``SALFCBM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) or when the download fails, a
`DownloadError` names the URL and the cache path to put the file
at by hand.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from salfcbm._utils.io import atomic_write_bytes, sha256_bytes
from salfcbm.errors import ChecksumError, DownloadError, InputError, UnknownConceptSetError

__all__ = [
    "LF_CBM_COMMIT",
    "LF_CBM_CONCEPT_SETS",
    "LF_CBM_CLASS_NAMES",
    "RemoteFile",
    "UnknownConceptSetError",
    "cache_dir",
    "fetch_file",
    "lf_cbm_class_names",
    "lf_cbm_concepts",
]

#: The commit of github.com/Trustworthy-ML-Lab/Label-free-CBM the files are pinned to.
LF_CBM_COMMIT = "fa2869d46c454f406af69b19d3d5427f2d427492"
_LF_CBM_BASE = f"https://raw.githubusercontent.com/Trustworthy-ML-Lab/Label-free-CBM/{LF_CBM_COMMIT}/"


@dataclass(frozen=True)
class RemoteFile:
    """A published text file: its path in the source repository, sha256 and line count."""

    path: str
    sha256: str
    count: int


#: LF-CBM's filtered concept sets, by dataset.
LF_CBM_CONCEPT_SETS: dict[str, RemoteFile] = {
    "cifar10": RemoteFile("data/concept_sets/cifar10_filtered.txt",
                          "dbd485c91708585e0740db46773dd9e7bccbf1bb2424a6aeaa6ab28f5e06ff19", 143),
    "cifar100": RemoteFile("data/concept_sets/cifar100_filtered.txt",
                           "960a78d29f65d3df0134edc3bd2573b6bc79b6ece970ae217011cb3e737ae0e3", 892),
    "cub": RemoteFile("data/concept_sets/cub_filtered.txt",
                      "4e4b0ba0159791c9d5b105002c84baebd4ca8f8d8818a7a0c7052a1bb7a8dc8f", 370),
    "places365": RemoteFile("data/concept_sets/places365_filtered.txt",
                            "1dacb978ce262e93b20aaf95b97cb3de80906fbeb8ecdde6cfc156ddbb3ffbb8", 2544),
    "imagenet": RemoteFile("data/concept_sets/imagenet_filtered.txt",
                           "18c9c85dfe4020dac4d2fdf1a38e0ae98a41f90dfb5af7936511c7d61e5df49e", 4751),
}

#: LF-CBM's human-readable class names, in label order (ImageNet's file separates lines with CR).
LF_CBM_CLASS_NAMES: dict[str, RemoteFile] = {
    "cifar10": RemoteFile("data/cifar10_classes.txt",
                          "bb3914949cecedee6d1257f7f5fdb8f43fa3b2c8095fd1763161caf1b873fe59", 10),
    "cifar100": RemoteFile("data/cifar100_classes.txt",
                           "60ae3a3ac1355fcfec19c0ea3cb5fde15203ecf3b537cabcf6d5d54688ee9a4d", 100),
    "cub": RemoteFile("data/cub_classes.txt",
                      "a7bc058a7a945cf89221675f67c827cf0284f29b265ea2fe42c83586e9e0b3e3", 200),
    "places365": RemoteFile("data/categories_places365_clean.txt",
                            "6070e8cf4635e5e029cc4ed0d6e4d1cd52c4a33891016bf341057cc5f8c8ca2b", 365),
    "imagenet": RemoteFile("data/imagenet_classes.txt",
                           "cf94df9eb46d33f94eb8496fce052f8e667c75aab5909e22f9031cbf890480fe", 1000),
}


def cache_dir() -> Path:
    """Where salfcbm keeps downloaded files: ``$SALFCBM_CACHE``, else ``$XDG_CACHE_HOME/salfcbm``, else ``~/.cache/salfcbm``."""
    if os.environ.get("SALFCBM_CACHE"):
        return Path(os.environ["SALFCBM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "salfcbm"


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("SALFCBM_OFFLINE", "HF_HUB_OFFLINE"))


def fetch_file(url: str, sha256: str, dest: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """``dest`` if it exists with the right sha256, else download ``url`` there (checked, atomic).

    ``file://`` URLs are read even offline (tests use them); ``http(s)://`` ones raise
    `DownloadError` when ``SALFCBM_OFFLINE`` or ``HF_HUB_OFFLINE`` is set.

    Raises:
        DownloadError: offline, or the download failed; the message says where to put the file.
        ChecksumError: the cached or downloaded bytes do not have ``sha256``.
    """
    dest = Path(dest)
    by_hand = f"Download {url} yourself and save it as {dest} (expected sha256 {sha256})."
    if dest.is_file():
        got = sha256_bytes(dest.read_bytes())
        if got == sha256:
            return dest
        raise ChecksumError(f"The cached file {dest} has sha256 {got}, expected {sha256}: it is corrupt or "
                            f"another version. Delete it to download it again. {by_hand}")
    if _offline() and not url.startswith("file:"):
        raise DownloadError(f"{dest.name} is not in the cache ({dest}) and downloads are off "
                            f"(SALFCBM_OFFLINE / HF_HUB_OFFLINE is set). {by_hand}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - pinned https or file URL
            data = r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"Could not download {url}: {e}. Are you offline? {by_hand}") from None
    got = sha256_bytes(data)
    if got != sha256:
        raise ChecksumError(f"{url} has sha256 {got}, expected {sha256}; nothing was cached. The source may "
                            "have changed or the download was corrupted; retry, or check the URL.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, data, fsync=False)
    return dest


def _lines(name: str, table: dict[str, RemoteFile], what: str, base_url: str | None) -> list[str]:
    if not isinstance(name, str):
        raise InputError(f"The {what} name must be a string like 'imagenet', got {type(name).__name__}.")
    key = name.strip().lower()
    if key not in table:
        raise UnknownConceptSetError(name, sorted(table))
    entry = table[key]
    base = base_url or os.environ.get("SALFCBM_LF_CBM_URL") or _LF_CBM_BASE
    dest = cache_dir() / "lf-cbm" / LF_CBM_COMMIT[:12] / entry.path
    path = fetch_file(base.rstrip("/") + "/" + entry.path, entry.sha256, dest)
    from salfcbm.supervision.concepts import read_text_lines

    lines = [ln.strip() for ln in read_text_lines(path, f"{what} list")]
    lines = [ln for ln in lines if ln]
    if len(lines) != entry.count:  # only reachable if the recorded checksum and count disagree
        raise ChecksumError(f"{path} holds {len(lines)} {what} entries, expected {entry.count}.")
    return lines


def lf_cbm_concepts(name: str, *, base_url: str | None = None) -> list[str]:
    """LF-CBM's filtered concept set for ``name`` (cifar10, cifar100, cub, places365, imagenet).

    Fetched once from the pinned LF-CBM commit into `cache_dir` and checked against
    its sha256; the list keeps the file's order (and its few case variants).

    Args:
        name: dataset name.
        base_url: a mirror of the repository's tree (``file://`` works); default
            ``$SALFCBM_LF_CBM_URL``, else GitHub at `LF_CBM_COMMIT`.

    Examples:
        >>> len(lf_cbm_concepts("imagenet"))  # doctest: +SKIP
        4751
    """
    return _lines(name, LF_CBM_CONCEPT_SETS, "concept", base_url)


def lf_cbm_class_names(name: str, *, base_url: str | None = None) -> list[str]:
    """LF-CBM's human-readable class names for ``name``, in label order (e.g. ImageNet's 1,000)."""
    return _lines(name, LF_CBM_CLASS_NAMES, "class", base_url)
