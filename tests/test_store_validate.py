"""Damaged stores: every command that opens one (info, top, render, merge, run --update) says
what is wrong in one line, exits 6 and leaves the file as it was (issue 13, item 4)."""
import json
import shutil

import h5py
import numpy as np
import pytest
from jobs_util import cli_args
from typer.testing import CliRunner

from pipeline import Store, exitcodes
from pipeline.cli import app
from pipeline.store.schema import StoreError

cli = CliRunner()


def _replace(f, name, data, **kw):
    del f[name]
    f.create_dataset(name, data=data, **kw)


def _set(f, name, index, v):
    a = f[name][()]
    a[index] = v
    f[name][...] = a


def _flip_byte(path, dataset):
    with h5py.File(path, "r") as f:
        assert f[dataset].fletcher32  # the writer protects uncompressed numeric data
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x10
    path.write_bytes(bytes(data))


# name -> (edit of an h5py file opened r+, or of the path for byte-level damage; words the error must contain)
DAMAGES = {
    "layer group missing": (lambda f: f.__delitem__("layers/conv3_1"), "/layers/conv3_1 is missing"),
    "layer dataset missing": (lambda f: f.__delitem__("layers/conv1_2/kept"), "/layers/conv1_2/kept is missing"),
    "value of wrong shape": (lambda f: _replace(f, "layers/conv1_2/value", f["layers/conv1_2/value"][:, :3]),
                             "/layers/conv1_2/value has shape"),
    "kept of wrong dtype": (lambda f: _replace(f, "layers/conv1_2/kept", f["layers/conv1_2/kept"][()].astype("f4")),
                            "dtype float32"),
    "box of wrong rank": (lambda f: _replace(f, "layers/pool2/box", f["layers/pool2/box"][..., 0]), "/layers/pool2/box"),
    "layer kept index out of range": (lambda f: _set(f, "layers/conv1_2/kept", (0, 0), 10_000), "outside -1.."),
    "kept image row out of range": (lambda f: _set(f, "kept/image", 0, 99_999), "/kept/image holds rows outside"),
    "position out of range": (lambda f: _set(f, "layers/conv3_1/y", (0, 0), 9_999), "/layers/conv3_1/y holds"),
    "box out of the input": (lambda f: _set(f, "layers/conv1_2/box", (0, 0, 2), 500), "box holds boxes outside"),
    "NaN in a filled slot": (lambda f: _set(f, "layers/conv1_2/value", (0, 0), np.nan), "NaN or infinity"),
    "values not best first": (lambda f: _set(f, "layers/conv1_2/value", (1, 3), 1e9), "not sorted best first"),
    "key not the kept image's": (lambda f: _set(f, "layers/conv1_2/key", (0, 0), 12345), "/layers/conv1_2/key differs"),
    "one image twice in a channel": (lambda f: _set(f, "layers/pool2/kept", (0, 1), f["layers/pool2/kept"][0, 0])
                                     or _set(f, "layers/pool2/key", (0, 1), f["layers/pool2/key"][0, 0]),
                                     "one image twice"),
    "k = 0": (lambda f: f.attrs.__setitem__("k", 0), "attribute k = 0"),
    "k is text": (lambda f: f.attrs.__setitem__("k", "nine"), "attribute k"),
    "layers not JSON": (lambda f: f.attrs.__setitem__("layers", "[conv1_2"), "layers is not valid JSON"),
    "preprocessing not JSON": (lambda f: f.attrs.__setitem__("preprocessing", "{mode: caffe"), "preprocessing"),
    "preprocessing mode unknown": (lambda f: f.attrs.__setitem__(
        "preprocessing", json.dumps({"mode": "sepia", "size": 32, "resize": "squash"})), "sepia"),
    "versions not an object": (lambda f: f.attrs.__setitem__("versions", "[1, 2]"), "versions"),
    "weights hash missing": (lambda f: f.attrs.__delitem__("weights_hash"), "weights_hash is missing"),
    "input size disagrees": (lambda f: f.attrs.__setitem__("input_size", 64), "input_size"),
    "images column missing": (lambda f: f.__delitem__("images/key"), "/images/key is missing"),
    "images columns of unequal length": (lambda f: _replace(f, "images/width", f["images/width"][:-2]),
                                         "/images columns differ in length"),
    "unknown image status": (lambda f: _replace(f, "images/status", ["ok"] * (len(f["images/status"]) - 1) + ["maybe"],
                                                dtype=h5py.string_dtype()), "maybe"),
    "kept keys out of order": (lambda f: _replace(f, "kept/key", f["kept/key"][()][::-1]), "/kept/key"),
    "kept pixels missing": (lambda f: f.__delitem__("kept/pixels"), "/kept/pixels is missing"),
    "kept pixels of another size": (lambda f: _replace(f, "kept/pixels", f["kept/pixels"][:, :16, :16]),
                                    "/kept/pixels has shape"),
    "switches of another image count": (lambda f: _replace(f, "switches/pool1", f["switches/pool1"][:-1]),
                                        "/switches/pool1"),
    "images_seen disagrees": (lambda f: f.attrs.__setitem__("images_seen", 3), "images_seen"),
    "flipped byte in an uncompressed dataset": ("flip:layers/conv1_2/value", "checksum does not match"),
}


