"""The run's per-image records and seen keys as columns (mining.records), against the plain
Python objects they replace: a dict of ImageRecord, a set of ints."""
from __future__ import annotations

import hashlib

import numpy as np
from table_reference import images_table_of_rows

from pipeline.jobs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pipeline.jobs.distributed import OTHER, merge_checkpoints
from pipeline.mining.keyset import KeySet
from pipeline.mining.records import ImageRecord, Records
from pipeline.mining.stats import UnitStats
from pipeline.mining.stream import StreamState, _sort_out
from pipeline.mining.topk import RunningTopK

REASONS = ["", "", "", "duplicate", "known", "truncated", "corrupt: OSError: bad", OTHER]


def random_record(rng, i: int) -> ImageRecord:
    sha = hashlib.sha256(rng.bytes(8)).hexdigest() if rng.random() < 0.9 else ""
    reason = REASONS[rng.integers(len(REASONS))]
    return ImageRecord(i, int(rng.integers(0, 2**63 - 1)), sha, reason == "" and rng.random() < 0.8, reason,
                       int(rng.integers(0, 5000)), int(rng.integers(0, 5000)))


def fill(rng, n: int = 400, span: int = 1000) -> tuple[Records, dict[int, ImageRecord]]:
    """The same random inserts, overwrites and setdefaults into ``Records`` and a dict."""
    cols, ref = Records(), {}
    for _ in range(n):
        i = int(rng.integers(0, span))
        r = random_record(rng, i)
        if rng.random() < 0.3:
            assert cols.setdefault(i, r) == ref.setdefault(i, r)
        else:
            cols[i], ref[i] = r, r
    return cols, ref


def test_records_behave_as_a_dict_of_image_records():
    rng = np.random.default_rng(0)
    cols, ref = fill(rng)
    assert len(cols) == len(ref)
    assert list(cols) == sorted(ref) and list(cols.keys()) == sorted(ref)  # index order
    assert list(cols.values()) == [ref[i] for i in sorted(ref)]
    assert dict(cols.items()) == ref
    for i in range(-3, 1200):
        assert (i in cols) == (i in ref)
        assert cols.get(i) == ref.get(i)
    for n in (0, 1, 7, len(ref), len(ref) + 5):  # the last n added, newest first: reversed(dict)
        assert cols.newest(n).tolist() == list(reversed(ref))[:n]
    assert cols.count_reason("known", "duplicate") == sum(r.reason in ("known", "duplicate") for r in ref.values())
    assert cols.missing(1100).tolist() == [i for i in range(1100) if i not in ref]
    assert dict(Records.of(ref).items()) == ref and dict(cols.copy().items()) == ref


def test_batches_and_merges_match_the_dict():
    rng = np.random.default_rng(1)
    a, ra = fill(rng)
    b, rb = fill(rng)
    merged, ref = a.copy(), dict(ra)
    merged.merge_from(b, exclude=OTHER)
    for i in sorted(rb):  # merge_from takes the other's records in index order
        if rb[i].reason != OTHER:
            ref.setdefault(i, rb[i])
    assert dict(merged.items()) == ref
    assert merged.newest(len(ref)).tolist() == list(reversed(ref))
    idx = np.array(sorted(ref)[::3])
    merged.set_reason(idx, False, "duplicate")
    for i in idx.tolist():
        ref[i] = ImageRecord(i, ref[i].key, ref[i].sha256, False, "duplicate", ref[i].width, ref[i].height)
    assert dict(merged.items()) == ref and dict(merged.subset(merged.indices()).items()) == ref


