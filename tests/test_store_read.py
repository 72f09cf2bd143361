"""The ``Store`` methods that own the HDF5 layout (issue 22: nothing outside store/ indexes the file).

References: the same datasets read with plain h5py (what docs/store.md tells an h5py user), the
labels written into the source array, the quantile's bin found by hand from the raw counts, and
scripts/same_store.py for "everything else unchanged" after an embedding is written.
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import tiny_models
from typer.testing import CliRunner

from pipeline import RunConfig, Store, run
from pipeline.cli import app
from pipeline.mining import stats as unit_stats
from pipeline.render.heatmap import unit_hist, unit_level
from pipeline.store.write import write_embedding

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A store of 12 array items with labels (some contents repeated: duplicates), layers 1 and 4, pooled 4."""
    tmp = tmp_path_factory.mktemp("read")
    images, labels = tiny_models.digit_arrays()
    np.savez(tmp / "d.npz", images=images, labels=labels)
    cfg = RunConfig(images=str(tmp / "d.npz"), layer="1,4", model="tiny_models:digits", weights="random", size=16,
                    k=3, batch_size=4, workers=0, progress=False, device="cpu", out=str(tmp / "s.h5"), pooled="4")
    return Path(run(cfg).store), labels


def raw(path: Path, name: str):
    with h5py.File(path, "r") as f:
        return f[name][()]


def text(values) -> list[str]:
    return [v.decode() for v in values]


def test_image_columns_rows_and_labels(labelled):
    path, labels = labelled
    with Store(path) as s:
        assert list(s.image_column("path")) == text(raw(path, "images/path"))
        np.testing.assert_array_equal(s.image_column("key"), raw(path, "images/key"))
        rows = np.array([5, 0, 5, 11])
        assert list(s.image_column("status", rows)) == [text(raw(path, "images/status"))[r] for r in rows]
        assert s.labels() == [str(v) for v in labels]
        assert s.labels(rows) == [str(labels[r]) for r in rows]
        assert "duplicate" in list(s.image_column("status")), "the fixture has repeated contents"
        assert s.n_kept == len(raw(path, "kept/key")) == len(s.kept_keys())
        ok = text(raw(path, "images/status")).count("ok")  # the statistics count each content once
        assert s.stats_images() == ok < 12


def test_a_store_without_labels_says_none(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(folder / f"{i}.png")
    cfg = RunConfig(images=str(folder), layer="1", model="tiny_models:digits", weights="random", size=16, k=2,
                    workers=0, progress=False, device="cpu", out=str(tmp_path / "p.h5"))
    with Store(run(cfg).store) as s:
        assert s.labels() is None and not s.has_column("label")


def test_pooled_switches_and_pixels_datasets(labelled):
    path, _ = labelled
    with Store(path) as s:
        np.testing.assert_array_equal(s.pooled_dataset("4")[()], raw(path, "images/pooled_4"))
        with pytest.raises(ValueError, match="--pooled 1"):
            s.pooled_dataset("1")
        assert s.pools(), "layer 4 lies behind a max-pool: its switches are stored"
        for pool in s.pools():
            np.testing.assert_array_equal(s.switches_dataset(pool)[()], raw(path, f"switches/{pool}"))
        assert s.switches_dataset("no-such-pool") is None
        np.testing.assert_array_equal(s.pixels_dataset()[()], raw(path, "kept/pixels"))


def test_histograms_and_levels_are_the_stores(labelled):
    """A unit's row of /layers/L/hist, and its level inside the bin that holds the inverted-CDF quantile
    (found here from the raw counts: the first bin whose running count reaches ceil(q n))."""
    path, _ = labelled
    hist = raw(path, "layers/4/hist")
    edges = h5py.File(path, "r")["layers/4/hist"].attrs["edges"]
    with Store(path) as s:
        for c in range(len(hist)):
            np.testing.assert_array_equal(s.unit_hist("4", c), hist[c])
            assert unit_hist(s, "4", c)["counts"] == hist[c].astype(float).tolist()
            assert unit_hist(s, "4", c)["edges"] == edges.tolist()
        for q in (0.5, 0.99):
            level = s.levels("4", q)
            np.testing.assert_array_equal(unit_level(s, "4", q), level)  # the heatmap's level is the store's
            np.testing.assert_array_equal(s.unit_stats("4", q).quantile, level)  # and the statistics' own
            for c, counts in enumerate(hist):
                b = int(np.argmax(np.cumsum(counts) >= np.ceil(q * counts.sum())))
                assert edges[b] <= level[c] <= edges[b + 1] or (b == unit_stats.ZERO and level[c] == 0), (q, c)


def test_statistics_of_another_bins_version_are_not_read(labelled, tmp_path, caplog):
    path, _ = labelled
    other = tmp_path / "v2.h5"
    shutil.copyfile(path, other)
    with h5py.File(other, "a") as f:
        f["stats"].attrs["bins_version"] = 2
    with caplog.at_level(logging.WARNING), Store(other) as s:
        assert s.unit_hist("4", 0) is None and s.levels("4", 0.99) is None and s.stats_state("1") is None
        assert unit_level(s, "4") is None and unit_hist(s, "4", 1) is None  # the heatmap falls back to the top-k
        assert s.has_stats() and s.stats_images() > 0
    assert caplog.text.count("bins version 2") == 1, "one warning per store, not one per unit"
    r = CliRunner().invoke(app, ["info", str(other)])  # was an AttributeError traceback
    assert r.exit_code == 0 and "dead units   unknown: the statistics are of another bins version" in r.output, r.output


def _same_store():
    spec = importlib.util.spec_from_file_location("same_store", ROOT / "scripts" / "same_store.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_write_embedding_adds_only_the_embedding(labelled, tmp_path):
    path, _ = labelled
    copy = tmp_path / "e.h5"
    shutil.copyfile(path, copy)
    with Store(copy) as s:
        n = s.n_images
        assert s.embedding("4") is None
    xy = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    write_embedding(copy, "4", xy, {"method": "pca", "knn": {"a": 0.5}})
    write_embedding(copy, "4", xy + 1, {"method": "pca", "knn": {"a": 0.25}})  # a second run replaces it
    with Store(copy) as s:
        np.testing.assert_array_equal(s.embedding("4"), xy + 1)
    with h5py.File(copy, "r") as f:
        assert f["embed/4"].attrs["knn"] == '{"a": 0.25}'
    with h5py.File(path, "r") as a, h5py.File(copy, "r") as b:
        assert _same_store().compare(a, b) == ["/embed: group only in B", "/embed/4: dataset only in B"]


def test_is_store_and_the_one_store_of_a_folder(labelled, tmp_path):
    from pipeline.cli import only_store
    from pipeline.store.read import is_store

    path, _ = labelled
    (tmp_path / "junk.h5").write_bytes(b"not HDF5 at all")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    assert [is_store(p) for p in (path, tmp_path / "junk.h5", tmp_path / "other.h5")] == [True, False, False]
    with pytest.raises(ValueError, match="no store"):
        only_store(tmp_path)
    shutil.copyfile(path, tmp_path / "a.h5")
    assert only_store(tmp_path) == tmp_path / "a.h5"
    shutil.copyfile(path, tmp_path / "b.h5")
    with pytest.raises(ValueError, match="2 stores in .*: give one of a.h5, b.h5"):
        only_store(tmp_path)
