"""Atomic file writes: a temporary file in the same directory, then ``os.replace``.

A crash mid-write leaves at worst a ``*.tmp-*`` file that no reader mistakes for the
real one; the previous version of the file stays intact.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "TMP_MARK",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_directory",
    "clean_staging",
    "sha256_bytes",
    "sha256_file",
    "verify_once",
    "writer_alive",
    "checked_safetensors",
    "read_checked_metadata",
]

TMP_MARK = ".tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, fsync: bool = False) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically (parents are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(str(tmp))
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically.

    Examples:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
        >>> _ = atomic_write_bytes(p, b"hi"); open(p, "rb").read()
        b'hi'
    """
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# -- checksums ------------------------------------------------------------------------
_VERIFIED: dict[tuple[str, int, int, str], bool] = {}  # (path, size, mtime_ns, digest): checked in this process


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_once(path: str | os.PathLike, check: Callable[[], bool], digest: str = "") -> bool:
    """Run ``check()`` for ``path`` once per process (until the file's size or mtime changes)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, digest)
    if key not in _VERIFIED:
        ok = bool(check())
        if not ok:
            return False
        _VERIFIED[key] = True
    return True


# -- atomic directories -----------------------------------------------------------------
def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: the filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def writer_alive(name: str) -> bool:
    """Whether the process that is writing temporary file ``name`` (``...tmp-PID-xxxx``) still runs."""
    try:
        pid = int(name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False  # our own leftovers are never being written while we clean
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_staging(target: str | os.PathLike) -> list[Path]:
    """Remove staging directories of interrupted `atomic_directory` calls for ``target``."""
    import re
    import shutil

    target = Path(target)
    pat = re.compile(rf"^\.{re.escape(target.name)}{re.escape(TMP_MARK)}\d+-[0-9a-f]+$")
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        if pat.match(p.name) and not writer_alive(p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def atomic_directory(target: str | os.PathLike, write: Callable[[Path], object], *, keep: Callable[[str], bool]) -> Path:
    """Fill a staging directory with ``write(staging)`` and swap it in for ``target`` in one step.

    Files of an existing ``target`` that ``keep(name)`` accepts are carried over (hard
    links, else copies). Until the swap, ``target`` is untouched; after it, ``target``
    holds only complete new files. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``;
    elsewhere the files are moved in one by one (each move atomic). Leftover staging
    directories of killed calls are removed first.
    """
    import shutil

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{str(target)!r} exists and is not a directory.")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_staging(target)
    staging = target.parent / f".{target.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        if target.is_dir():
            _carry_over(target, staging, keep)
        write(staging)
        _fsync_tree(staging)
        if not target.exists():
            os.rename(staging, target)
        elif _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)
        else:
            for p in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
                os.replace(p, target / p.name)
            shutil.rmtree(staging, ignore_errors=True)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _carry_over(src: Path, dst: Path, keep: Callable[[str], bool]) -> None:
    import shutil

    for p in src.iterdir():
        if not keep(p.name) or TMP_MARK in p.name:
            continue
        if p.is_dir():
            shutil.copytree(p, dst / p.name)
            continue
        try:
            os.link(p, dst / p.name)
        except OSError:
            shutil.copy2(p, dst / p.name)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in root.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


# -- checked safetensors: a SHA-256 of the data section in the header's metadata ----------
SHA_KEY = "salfcbm.sha256"


def checked_safetensors(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes whose metadata carries the SHA-256 of the tensor data (``salfcbm.sha256``).

    The metadata is one JSON entry (safetensors writes several entries in no fixed order, and
    the same content must give the same bytes).
    """
    import json

    from safetensors.torch import save

    plain = save(tensors)
    n = int.from_bytes(plain[:8], "little")
    meta = {**(metadata or {}), SHA_KEY: sha256_bytes(plain[8 + n:])}
    return save(tensors, metadata={"salfcbm": json.dumps(meta, sort_keys=True)})


def read_checked_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The metadata of a checked safetensors file, or ``None`` if it is truncated, corrupt or unchecked.

    Verified once per process per file version (`verify_once`).
    """
    import json

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < size else None
        meta = json.loads((header.get("__metadata__") or {}).get("salfcbm", "{}"))
        if not isinstance(meta, dict):
            return None
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError):
        return None
    if size != 8 + n + max(ends, default=0) or SHA_KEY not in meta:
        return None

    def check() -> bool:
        import hashlib

        h = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(8 + n)
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest() == meta[SHA_KEY]

    return dict(meta) if verify_once(path, check, meta[SHA_KEY]) else None