def test_checkpoint_round_trip_and_merge(tmp_path):
    rng = np.random.default_rng(2)
    cols, ref = fill(rng)
    tops = {"l": RunningTopK(3, 2).state()}
    fp = {"images": {"count": 10_000}}
    save_checkpoint(tmp_path / "a.ckpt", Checkpoint(fp, False, 3, cols, tops))
    save_checkpoint(tmp_path / "b.ckpt", Checkpoint(fp, False, 3, ref, tops))  # a plain dict, as before
    with np.load(tmp_path / "a.ckpt") as za, np.load(tmp_path / "b.ckpt") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for name in za.files:
            if name != "meta":
                assert za[name].dtype == zb[name].dtype and np.array_equal(za[name], zb[name]), name
    back = load_checkpoint(tmp_path / "a.ckpt").records
    assert dict(back.items()) == ref and list(back) == sorted(ref)
    other, ref2 = fill(rng)
    save_checkpoint(tmp_path / "c.ckpt", Checkpoint(fp, False, 5, other, tops))
    merged = merge_checkpoints([load_checkpoint(tmp_path / "a.ckpt"), load_checkpoint(tmp_path / "c.ckpt")])
    want = {}
    for recs in (ref, ref2):
        for i in sorted(recs):
            if recs[i].reason != OTHER:
                want.setdefault(i, recs[i])
    assert dict(merged.records.items()) == want and merged.batches == 5


def test_key_set_is_a_set():
    rng = np.random.default_rng(3)
    ks, ref = KeySet(), set()
    for step in range(300):
        batch = rng.integers(-50, 3000, size=int(rng.integers(0, 40)))
        if step % 7 == 0:
            batch = np.concatenate([batch, rng.integers(-2**63, 2**63 - 1, size=3)])
        ks |= batch
        ref |= set(batch.tolist())
        if step % 25 == 0:
            probe = rng.integers(-60, 3100, size=200)
            assert ks.contains(probe).tolist() == [int(k) in ref for k in probe]
    assert len(ks) == len(ref) and list(ks) == sorted(ref) and ks.array().tolist() == sorted(ref)
    assert all(k in ks for k in list(ref)[:50]) and 10**12 not in ks
    ks.add(10**12)
    assert 10**12 in ks and len(ks) == len(ref) + 1
    assert len(KeySet()) == 0 and not KeySet().contains([1, 2]).any() and list(KeySet()) == []


def test_a_batch_is_sorted_out_as_one_image_at_a_time():
    """_sort_out against the loop it replaces: a content seen before, or earlier in the batch, is a duplicate."""
    import torch

    rng = np.random.default_rng(4)
    state = StreamState({"l": RunningTopK(3, 2)}, {"l": UnitStats(3)})
    seen: set[int] = set()
    ref: dict[int, ImageRecord] = {}
    for b in range(6):
        n = 17
        keys = rng.integers(0, 30, size=n)
        ok = rng.random(n) < 0.8
        batch = {"index": torch.arange(b * n, (b + 1) * n), "key": torch.from_numpy(keys), "ok": torch.from_numpy(ok),
                 "sha256": [hashlib.sha256(bytes([int(k)])).hexdigest() if o else "" for k, o in zip(keys, ok)],
                 "reason": ["" if o else "truncated" for o in ok],
                 "width": torch.full((n,), 7), "height": torch.full((n,), 9)}
        fed, rows, new = _sort_out(batch, state)
        want_fed = []
        for j in range(n):
            good, reason, key = bool(ok[j]), batch["reason"][j], int(keys[j])
            if good and key in seen:
                good, reason = False, "duplicate"
            elif good:
                seen.add(key)
            want_fed.append(good)
            ref[b * n + j] = ImageRecord(b * n + j, key, batch["sha256"][j], good, reason, 7, 9)
        assert fed.tolist() == want_fed
        state.records.add_batch(rows)
        state.seen_keys.update(new)
        assert sorted(state.seen_keys) == sorted(seen)
    assert dict(state.records.items()) == ref


def test_reserve_keeps_the_records_and_their_order():
    rng = np.random.default_rng(5)
    cols, ref = fill(rng, span=300)
    cols.reserve(5000)
    assert dict(cols.items()) == ref and cols.newest(len(ref)).tolist() == list(reversed(ref))
    more, ref_more = fill(rng, span=5000)
    for i, r in ref_more.items():
        cols[i] = ref[i] = r
    assert dict(cols.items()) == ref and cols.newest(len(ref)).tolist() == list(reversed(ref))
    assert len(cols.present) == 5000  # no doubling past what was reserved


class _Source:
    """What images_table asks of a source: paths, relpath, label."""

    def __init__(self, n: int, labels: dict[int, str]) -> None:
        self.paths = [f"/r/f{i:03d}.png" for i in range(n)]
        self.labels = labels

    def relpath(self, p: str) -> str:
        return p[len("/r/"):]

    def relname(self, i: int) -> str:
        return self.relpath(self.paths[i])

    def label(self, i: int):
        return self.labels.get(i) if self.labels else None


