"""The checkpoint file format stays what earlier versions of mine wrote (issue 22 moved the
statistics behind one protocol; a checkpoint of a job killed before the upgrade must resume).

``write_reference_layout`` below writes the statistics of a checkpoint in the layout as it was
before that change, by hand (array names, order, dtypes, zlib-packed histograms): the files
``save_checkpoint`` writes hold the same arrays in the same order, and a run resumes from a
file of that layout to the uninterrupted run's store.
"""
import zlib

import numpy as np
import torch
from jobs_util import assert_same_store, cfg, crashed_run

from pipeline import run
from pipeline.jobs.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint


def write_reference_layout(path, ck: Checkpoint, records_from) -> None:
    """The layout of version 1: ``meta`` (JSON), the image records (copied from the file
    ``records_from``), then for every layer j its top-k ``top{j}_values/keys/pos`` followed by
    each statistics contribution i's ``stat{i}_{j}_hist`` (zlib of the int64 little-endian
    counts, level 1), ``_fired``, ``_images``; then ``pooled{j}_keys/rows``."""
    with np.load(records_from, allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files if n.startswith(("meta", "rec_", "reason_"))}
    for j, layer in enumerate(ck.tops):
        for n in ("values", "keys", "pos"):
            arrays[f"top{j}_{n}"] = ck.tops[layer][n].numpy()
        for i, part in enumerate((ck.stats or {}).values()):
            hist = np.ascontiguousarray(np.asarray(part[layer]["hist"]), "<i8").tobytes()
            arrays[f"stat{i}_{j}_hist"] = np.frombuffer(zlib.compress(hist, 1), np.uint8)
            arrays[f"stat{i}_{j}_fired"] = np.asarray(part[layer]["fired"])
            arrays[f"stat{i}_{j}_images"] = np.asarray(part[layer]["images"])
    for j, sd in enumerate(ck.pooled.values()):
        for n in ("keys", "rows"):
            arrays[f"pooled{j}_{n}"] = sd[n].numpy()
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _arrays(path) -> list[tuple[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        return [(n, z[n]) for n in z.files]


def _assert_same_file_contents(a, b) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert [n for n, _ in xa] == [n for n, _ in xb]  # the same arrays in the same order
    for (n, x), (_, y) in zip(xa, xb):
        assert x.dtype == y.dtype and x.shape == y.shape, n
        np.testing.assert_array_equal(x, y, err_msg=n)


def test_saved_arrays_are_the_reference_layout(tmp_path):
    """Two layers, two statistics contributions, pooled vectors: ``save_checkpoint`` writes the
    reference layout, and ``load_checkpoint`` of a reference file gives back every state exactly."""
    g = torch.Generator().manual_seed(0)

    def top(c, k):
        return {"values": torch.rand(c, k, generator=g), "keys": torch.randint(0, 99, (c, k), generator=g),
                "pos": torch.randint(0, 9, (c, k), generator=g)}

    def stat(c):
        hist = torch.zeros(c, 773, dtype=torch.int64)
        hist[:, 380:400] = torch.randint(0, 50, (c, 20), generator=g)
        return {"hist": hist, "fired": torch.randint(0, 5, (c,), generator=g), "images": torch.tensor(7)}

    tops = {"a": top(3, 2), "b": top(4, 2)}
    stats = {"p1": {"a": stat(3), "b": stat(4)}, "p2": {"a": stat(3), "b": stat(4)}}
    pooled = {"b": {"keys": torch.tensor([3, 8]), "rows": torch.rand(2, 2, 4, generator=g).half()}}
    ck = Checkpoint({"images": {"count": 2}, "k": 2}, False, 3, {}, tops, pooled, stats)
    save_checkpoint(tmp_path / "new", ck)
    write_reference_layout(tmp_path / "ref", ck, tmp_path / "new")
    _assert_same_file_contents(tmp_path / "new", tmp_path / "ref")
    back = load_checkpoint(tmp_path / "ref")
    for got, want in ((back.tops, tops), (back.pooled, pooled)):
        assert list(got) == list(want)
        for layer in want:
            for n, v in want[layer].items():
                assert torch.equal(got[layer][n], v), (layer, n)
    assert list(back.stats) == ["p1", "p2"]
    for cid in stats:
        for layer in ("a", "b"):
            for n, v in stats[cid][layer].items():
                assert torch.equal(back.stats[cid][layer][n], v), (cid, layer, n)


def test_a_checkpoint_in_the_reference_layout_resumes_to_the_uninterrupted_store(images, net, full, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "r.h5"
    crashed_run(monkeypatch, cfg(images, out, checkpoint_every="1"), net)
    ck_path = checkpoint_path(out)
    ck = load_checkpoint(ck_path)
    assert 0 < len(ck.records) < 16 and ck.stats is not None
    ref = tmp_path / "ref.ckpt"
    write_reference_layout(ref, ck, ck_path)
    _assert_same_file_contents(ck_path, ref)
    ref.replace(ck_path)
    result = run(cfg(images, out), net=net)
    assert result.mode == "resume"
    assert_same_store(out, full)
