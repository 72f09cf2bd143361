"""scripts/same_store.py: two stores are the same but for timing attributes, or each difference is one line.

References: a real (tiny) store, a byte copy of it with other timing attributes (identical by
construction), a second run of the same job (identical: mining is deterministic on the CPU), and
copies with one hand-made change each, whose expected line is written out here.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pipeline import RunConfig, run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "same_store.py"


def _script():
    spec = importlib.util.spec_from_file_location("same_store", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


same_store = _script()


def _mine(tmp: Path, name: str) -> Path:
    folder = tmp / "images"
    if not folder.exists():
        folder.mkdir()
        rng = np.random.default_rng(3)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = RunConfig(images=str(folder), layer="conv1_1,conv2_1", model="vgg16", weights="random", size=32,
                    workers=0, k=3, batch_size=2, pooled="conv2_1", out=str(tmp / name), progress=False, device="cpu")
    return Path(run(cfg).store)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _mine(tmp_path_factory.mktemp("same"), "a.h5")


def _copy(store: Path, tmp: Path, change=None) -> Path:
    out = tmp / "b.h5"
    shutil.copyfile(store, out)
    with h5py.File(out, "a") as f:
        f.attrs["created"] = "2000-01-01T00:00:00+00:00"  # timing: ignored
        f.attrs["seconds"] = 12345.0
        if change:
            change(f)
    return out


def test_copy_with_other_timing_attributes_is_identical(store, tmp_path, capsys):
    assert same_store.main([str(store), str(_copy(store, tmp_path))]) == 0
    assert capsys.readouterr().out.startswith("identical:")


def test_a_second_run_of_the_same_job_is_identical(store, tmp_path, capsys):
    again = _mine(store.parent, "again.h5")
    with h5py.File(store, "r") as a, h5py.File(again, "r") as b:
        assert a.attrs["created"] != b.attrs["created"] or a.attrs["seconds"] != b.attrs["seconds"]
    assert same_store.main([str(store), str(again)]) == 0, capsys.readouterr().out


def _set_value(f):
    f["layers/conv2_1/value"][1, 2] = np.float32(-7.5)


def _set_layer_attr(f):
    f["layers/conv1_1"].attrs["rf"] = 99


def _set_root_attr(f):
    f.attrs["k"] = 4


def _drop_fires(f):
    del f["layers/conv1_1/fires"]


def _new_attr(f):
    f["kept/pixels"].attrs["note"] = "x"


def _retype(f):
    v = f["kept/key"][()]
    del f["kept/key"]
    f["kept"].create_dataset("key", data=v.astype(np.int32))


CHANGES = [
    (_set_value, "/layers/conv2_1/value: values differ at 1 of "),
    (_set_layer_attr, "/layers/conv1_1: attribute rf differs: A "),
    (_set_root_attr, "/: attribute k differs: A 3, B 4"),
    (_drop_fires, "/layers/conv1_1/fires: dataset only in A"),
    (_new_attr, "/kept/pixels: attribute note only in B"),
    (_retype, "/kept/key: dtype differs: A int64, B int32"),
]


@pytest.mark.parametrize("change, line", CHANGES, ids=[c.__name__ for c, _ in CHANGES])
def test_one_change_is_one_line_and_exit_1(store, tmp_path, capsys, change, line):
    assert same_store.main([str(store), str(_copy(store, tmp_path, change))]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith(line), out
    assert out[1].startswith("1 difference(s)")


def test_the_value_line_names_the_element_and_both_values(store, tmp_path, capsys):
    with h5py.File(store, "r") as f:
        before = float(f["layers/conv2_1/value"][1, 2])
        size = f["layers/conv2_1/value"].size
    same_store.main([str(store), str(_copy(store, tmp_path, _set_value))])
    assert capsys.readouterr().out.splitlines()[0] == (
        f"/layers/conv2_1/value: values differ at 1 of {size} elements, first (1, 2): A {before!r}, B -7.5")


def test_ignore_option_and_the_command_line(store, tmp_path):
    changed = _copy(store, tmp_path, lambda f: f.attrs.__setitem__("images_root", "/elsewhere"))
    cmd = [sys.executable, str(SCRIPT), str(store), str(changed)]
    got = subprocess.run(cmd, capture_output=True, text=True)
    assert got.returncode == 1 and got.stdout.startswith("/: attribute images_root differs")
    got = subprocess.run([*cmd, "--ignore", "images_root"], capture_output=True, text=True)
    assert got.returncode == 0, got.stdout
