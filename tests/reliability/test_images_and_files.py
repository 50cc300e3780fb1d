"""Images and text files as they come: odd files among the images, hostile image headers, concept files
written by any editor. Each case ends the same way on every entry point (the API's `load_images`,
`model.preprocess`, `ImageFolderDataset`, the command line, the explorer): a salfcbm error or a
documented skip. Fuzzers: random and mutated image bytes, random concept-file text."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import salfcbm.cli
from salfcbm.app.explorer import Explorer
from salfcbm.app.images import list_images
from salfcbm.core import images as core_images
from salfcbm.core.images import ImageTransform, load_images
from salfcbm.datasets.folder import ImageFolderDataset
from salfcbm.errors import (
    CorruptImageError,
    ImageInputError,
    ImageTooLargeError,
    SalfCBMError,
    SalfCBMWarning,
    TextFileError,
)
from salfcbm.supervision.concepts import load_concepts

from . import _models as M

ENTRIES = ["load_images", "pil", "preprocess", "cli", "explorer"]  # entry points that take one image
FOLDERS = ["dataset", "dataset-skip", "cli", "explorer"]  # entry points that read a folder
FUZZ = int(os.environ.get("SALFCBM_FUZZ_EXAMPLES", "0"))  # longer fuzzing on demand: SALFCBM_FUZZ_EXAMPLES=2000
GUARD_S = 60  # a reader that blocks (a FIFO) fails the test after this long instead of hanging CI


# ----------------------------------------------------------------------------- files
def _png_header(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` RGB pixels, with an empty image stream (~60 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rotated_pair(tmp: Path) -> tuple[Path, Path]:
    """``rotated.png``: pixels stored sideways with EXIF orientation 6 (turn 90 deg clockwise to show);
    ``upright.png``: the same picture stored upright, no EXIF. PNG is lossless, so both are exact."""
    stored = _noise(12, 20, seed=3)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    tmp.mkdir(parents=True, exist_ok=True)
    im.save(tmp / "rotated.png", exif=exif)
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).save(tmp / "upright.png")
    return tmp / "rotated.png", tmp / "upright.png"


def _bomb(path: Path, side: int = 30000) -> Path:
    path.write_bytes(_png_header(side, side))  # 30000 x 30000 = 900 M pixels, over twice PIL's limit
    return path


def _thin(path: Path) -> Path:
    Image.fromarray(np.zeros((1, 8000, 3), np.uint8)).save(path, optimize=True)  # ~100 bytes
    return path


def _guarded(fn, *args, fifo: Path | None = None):
    """``fn(*args)`` in a thread; fails (and unblocks a FIFO reader) if it does not return in GUARD_S."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(GUARD_S)
    if t.is_alive():
        if fifo is not None:  # a reader blocked in open(): give it a writer so the thread ends
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        pytest.fail(f"{getattr(fn, '__name__', fn)} blocked for {GUARD_S} s (a FIFO among the images?)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ----------------------------------------------------------------------------- entry points
@pytest.fixture(scope="module")
def model():
    return M.model(0)


def _cli(path, model, tmp: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(salfcbm.cli.explain, "load_model", lambda args: model)
    rc = salfcbm.cli.main(["explain", "--model", "unused", str(path), "--out", str(tmp / "r.html"), "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def _read(entry: str, path: Path, model, tmp: Path, monkeypatch, capsys):
    """What ``entry`` makes of one image file: the tensor the model gets (or the CLI's printout)."""
    if entry == "load_images":
        return load_images(str(path))[0]
    if entry == "pil":
        return load_images(Image.open(path))[0]  # lazily opened: not decoded yet
    if entry == "preprocess":
        return model.preprocess(str(path))
    if entry == "explorer":
        return Explorer(model).prepare(str(path)).x
    rc, out, err = _cli(path, model, tmp, monkeypatch, capsys)
    if rc != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("salfcbm: error: "), err
        raise _CLIError(lines[0])
    return out.replace(path.name, "IMAGE")


class _CLIError(SalfCBMError):
    """The CLI's one-line error, re-raised so that every entry point is checked alike."""


def _expect_error(entry: str, path: Path, model, tmp, monkeypatch, capsys, kind: type, *words: str) -> None:
    with pytest.raises((kind, _CLIError)) as e:
        _guarded(_read, entry, path, model, tmp, monkeypatch, capsys)
    if entry != "cli":
        assert isinstance(e.value, kind), repr(e.value)
    for w in words:
        assert w in str(e.value).replace(str(tmp), "TMP"), (w, str(e.value))


def _folder(root: Path, n: int = 2) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(_noise(20, 24, seed=i + 10 * len(c))).save(root / c / f"{i}.png")
    return root


def _scan(entry: str, root: Path, monkeypatch, capsys) -> tuple[list[str], list[int] | None, list[str]]:
    """``(files, labels, warnings)`` a folder reader makes of ``root``; every image it lists is read."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if entry == "explorer":
            files, labels = [str(p) for p in list_images(root)], None
        elif entry == "cli":
            files, labels = _cli_folder(root, monkeypatch, capsys)
        else:
            ds = ImageFolderDataset(root, size=32, skip_corrupt=entry == "dataset-skip")
            for i in range(len(ds)):
                ds[i]
            files, labels = [p for p, _ in ds.samples], list(ds.targets)
    return files, labels, [str(w.message) for w in caught if issubclass(w.category, SalfCBMWarning)]


def _cli_folder(root: Path, monkeypatch, capsys, *extra: str):
    """``salfcbm similarities --data root``: the real folder reader and error handling; the store is
    replaced by a loop that reads every image (what the store does first)."""
    got: dict = {}

    def store(out, data, *a, **k):
        for i in range(len(data)):
            data[i]
        got["data"] = data
        return "store"

    monkeypatch.setattr("salfcbm.supervision.store.compute_similarity_store", store)
    monkeypatch.setattr(salfcbm.cli.train, "make_scorer", lambda args: None)
    rc = salfcbm.cli.main(["similarities", "--data", str(root), "--out", str(root.parent / "sims"), "--image-size",
                           "32", "--num-workers", "0", "--device", "cpu", "--quiet", *extra])
    out, err = capsys.readouterr()
    if rc != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("salfcbm: error: "), err
        raise _CLIError(lines[0])
    ds = got["data"]
    return [p for p, _ in ds.samples], list(ds.targets)


# ----------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("entry", ENTRIES)
def test_an_exif_rotated_photo_is_read_upright_everywhere(entry, model, tmp_path, monkeypatch, capsys):
    """The rule: the EXIF orientation is applied (ImageOps.exif_transpose) to files and PIL images alike."""
    rotated, upright = _rotated_pair(tmp_path / "img")
    got = _read(entry, rotated, model, tmp_path, monkeypatch, capsys)
    want = _read(entry, upright, model, tmp_path, monkeypatch, capsys)
    if isinstance(got, str):
        assert got == want and "IMAGE:" in got
    else:
        assert got.shape == want.shape and torch.equal(got, want)
    if entry == "load_images":  # and the upright picture is the one turned clockwise
        assert got.shape[-2:] == (20, 12)


def test_an_exif_rotated_photo_is_the_same_as_a_path_and_as_a_pil_image(model, tmp_path):
    rotated, _ = _rotated_pair(tmp_path)
    with Image.open(rotated) as im:
        im.load()
        loaded = im.copy()
    ref = model.preprocess(str(rotated))
    for item in (Image.open(rotated), loaded, [str(rotated)], [loaded]):
        assert torch.equal(model.preprocess(item), ref)
    _folder(tmp_path / "data")
    shutil.copy(rotated, tmp_path / "data" / "cat" / "9.png")
    ds = ImageFolderDataset(tmp_path / "data", transform=model.image_transform)
    x, _ = ds[ds.samples.index((str(tmp_path / "data" / "cat" / "9.png"), 0))]
    assert torch.equal(x[None], model.image_transform.view(str(rotated)))


# ----------------------------------------------------------------------------- decompression bombs
@pytest.mark.parametrize("side", [30000, 10000], ids=["over-2x-PIL-limit", "between-1x-and-2x"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_decompression_bomb_is_a_salfcbm_error_naming_the_limit(entry, side, model, tmp_path, monkeypatch, capsys):
    bomb = _bomb(tmp_path / "bomb.png", side)
    if entry == "pil" and side == 30000:  # PIL itself refuses to open it; the lazy image never reaches salfcbm
        pytest.skip("PIL.Image.open raises before salfcbm sees the image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # PIL's own, between 1x and 2x
        _expect_error(entry, bomb, model, tmp_path, monkeypatch, capsys, ImageTooLargeError,
                      "MAX_IMAGE_PIXELS", "bomb.png" if entry != "pil" else "PIL image")


def test_the_pixel_limit_is_pils_and_raising_it_lets_the_image_through(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(_noise(40, 50)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError, match="40 px|50x40"):
        load_images(str(path))
    with pytest.raises(ImageTooLargeError):
        load_images(Image.fromarray(_noise(40, 50)))  # an in-memory PIL image too: the same rule
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # "None lifts it"
    assert load_images(str(path))[0].shape == (1, 3, 40, 50)


@pytest.mark.parametrize("entry", FOLDERS)
def test_a_decompression_bomb_in_a_folder_is_an_error_or_a_documented_skip(entry, tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "data")
    bomb = _bomb(root / "dog" / "bomb.png")
    if entry == "explorer":  # the explorer lists it; loading it is the single-image case above
        files, _, _ = _scan(entry, root, monkeypatch, capsys)
        assert str(bomb) in files
        return
    if entry in ("dataset", "cli"):  # without skip_corrupt: an error naming the file and the limit
        with pytest.raises((ImageTooLargeError, _CLIError), match="MAX_IMAGE_PIXELS") as e:
            _scan(entry, root, monkeypatch, capsys)
        assert "bomb.png" in str(e.value)
    if entry == "cli":
        files, _ = _cli_folder(root, monkeypatch, capsys, "--skip-corrupt")
        assert str(bomb) not in files and len(files) == 4
    if entry == "dataset-skip":
        files, labels, warned = _scan(entry, root, monkeypatch, capsys)
        assert str(bomb) not in files and len(files) == 4
        assert any("bomb.png (too large" in w for w in warned), warned


# ----------------------------------------------------------------------------- thin images (resize blow-up)
@pytest.mark.parametrize("entry", ["preprocess", "cli", "explorer"])
def test_a_thin_image_is_refused_before_its_resize(entry, model, tmp_path, monkeypatch, capsys):
    """1 x 8000 px in ~100 bytes: resizing its shorter side to the input would make it 32 x 256000 (and
    0.5 GB at 64 px) before the crop. Refused by the aspect-ratio budget, before anything is resized."""
    thin = _thin(tmp_path / "thin.png")
    assert thin.stat().st_size < 200
    import torchvision.transforms.v2.functional as TF

    calls = []
    real = TF.resize
    monkeypatch.setattr(TF, "resize", lambda x, size, **k: calls.append(size) or real(x, size, **k))
    _expect_error(entry, thin, model, tmp_path, monkeypatch, capsys, ImageTooLargeError, "MAX_ASPECT_RATIO")
    assert calls == []


def test_the_resize_budget_is_the_same_for_paths_pil_images_and_tensors(model, tmp_path, monkeypatch):
    thin = _thin(tmp_path / "thin.png")
    t = model.image_transform
    for item in (str(thin), Image.open(thin), torch.zeros(1, 3, 1, 8000), np.zeros((1, 8000, 3), np.uint8)):
        with pytest.raises(ImageTooLargeError, match="8,000:1"):
            t.view(item)
    assert load_images(str(thin))[0].shape == (1, 3, 1, 8000)  # reading alone costs nothing: no resize
    ok = torch.rand(1, 3, 2, 100)  # 50:1, within the budget: read as before
    assert t.view(ok).shape == (1, 3, 32, 32)
    monkeypatch.setattr(core_images, "MAX_ASPECT_RATIO", 10_000.0)  # the documented way to raise it
    assert t.view(str(thin)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("entry", ["dataset", "dataset-skip", "cli"])
def test_a_thin_image_in_a_folder_is_an_error_or_a_documented_skip(entry, tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "data")
    thin = _thin(root / "cat" / "thin.png")
    if entry == "dataset-skip":
        files, _, warned = _scan(entry, root, monkeypatch, capsys)
        assert str(thin) not in files and len(files) == 4
        assert any("thin.png (too large" in w for w in warned), warned
    else:
        with pytest.raises((ImageTooLargeError, _CLIError), match="MAX_ASPECT_RATIO"):
            _scan(entry, root, monkeypatch, capsys)


# ----------------------------------------------------------------------------- FIFOs, sockets, devices
def _irregular(kind: str, path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        if len(str(path)) > 100:
            pytest.skip("the temporary path is too long for a UNIX socket")
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    elif kind == "device":
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero here")
        path.symlink_to("/dev/zero")  # an endless character device behind an image name
    else:
        path.symlink_to(path.parent / "gone.png")  # dangling
    return path


KINDS = ["fifo", "socket", "device", "dangling-link"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", [e for e in ENTRIES if e != "pil"])
def test_a_fifo_or_device_path_is_refused_without_blocking(entry, kind, model, tmp_path, monkeypatch, capsys):
    bad = _irregular(kind, tmp_path / "x.png")
    words = {"fifo": "FIFO", "socket": "socket", "device": "device", "dangling-link": "does not exist"}[kind]
    kind_err = ImageInputError
    if entry == "explorer":
        from salfcbm.errors import InputError

        kind_err, words = InputError, ""  # the explorer's own message: "No image file at ..."
    with pytest.raises((kind_err, _CLIError)) as e:
        _guarded(_read, entry, bad, model, tmp_path, monkeypatch, capsys, fifo=bad if kind == "fifo" else None)
    msg = str(e.value)
    assert "x.png" in msg and words in msg.replace(str(tmp_path), "TMP"), msg  # the words, not the test's folder name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", FOLDERS)
def test_a_fifo_or_device_in_a_folder_is_skipped_with_a_warning(entry, kind, tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "data")
    bad = _irregular(kind, root / "dog" / "x.png")
    files, labels, warned = _guarded(_scan, entry, root, monkeypatch, capsys, fifo=bad if kind == "fifo" else None)
    assert str(bad) not in files and len(files) == 4
    if entry != "explorer":
        assert labels == [0, 0, 1, 1]
        assert any("not regular files" in w and "x.png" in w for w in warned), warned


# ----------------------------------------------------------------------------- hidden files and folders
@pytest.mark.parametrize("entry", FOLDERS)
def test_hidden_folders_and_files_are_ignored(entry, tmp_path, monkeypatch, capsys):
    """Rule: names starting with '.' are ignored at every level (torchvision's ImageFolder keeps them)."""
    root = _folder(tmp_path / "data")
    for hidden in (root / ".ipynb_checkpoints", root / "cat" / ".thumbs"):
        hidden.mkdir()
        Image.fromarray(_noise(8, 8)).save(hidden / "x-checkpoint.png")
    Image.fromarray(_noise(8, 8)).save(root / "dog" / "._0.png")  # macOS AppleDouble
    (root / "dog" / ".DS_Store.png").write_bytes(b"\0\0\0\1Bud1")
    files, labels, _ = _scan(entry, root, monkeypatch, capsys)
    assert sorted(os.path.relpath(f, root) for f in files) == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    if entry != "explorer":
        assert labels == [0, 0, 1, 1]
    if entry.startswith("dataset"):
        assert ImageFolderDataset(root, size=32).classes == ["cat", "dog"]


# ----------------------------------------------------------------------------- symlink loops
@pytest.mark.parametrize("entry", FOLDERS)
def test_a_symlink_loop_ends_and_repeats_no_image(entry, tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "data")
    (root / "cat" / "sub").mkdir()
    Image.fromarray(_noise(8, 8)).save(root / "cat" / "sub" / "s.png")
    (root / "cat" / "sub" / "self").symlink_to(".")  # cat/sub/self/self/... : a loop
    (root / "cat" / "up").symlink_to("..")  # back to the root: the dog images must not become cats
    (root / "dog" / "again").symlink_to(root / "dog")
    (root / "dog" / "alias").symlink_to("../cat/sub")  # a real folder of another class: read once, as a dog
    files, labels, _ = _guarded(_scan, entry, root, monkeypatch, capsys)
    real = [os.path.realpath(f) for f in files]
    rel = sorted(os.path.relpath(f, root) for f in files)
    if entry == "explorer":  # rglob does not follow folder links at all
        assert rel == ["cat/0.png", "cat/1.png", "cat/sub/s.png", "dog/0.png", "dog/1.png"]
        return
    assert rel == ["cat/0.png", "cat/1.png", "cat/sub/s.png", "dog/0.png", "dog/1.png", "dog/alias/s.png"]
    assert len(set(zip(real, labels))) == len(real)  # no (image, label) twice
    assert labels == [0, 0, 0, 1, 1, 1]


def test_a_folder_linked_twice_in_a_class_is_read_once(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "cat" / "sub").mkdir()
    Image.fromarray(_noise(8, 8)).save(root / "cat" / "sub" / "s.png")
    (root / "cat" / "link-a").symlink_to("sub")
    (root / "cat" / "z-hardlinked.png").hardlink_to(root / "cat" / "0.png")
    ds = ImageFolderDataset(root, size=32)
    rel = [os.path.relpath(p, root) for p, _ in ds.samples]
    assert rel == ["cat/0.png", "cat/1.png", "cat/link-a/s.png", "dog/0.png", "dog/1.png"]


# ----------------------------------------------------------------------------- concept files
def _cli_concepts(path: Path, tmp_path: Path, monkeypatch, capsys) -> list[str]:
    """The concepts ``salfcbm train --concepts path`` hands to ``wrap`` (stopped right there)."""
    got: dict = {}

    class _Stop(SalfCBMError):
        pass

    def wrap(backbone, *, concepts, **k):
        got["concepts"] = list(concepts)
        raise _Stop("stopped after reading the concepts")

    root = _folder(tmp_path / "cli-data")
    monkeypatch.setattr(salfcbm, "wrap", wrap)  # what `salfcbm train` calls
    monkeypatch.setattr(salfcbm.cli.train, "build_cli_backbone", lambda *a: (M.backbone(), None))
    rc = salfcbm.cli.main(["train", "--backbone", "x", "--train", str(root), "--val", str(root), "--concepts",
                           str(path), "--run-dir", str(tmp_path / "run"), "--image-size", "32", "--quiet"])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("salfcbm: error: "), err
    if "concepts" not in got:
        raise _CLIError(lines[0])
    return got["concepts"]


def _concepts(entry: str, path: Path, tmp_path, monkeypatch, capsys) -> list[str]:
    if entry == "cli":
        return _cli_concepts(path, tmp_path, monkeypatch, capsys)
    return load_concepts(str(path) if entry == "api-str" else path)


@pytest.mark.parametrize("entry", ["api", "api-str", "cli"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_concept_file_with_a_byte_order_mark_reads_as_without(entry, newline, tmp_path, monkeypatch, capsys):
    text = newline.join(["# birds", "a wing", "a beak", "", "water"]) + newline
    (tmp_path / "plain.txt").write_bytes(text.replace("# birds", "fur").encode())
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("# birds", "fur").encode())
    (tmp_path / "bom-comment.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    want = ["fur", "a wing", "a beak", "water"]
    assert _concepts(entry, tmp_path / "plain.txt", tmp_path, monkeypatch, capsys) == want
    assert _concepts(entry, tmp_path / "bom.txt", tmp_path, monkeypatch, capsys) == want
    assert _concepts(entry, tmp_path / "bom-comment.txt", tmp_path, monkeypatch, capsys) == want[1:]


BAD_TEXT = {
    "binary": (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "NUL byte on line 3"),
    "nul-after-cr": (b"fur\rwhiskers\r\0", "NUL byte on line 3"),
    "nul": (b"fur\nwhis\0kers\n", "NUL byte on line 2"),
    "latin-1": ("fur\nna\u00efve\n".encode("latin-1"), "not valid UTF-8 (byte 0xef on line 2)"),
    "utf-16": ("fur\nwhiskers\n".encode("utf-16"), "UTF-16"),
    "lone-surrogate": ("fur\n\ud800\n".encode("utf-8", "surrogatepass"), "line 2"),
}


@pytest.mark.parametrize("entry", ["api", "cli"])
@pytest.mark.parametrize("case", sorted(BAD_TEXT))
def test_a_binary_or_undecodable_concept_file_is_refused_naming_the_file_and_line(entry, case, tmp_path,
                                                                                   monkeypatch, capsys):
    data, words = BAD_TEXT[case]
    path = tmp_path / f"{case}.txt"
    path.write_bytes(data)
    with pytest.raises((TextFileError, _CLIError)) as e:
        _concepts(entry, path, tmp_path, monkeypatch, capsys)
    assert f"{case}.txt" in str(e.value) and words in str(e.value), str(e.value)


def test_a_fifo_as_the_concept_file_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "c.txt")
    with pytest.raises(TextFileError, match="FIFO"):
        _guarded(load_concepts, tmp_path / "c.txt", fifo=tmp_path / "c.txt")


# ----------------------------------------------------------------------------- fuzzing
def _seeds() -> list[bytes]:
    out = []
    rng = np.random.default_rng(0)
    for fmt, mode in (("PNG", "RGB"), ("PNG", "LA"), ("PNG", "P"), ("JPEG", "RGB"), ("JPEG", "L"), ("GIF", "P"),
                      ("BMP", "RGB"), ("TIFF", "I;16"), ("WEBP", "RGBA")):
        arr = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
        im = Image.fromarray(arr).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            im = Image.fromarray((np.asarray(im).astype(np.uint16) * 257))
        exif = Image.Exif()
        exif[0x0112] = int(rng.integers(1, 9))
        buf = io.BytesIO()
        kw = {"exif": exif} if fmt in ("PNG", "JPEG", "WEBP") else {}
        try:
            im.save(buf, fmt, **kw)
        except (OSError, KeyError):  # a format this Pillow was built without
            continue
        out.append(buf.getvalue())
    out.append(_png_header(1, 9000))
    out.append(_png_header(5000, 5000))
    return out


SEEDS = _seeds()


@st.composite
def _image_bytes(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:  # the header's size fields are where the bombs live
            p = draw(st.integers(0, min(len(data), 40) - 1))
            data[p] = draw(st.integers(0, 255))
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(st.binary(max_size=256))
    return bytes(data)


def _check_image_outcome(fn) -> None:
    try:
        x = fn()
    except SalfCBMError:
        return
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.dim() == 4 and x.shape[:2] == (1, 3)
    assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


@settings(max_examples=FUZZ or 60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_image_bytes())
def test_fuzzed_image_bytes_give_an_image_or_a_salfcbm_error(tmp_path, data):
    path = tmp_path / "fuzz.img"
    path.write_bytes(data)
    view = ImageTransform(size=(16, 16))
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 4_000_000  # keep the examples cheap: the budget itself is under test
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check_image_outcome(lambda: load_images(str(path))[0])
            _check_image_outcome(lambda: view.view(str(path)))
            try:
                im = Image.open(io.BytesIO(data))  # what a user would pass: PIL's own errors are theirs
            except Exception:  # noqa: BLE001
                return
            _check_image_outcome(lambda: load_images(im)[0])
    finally:
        Image.MAX_IMAGE_PIXELS = limit


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=FUZZ or 80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT, bom=st.booleans(), crlf=st.booleans(), nul=st.booleans())
def test_fuzzed_concept_text_gives_concepts_or_a_salfcbm_error(tmp_path, text, bom, crlf, nul):
    plain = text.replace("\r", "").lstrip("\ufeff")  # a second BOM after the first is content (U+FEFF)
    body = plain.replace("\n", "\r\n") if crlf else plain
    if nul:
        body = body + "\0"
    path = tmp_path / "c.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8"))
    try:
        got = load_concepts(path)
    except SalfCBMError as e:
        assert nul or "\0" in text, e
        assert isinstance(e, TextFileError)
        return
    assert not nul and "\0" not in text
    assert all(isinstance(c, str) and c and c == c.strip() for c in got)
    assert not any("\r" in c or "\n" in c or c.startswith("\ufeff") for c in got)
    assert len({c.lower() for c in got}) == len(got)
    (tmp_path / "ref.txt").write_bytes(plain.encode("utf-8"))  # the same text, no BOM, LF
    assert got == load_concepts(tmp_path / "ref.txt")


@settings(max_examples=FUZZ or 40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_fuzzed_concept_bytes_give_concepts_or_a_salfcbm_error(tmp_path, data):
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    try:
        got = load_concepts(path)
    except SalfCBMError as e:
        assert isinstance(e, TextFileError) and "c.txt" in str(e)
        return
    assert all(isinstance(c, str) and c for c in got)
