"""combine.union_table (columns, numpy) against a brute-force Python union of the parts' rows,
and store.write.images_columns against a row-by-row build (tests/table_reference.py)."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from table_reference import images_table_of_rows

from pipeline.jobs.combine import Part, pooled_columns, union_table
from pipeline.mining.pooled import PooledVectors
from pipeline.store.write import images_columns

STATS = ("size", "mtime_ns", "ctime_ns")


def part(root: str, rows: list[tuple], meta: bool = True, label: bool = False, as_bytes: bool = False) -> Part:
    """rows: (path, key, status, width, meta, label); sha256 is derived from the key."""
    def text(values):
        return np.array([v.encode() if as_bytes else v for v in values], dtype=object)
    table = {"path": text([r[0] for r in rows]), "sha256": text([f"{r[1]:064x}" for r in rows]),
             "key": np.array([r[1] for r in rows], np.int64), "status": text([r[2] for r in rows]),
             "width": np.array([r[3] for r in rows], np.int32), "height": np.array([r[3] + 1 for r in rows], np.int32)}
    if meta:
        table.update({c: np.array([r[4] + j for r in rows], np.int64) for j, c in enumerate(STATS)})
    if label:
        table["label"] = text([r[5] for r in rows])
    return Part(root, "spec", root, table, {}, lambda key: {})


def brute_union(parts: list[Part], common: str) -> dict[str, list]:
    """The union as the module docstring says, one row at a time."""
    def s(v):
        return v.decode() if isinstance(v, bytes) else str(v)
    rows, meta = {}, {}
    for p in parts:
        prefix = p.root[len(common):].strip("/")
        t = p.table
        for j in range(len(t["path"])):
            path = f"{prefix}/{s(t['path'][j])}" if prefix else s(t["path"][j])
            ident = (path, int(t["key"][j]))
            if ident not in rows:
                rows[ident] = (s(t["sha256"][j]), s(t["status"][j]), int(t["width"][j]), int(t["height"][j]),
                               s(t["label"][j]) if "label" in t else "")
            meta[ident] = tuple(int(t[c][j]) for c in STATS) if "size" in t else (-1, -1, -1)
    out = {c: [] for c in ("path", "sha256", "key", "status", "width", "height", "label", *STATS)}
    seen = set()
    for (path, key) in sorted(rows):
        sha, st, w, h, label = rows[(path, key)]
        if st in ("ok", "duplicate"):
            st = "duplicate" if key in seen else "ok"
            seen.add(key)
        for c, v in zip(out, (path, sha, key, st, w, h, label, *meta[(path, key)])):
            out[c].append(v)
    if not any(out["label"]):
        del out["label"]
    return out


def check(parts: list[Part], common: str) -> None:
    root, table = union_table(parts)
    ref = brute_union(parts, common)
    assert root == common
    assert list(table) == list(ref)
    for c, v in ref.items():
        assert table[c].tolist() == v, c
        assert all(type(x) is str for x in table[c]) if table[c].dtype == object else True
    assert {c: a.dtype for c, a in table.items()} == {
        **{c: np.dtype(object) for c in ("path", "sha256", "status", "label") if c in ref},
        "key": np.int64, "width": np.int32, "height": np.int32, **{c: np.int64 for c in STATS}}


def test_rerooted_overlapping_parts_with_labels_and_metadata():
    a = part("/data/photos/a", [("x.jpg", 5, "ok", 10, 100, "cat"), ("y.jpg", 5, "duplicate", 10, 101, "cat"),
                                ("z.jpg", 7, "skipped: corrupt", 0, 102, "")], label=True)
    b = part("/data/photos/b", [("x.jpg", 5, "ok", 10, 200, ""), ("w.jpg", 3, "ok", 8, 201, "")], meta=False)
    c = part("/data/photos", [("a/y.jpg", 5, "ok", 11, 300, ""), ("b/w.jpg", 4, "ok", 9, 301, ""),
                              ("a/x.jpg", 5, "ok", 12, 302, ""), ("a/x.jpg", 5, "ok", 13, 303, ""),
                              ("0.jpg", 3, "ok", 1, 304, "")], as_bytes=True)
    check([a, b, c], "/data/photos")
    check([c, b, a], "/data/photos")
    check([b, c], "/data/photos")
    check([c], "/data/photos")


def test_random_parts_against_brute_force():
    rng = random.Random(7)
    statuses = ["ok", "duplicate", "skipped: corrupt", "skipped: bad file name: not valid UTF-8"]
    for _ in range(30):
        parts = []
        for _part in range(rng.randint(1, 4)):
            root = rng.choice(["/d", "/d/s1", "/d/s2", "/d/s1/deep"])
            rows = [(rng.choice(["a.png", "b/c.png", "b/ü.jpg", "caf\\xe9.png", "Z.png", "b/a.png"]), rng.randint(1, 5),
                     rng.choice(statuses), rng.randint(0, 9), rng.randint(0, 99), rng.choice(["", "", "x", "y"]))
                    for _ in range(rng.randint(0, 12))]
            parts.append(part(root, rows, meta=rng.random() < 0.7, label=rng.random() < 0.4,
                              as_bytes=rng.random() < 0.3))
        check(parts, os.path.commonpath([p.root for p in parts]))


@pytest.mark.parametrize("labels", [False, True])
def test_columns_equal_rows(labels):
    rng = random.Random(3)
    rows = [(f"p{i:03d}.png", f"{k:064x}", k, rng.choice([None, None, "skipped: corrupt"]), i, i + 1,
             rng.choice([None, "a"]) if labels else None, rng.choice([None, (i, i * 2, i * 3)]))
            for i, k in enumerate(rng.randint(0, 6) for _ in range(40))]
    by_rows = images_table_of_rows(rows)
    meta = [r[7] or (-1, -1, -1) for r in rows]
    by_cols = images_columns({
        "path": [r[0] for r in rows], "sha256": [r[1] for r in rows], "key": [r[2] for r in rows],
        "status": [r[3] for r in rows], "width": [r[4] for r in rows], "height": [r[5] for r in rows],
        **({"label": ["" if r[6] is None else r[6] for r in rows]} if labels else {}),
        **{c: [m[j] for m in meta] for j, c in enumerate(STATS)}})
    assert list(by_rows) == list(by_cols)
    for c in by_rows:
        assert by_rows[c].dtype == by_cols[c].dtype and by_rows[c].tolist() == by_cols[c].tolist(), c
    firsts = {}
    expected = [r[3] or ("ok" if firsts.setdefault(r[2], i) == i else "duplicate") for i, r in enumerate(rows)]
    assert by_cols["status"].tolist() == expected
    assert images_columns(
        {c: [] for c in ("path", "sha256", "key", "status", "width", "height")})["size"].shape == (0,)


def test_pooled_columns_against_a_dict():
    """Each used row gets the vector of its content (from the last part that has it), others NaN."""
    rng = np.random.default_rng(5)
    parts = []
    for n in (6, 9):
        keys = rng.integers(1, 8, n)
        p = part("/d", [(f"f{i}.png", int(k), str(rng.choice(["ok", "duplicate", "skipped: x"])), 1, 0, "")
                        for i, k in enumerate(keys)])
        used = np.unique(keys)
        rows = rng.standard_normal((len(used), 2, 3)).astype(np.float16)
        p.pooled = {"c1": PooledVectors.from_state({"keys": torch.from_numpy(used), "rows": torch.from_numpy(rows)},
                                                   name="c1", warn=False)}
        parts.append(p)
    _, table = union_table(parts)
    table["key"][-1] = 99  # a content no part has: NaN
    col = pooled_columns(parts, table)["pooled_c1"]
    vectors = {}
    for p in parts[::-1]:  # the first merged wins: the last part's rows
        k, r = p.pooled["c1"].result()
        for key, row in zip(k.tolist(), r):
            vectors.setdefault(key, row)
    assert col.shape == (len(table["key"]), 2, 3) and col.dtype == np.float16
    for j, (k, s) in enumerate(zip(table["key"], table["status"])):
        want = vectors.get(int(k)) if s in ("ok", "duplicate") else None
        assert np.array_equal(col[j], want) if want is not None else np.isnan(col[j]).all(), j
    assert pooled_columns([], table) == {}
