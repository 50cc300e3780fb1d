"""Fixtures of the reliability tests: a small real filesystem that can fill up."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 512 KiB tmpfs (needs permission to mount; skipped with a message where there is none)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip() or 'not permitted'}); "
                    "the simulated full disk (monkeypatched writes) covers the same code paths")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt, free_pages: int) -> None:
    """Leave about ``free_pages`` pages free on ``mnt`` (a file named ``filler``)."""
    import os

    filler = mnt / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(mnt)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, (st.f_bavail - free_pages) * st.f_frsize))
