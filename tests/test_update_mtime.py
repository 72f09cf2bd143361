"""``mine run --update`` reads only what is new or changed (issue 24).

The store records each file's size, mtime and ctime (jobs.update); an update skips the
files whose three values match without opening them. Checked against independent
references: which files were opened (``MINE_TRACE_READS``, one line per read), the sizes
``os.stat`` gives, and ``--update --rehash`` (every file read and hashed, as before), whose
store the metadata shortcut must equal.
"""
import os
import shutil
from datetime import datetime, timezone

import h5py
import numpy as np
import pytest
from jobs_util import FILE_META, SIZE, all_images, assert_same_store, cfg, make_images
from PIL import Image

from pipeline import run
from pipeline.data import sources
from pipeline.jobs import update
from pipeline.jobs.record import JobStats


@pytest.fixture(scope="module")
def net():
    from pipeline.models.weights import load_network

    return load_network("vgg16", "random", SIZE)


@pytest.fixture()
def trusting(monkeypatch):
    """Files written less than a second before the base store's job started are "racy" (their
    metadata is not trusted, jobs.update.racy); these tests write them and mine at once."""
    monkeypatch.setattr(update, "racy", lambda meta, since: False)


def test_racy_rule():
    """By hand: a file changed within 10 ms (2 s with whole-second stamps) of the listing is racy."""
    t = 1_700_000_000_500_000_000
    assert update.racy((1, t - 5_000_000, t - 5_000_000), t)
    assert not update.racy((1, t - 20_000_000, t - 20_000_000), t)
    whole = 1_700_000_000_000_000_000
    assert update.racy((1, whole - 10**9, whole - 10**9), whole + 500_000_000)
    assert not update.racy((1, whole - 3 * 10**9, whole - 3 * 10**9), whole)
    assert update.listed_since({"created": "2026-12-06T05:00:10+00:00", "seconds": 10.0}) == \
        int(datetime(2026, 12, 6, 5, 0, 0, tzinfo=timezone.utc).timestamp()) * 10**9


def traced(monkeypatch, path):
    monkeypatch.setattr(sources, "_TRACE", str(path))
    path.unlink(missing_ok=True)


def opened(path) -> list[str]:
    return [line.split("\t")[2] for line in path.read_text().splitlines()] if path.exists() else []


def test_store_records_size_mtime_ctime(tmp_path, trusting, net):
    images = make_images(tmp_path / "img")
    store = run(cfg(images, tmp_path / "s.h5"), net=net).store
    with h5py.File(store, "r") as f:
        paths = [p.decode() for p in f["images/path"][()]]
        got = {c: f[f"images/{c}"][()] for c in ("size", "mtime_ns", "ctime_ns")}
    for j, p in enumerate(paths):
        st = os.stat(images / p)
        assert (got["size"][j], got["mtime_ns"][j], got["ctime_ns"][j]) == (st.st_size, st.st_mtime_ns,
                                                                             st.st_ctime_ns), p


def test_update_reads_only_touched_rewritten_and_new_files(tmp_path, monkeypatch, trusting, net):
    images = make_images(tmp_path / "img")
    base = run(cfg(images, tmp_path / "s.h5"), net=net).store
    # touch one (same bytes, new mtime), rewrite one, add one, delete one
    touched, rewritten, added, deleted = "a/img01.png", "a/img02.png", "b/new.png", "b/img10.png"
    st = os.stat(images / touched)
    os.utime(images / touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(images / rewritten)
    Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(images / added)
    (images / deleted).unlink()
    broken = "a/broken.jpg"  # a skipped file is always tried again (it may have been repaired)

    shutil.copy(base, tmp_path / "u.h5")
    shutil.copy(base, tmp_path / "r.h5")
    trace = tmp_path / "reads.txt"
    traced(monkeypatch, trace)
    stats = JobStats()
    res = run(cfg(images, tmp_path / "u.h5", update=str(tmp_path / "u.h5")), net=net, stats=stats)
    reads = opened(trace)
    assert set(reads) <= {touched, rewritten, added, broken} and {touched, rewritten, added} <= set(reads), reads
    assert stats.bytes_read == sum(os.path.getsize(images / p) for p in {touched, rewritten, added, broken})
    assert res.mode == "update" and res.images_new == 2  # the rewritten and the new file

    traced(monkeypatch, trace)
    run(cfg(images, tmp_path / "r.h5", update=str(tmp_path / "r.h5"), rehash=True), net=net)
    assert sorted(set(opened(trace))) == sorted(p.relative_to(images).as_posix() for p in all_images(images))
    assert_same_store(tmp_path / "u.h5", tmp_path / "r.h5", ignore=("created", "seconds", "versions", "inputs_id"))
    with h5py.File(tmp_path / "u.h5", "r") as f, h5py.File(tmp_path / "r.h5", "r") as g:
        paths = [p.decode() for p in f["images/path"][()]]
        assert deleted in paths  # every file has its metadata, the deleted one its old, as --rehash found
        for n in FILE_META:
            assert (f[n][()] >= 0).all() and (f[n][()] == g[n][()]).all(), n


def test_store_without_file_metadata_is_rehashed_once(tmp_path, monkeypatch, trusting, net):
    images = make_images(tmp_path / "img")
    old = run(cfg(images, tmp_path / "s.h5"), net=net).store
    with h5py.File(old, "a") as f:  # as written before the columns existed
        for n in FILE_META:
            del f[n]
    trace = tmp_path / "reads.txt"
    traced(monkeypatch, trace)
    run(cfg(images, tmp_path / "s.h5", update=str(old)), net=net)
    assert len(opened(trace)) == len(all_images(images))  # everything hashed once, no error
    traced(monkeypatch, trace)
    run(cfg(images, tmp_path / "s.h5", update=str(old)), net=net)
    assert opened(trace) == ["a/broken.jpg"]  # then nothing but the skipped file
