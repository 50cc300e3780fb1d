"""Atomic file writes: a temporary file in the same directory, then ``os.replace``.

A crash mid-write leaves at worst a ``*.tmp-*`` file that no reader mistakes for the
real one; the previous version of the file stays intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = [
    "TMP_MARK",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "replace_files",
    "owned_leftovers",
    "write_in_progress",
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


# -- owned files in a user's folder -------------------------------------------------------
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
    """Remove the staging directories ``.NAME.tmp-PID-xxxx`` next to ``target`` left by killed saves
    of salfcbm versions that swapped whole folders (before `replace_files`)."""
    import re
    import shutil

    target = Path(target)
    removed: list[Path] = []
    if not target.name or not target.parent.is_dir():
        return removed
    pat = re.compile(rf"^\.{re.escape(target.name)}{re.escape(TMP_MARK)}\d+-[0-9a-f]+$")
    for p in target.parent.iterdir():
        if pat.match(p.name) and p.is_dir() and not p.is_symlink() and not writer_alive(p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _temp_files(directory: Path, names: Iterable[str]) -> list[Path]:
    """The temporary files ``NAME.tmp-PID-xxxxxxxx`` of `replace_files` for ``names`` in ``directory``."""
    import re

    alternatives = "|".join(re.escape(n) for n in names)
    pat = re.compile(rf"^(?:{alternatives}){re.escape(TMP_MARK)}\d+-[0-9a-f]{{8}}$")
    try:
        return [p for p in directory.iterdir() if pat.match(p.name)]
    except OSError:
        return []


def _live(name: str) -> bool:
    """Whether the writer of temporary file ``name`` runs (this process counts: another thread may be writing)."""
    try:
        pid = int(name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    return pid == os.getpid() or writer_alive(name)


def owned_leftovers(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Temporary files of `replace_files` for ``names`` in ``directory`` whose writer process is gone."""
    return [p for p in _temp_files(Path(directory), names) if not _live(p.name)]


def write_in_progress(directory: str | os.PathLike, names: Iterable[str]) -> bool:
    """Whether a live process (this one included) is in a `replace_files` call for ``names`` in ``directory``."""
    return any(_live(p.name) for p in _temp_files(Path(directory), names))


@contextlib.contextmanager
def _directory_lock(directory: Path):
    """An exclusive ``flock`` on the folder itself (no lock file is created); a no-op where unsupported."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def replace_files(directory: str | os.PathLike, files: Sequence[tuple[str, bytes | str]]) -> Path:
    """Write ``files`` (``(name, data)`` pairs; ``str`` data as UTF-8) into ``directory``, touching nothing else.

    Every file is first written in full to a temporary file in ``directory`` itself (so a full
    disk fails before anything is replaced) and flushed; then each is moved over the old one
    with ``os.replace``, in the given order. Nothing else in ``directory`` changes: other files,
    subfolders, the folder's permissions and owner, a symlink to it (the files are written
    through it). A replaced file keeps the permission bits (and, where allowed, the owner) of
    the file it replaces. Temporary files of killed calls are removed first. The replaces run
    under an exclusive ``flock`` of the folder, so concurrent calls never interleave them.

    Examples:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); _ = (d / "mine.txt").write_text("kept")
        >>> _ = replace_files(d, [("a.bin", b"1"), ("b.json", b"{}")])
        >>> sorted(p.name for p in d.iterdir()), (d / "mine.txt").read_text()
        (['a.bin', 'b.json', 'mine.txt'], 'kept')
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    clean_staging(directory)
    for p in owned_leftovers(directory, [name for name, _ in files]):
        with contextlib.suppress(OSError):
            p.unlink()
    temps: list[tuple[Path, Path]] = []
    try:
        for name, data in files:
            final = directory / name
            tmp = directory / f"{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            temps.append((tmp, final))
            if isinstance(data, str):
                tmp.write_text(data, encoding="utf-8", newline="")
            else:
                tmp.write_bytes(data)
            _keep_mode_and_owner(final, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        with _directory_lock(directory):  # two saves into one folder replace their files as whole sets
            for tmp, final in temps:
                os.replace(tmp, final)
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return directory


def _keep_mode_and_owner(old: Path, new: Path) -> None:
    """Give ``new`` the permission bits (and, where allowed, the owner) of ``old`` if it exists."""
    import stat

    try:
        st = os.stat(old)
    except OSError:
        return
    with contextlib.suppress(OSError):  # a filesystem without modes (vfat, some FUSE) keeps its own
        os.chmod(new, stat.S_IMODE(st.st_mode))
    mine = os.stat(new)
    if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
        with contextlib.suppress(OSError):
            os.chown(new, st.st_uid, st.st_gid)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError):
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