def _reference_table(source, ref: dict[int, ImageRecord], listed: np.ndarray) -> dict:
    """The images table as main made it: one row per file, the store's own ok/duplicate rule."""
    rows = []
    for i, p in enumerate(source.paths):
        r = ref[i]
        used = r.ok or r.reason == "duplicate"
        meta = tuple(listed[i].tolist()) if listed[i, 0] != -1 else None
        rows.append((source.relpath(p), r.sha256, r.key, None if used else f"skipped: {r.reason}", r.width,
                     r.height, source.label(i), meta))
    return images_table_of_rows(rows)


def test_images_table_in_chunks_equals_the_one_table(monkeypatch):
    from pipeline import runner

    rng = np.random.default_rng(6)
    for n, labels, chunk in ((40, {}, 7), (40, {3: "cat", 30: "dog"}, 7), (25, {20: "x"}, 100), (0, {}, 5)):
        monkeypatch.setattr(runner, "TABLE_CHUNK", chunk)
        cols, ref = Records(), {}
        for i in rng.permutation(n).tolist():
            r = random_record(rng, i)
            r.key = int(rng.integers(0, 8))  # contents shared by several files
            cols[i] = ref[i] = r
        listed = np.where(rng.random((n, 1)) < 0.5, rng.integers(0, 10**12, (n, 3)), -1)
        got, want = runner.images_table(_Source(n, labels), cols, listed), _reference_table(_Source(n, labels), ref,
                                                                                            listed)
        assert sorted(got) == sorted(want)
        for c in want:
            assert got[c].dtype == want[c].dtype and got[c].tolist() == want[c].tolist(), c


def test_unchanged_matches_the_dict_by_path_and_metadata(monkeypatch):
    """jobs.update.unchanged against the dict it replaces: (path, size, mtime, ctime) -> the last used
    base row's (key, sha256); racy, skipped and metadata-less rows never match."""
    from pipeline.jobs import update

    monkeypatch.setattr(update, "CHUNK", 5)
    rng = np.random.default_rng(7)
    since = 10**8
    monkeypatch.setattr(update, "listed_since", lambda attrs: since)
    names = [f"d/ü{i}.png" for i in range(12)]
    m = 30
    base = {"path": np.array([names[j % 12] for j in range(m)], dtype=object),
            "status": np.array(rng.choice(["ok", "duplicate", "skipped: truncated"], m), dtype=object),
            "key": rng.integers(0, 2**62, m), "sha256": np.array([hashlib.sha256(bytes([j])).hexdigest()
                                                                    for j in range(m)], dtype=object),
            "size": rng.integers(-1, 3, m), "mtime_ns": rng.integers(-1, 3, m) * 10**5,
            "ctime_ns": rng.integers(0, 3, m) * 10**5 + rng.choice([0, since], m)}
    src = _Source(12, {})
    src.relname = lambda i: names[i]
    listed = np.stack([rng.integers(-1, 3, 12), rng.integers(0, 3, 12) * 10**5,
                       rng.integers(0, 3, 12) * 10**5 + rng.choice([0, since], 12)], axis=1)
    for i in range(12):  # most files listed as one of their base rows has them
        if rng.random() < 0.8:
            j = i + 12 * int(rng.integers(0, 2))
            listed[i] = [base[c][j] for c in ("size", "mtime_ns", "ctime_ns")]
    listed[3] = -1
    by_path = {}
    for j in range(m):
        meta = tuple(int(base[c][j]) for c in ("size", "mtime_ns", "ctime_ns"))
        if base["status"][j] in ("ok", "duplicate") and meta[0] >= 0 and meta[1] >= 0 and not update.racy(meta, since):
            by_path[(base["path"][j], meta)] = (int(base["key"][j]), base["sha256"][j])
    want = {}
    for i in range(12):
        meta = tuple(listed[i].tolist())
        hit = by_path.get((names[i], meta)) if meta[0] >= 0 else None
        if hit is not None:
            want[i] = ImageRecord(i, hit[0], hit[1], False, "known", 0, 0)
    got = update.unchanged(src, listed, base, {})
    assert dict(got.items()) == want and want  # some files are known
