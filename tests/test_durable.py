"""durable.write_atomically, the one way a file is written: all of it or nothing, never half a file."""
from __future__ import annotations

import ast
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.durable import save_array, write_atomically
from pipeline.pictures.montage import save_jpeg, save_png


def half_then_fail(tmp: Path) -> None:
    tmp.write_bytes(b"half a file")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fsync", [False, True])
def test_a_failed_write_leaves_no_file_and_no_temp(tmp_path, fsync):
    with pytest.raises(OSError, match="No space left"):
        write_atomically(tmp_path / "x.bin", half_then_fail, fsync=fsync)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fsync", [False, True])
def test_a_failed_write_keeps_the_previous_file(tmp_path, fsync):
    (tmp_path / "x.bin").write_bytes(b"the old file")
    with pytest.raises(OSError):
        write_atomically(tmp_path / "x.bin", half_then_fail, fsync=fsync)
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    assert (tmp_path / "x.bin").read_bytes() == b"the old file"


def test_an_interrupt_mid_write_leaves_no_temp(tmp_path):
    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "x.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_a_durable_replace_keeps_the_mode(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")
    p.chmod(0o600)
    write_atomically(p, lambda tmp: tmp.write_bytes(b"new"), fsync=True)
    assert p.read_bytes() == b"new" and stat.S_IMODE(p.stat().st_mode) == 0o600


def test_arrays_and_pictures_round_trip(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_array(tmp_path / "a.npy", a)
    assert np.array_equal(np.load(tmp_path / "a.npy"), a)
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, 4:] = 255
    save_png(img, tmp_path / "a.png")
    save_jpeg(img, tmp_path / "a.jpg")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), img)
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.format == "JPEG" and np.abs(np.asarray(im).astype(int) - img).max() < 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.npy", "a.png"]


@pytest.mark.parametrize("save", [save_png, save_jpeg])
def test_a_failed_picture_write_leaves_no_file(tmp_path, monkeypatch, save):
    """A kept JPEG is written once, behind ``if not exists``: half of one must never be left there."""
    def full_disk(self, fp, *a, **kw):
        Path(fp).write_bytes(b"half a picture")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError):
        save(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.img")
    assert list(tmp_path.iterdir()) == []


def test_no_module_renames_files_itself():
    """``os.replace``/``os.rename``/``fsync_rename`` are called in durable.py only (and in faults.py, which
    durable.py imports, so its ready file for tests cannot go through durable.py): every other writer goes
    through ``write_atomically``."""
    root = Path(__file__).resolve().parent.parent / "pipeline"
    bad = []
    for path in root.rglob("*.py"):
        if path.name in ("durable.py", "faults.py") and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = (f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                        else getattr(f, "id", None))
                if name in ("os.replace", "os.rename", "fsync_rename"):
                    bad.append(f"{path.relative_to(root.parent)}:{node.lineno} {name}")
    assert not bad, "\n".join(bad)