#: Damage to /images values outside the kept rows: found by the commands that read the whole table
TABLE_VALUES = ("unknown image status",)


@pytest.fixture(scope="module")
def damaged(full, tmp_path_factory):
    """One damaged copy of the reference store per kind of damage."""
    root = tmp_path_factory.mktemp("damaged")
    out = {}
    for i, (name, (edit, _)) in enumerate(DAMAGES.items()):
        path = root / f"d{i:02d}.h5"
        shutil.copy(full, path)
        if isinstance(edit, str):
            _flip_byte(path, edit.split(":", 1)[1])
        else:
            with h5py.File(path, "r+") as f:
                edit(f)
        out[name] = path
    return out


def commands(store, images, full, tmp):
    return {
        "info": ["info", store],
        "top": ["top", store, "--layer", "conv1_2", "--feature", "0"],
        "render": ["render", store, "--feature", "0", "--device", "cpu", "--out", tmp / "r", "--quiet"],
        "merge": ["merge", full, store, "-o", tmp / "m.h5"],
        "update": cli_args(images, store, "--update", store),
    }


def test_at_least_twenty_kinds_of_damage():
    assert len(DAMAGES) >= 20


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_store_is_one_line_exit_6_untouched(damage, damaged, images, full, tmp_path):
    store = damaged[damage]
    before = store.read_bytes()
    needle = DAMAGES[damage][1]
    for command, args in commands(store, images, full, tmp_path).items():
        if damage in TABLE_VALUES and command in ("info", "top", "render"):
            continue  # they read no /images row but the kept ones (opening costs the same for any number)
        res = cli.invoke(app, [str(a) for a in args])
        where = f"{damage} / {command}: {res.stderr}"
        assert res.exit_code == exitcodes.STORE_ERROR, where
        lines = res.stderr.strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in res.stderr, where
        assert str(store) in errors[0] and needle in errors[0], where
        assert store.read_bytes() == before, where
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "r").exists()


def test_reference_store_is_valid_and_protected(full):
    """The undamaged store passes, and its uncompressed numeric datasets carry checksums."""
    with Store(full) as s:
        assert s.k == 4
    with h5py.File(full, "r") as f:
        for name in ("images/key", "images/width", "kept/image", "kept/key", "layers/conv1_2/value",
                     "layers/pool2/box"):
            assert f[name].fletcher32, name


def test_store_without_checksums_still_reads(full, tmp_path):
    """Stores written before checksums were added (same schema version) stay readable."""
    old = tmp_path / "old.h5"
    with h5py.File(full, "r") as src, h5py.File(old, "w") as dst:
        dst.attrs.update(src.attrs)

        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                d = dst.create_dataset(name, data=obj[()], dtype=obj.dtype)
                d.attrs.update(obj.attrs)
            else:
                dst.require_group(name).attrs.update(obj.attrs)

        src.visititems(copy)
    with h5py.File(old, "r") as f:
        assert not f["layers/conv1_2/value"].fletcher32
    a = cli.invoke(app, ["top", str(full), "--layer", "conv3_1", "--feature", "5", "--json"])
    b = cli.invoke(app, ["top", str(old), "--layer", "conv3_1", "--feature", "5", "--json"])
    assert a.exit_code == b.exit_code == 0 and json.loads(a.stdout) == json.loads(b.stdout)


def test_special_files_are_not_opened_as_stores(tmp_path):
    import os

    fifo = tmp_path / "s.h5"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        Store(fifo)
    res = cli.invoke(app, ["info", str(fifo)])
    assert res.exit_code == exitcodes.STORE_ERROR and "not a regular file" in res.stderr
