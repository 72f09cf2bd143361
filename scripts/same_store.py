"""Are two stores the same? ``python scripts/same_store.py A B`` compares every group, every dataset
(dtype, shape and the bytes of its values) and every attribute of two HDF5 files, prints each
difference on one line and exits 0 when there is none, 1 otherwise (2: a file cannot be read).

Why: issue 22 refactors the code that writes stores and asks that a store written before and after
be identical but for timing attributes; this is that check (run on the demo's ``mine run`` steps).

Ignored, and only these (timing and host attributes: they differ between two runs of the same
job by design):

* ``created`` on the root: the wall-clock time the store was written;
* ``seconds`` on the root: how long the job took.

``--ignore NAME`` (repeatable) ignores one more attribute name wherever it occurs, e.g. when
comparing stores mined from two copies of the photos (``images_root``). Nothing else is ignored:
the storage layout of a dataset (chunks, compression) is not compared, its values byte for byte
are (NaN equals NaN when the bits are equal).
"""
from __future__ import annotations

import argparse
import sys

import h5py
import numpy as np

TIMING = ("created", "seconds")  # root attributes that are timing or host facts, never compared


def _value_bytes(v) -> bytes:
    """The bytes of an attribute or dataset value (strings as UTF-8; objects element by element)."""
    a = np.asarray(v)
    if a.dtype == object:
        return b"\0".join(x if isinstance(x, bytes) else str(x).encode() for x in a.reshape(-1))
    return a.tobytes()


def _same_value(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and _value_bytes(a) == _value_bytes(b)


def _show(v, width: int = 60) -> str:
    """A value as one short line: text decoded, numpy scalars and arrays as Python values."""
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    elif isinstance(v, (np.generic, np.ndarray)):
        v = v.tolist()
    text = repr(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def _pair(a, b) -> str:
    """``A <a>, B <b>``, with the dtypes when they differ (3 as int64 and as int32 look alike)."""
    da, db = np.asarray(a).dtype, np.asarray(b).dtype
    if da != db:
        return f"A {_show(a)} ({da}), B {_show(b)} ({db})"
    return f"A {_show(a)}, B {_show(b)}"


def compare_attrs(name: str, a: h5py.AttributeManager, b: h5py.AttributeManager, ignore: set[str]) -> list[str]:
    """One line per attribute of ``name`` that only one side has or whose values differ."""
    skip = ignore | (set(TIMING) if name == "/" else set())
    out = []
    for key in sorted((set(a) | set(b)) - skip):
        if key not in b:
            out.append(f"{name}: attribute {key} only in A")
        elif key not in a:
            out.append(f"{name}: attribute {key} only in B")
        elif not _same_value(a[key], b[key]):
            out.append(f"{name}: attribute {key} differs: {_pair(a[key], b[key])}")
    return out


def compare_datasets(name: str, a: h5py.Dataset, b: h5py.Dataset) -> list[str]:
    """Dtype, shape, then the values' bytes (with the first differing element)."""
    if a.dtype != b.dtype:
        return [f"{name}: dtype differs: A {a.dtype}, B {b.dtype}"]
    if a.shape != b.shape:
        return [f"{name}: shape differs: A {a.shape}, B {b.shape}"]
    va, vb = a[()], b[()]
    if _same_value(va, vb):
        return []
    if isinstance(va, np.ndarray) and va.dtype != object and va.ndim:
        differ = np.asarray(va.view(np.uint8).reshape(va.shape + (-1,)) != vb.view(np.uint8).reshape(vb.shape + (-1,)))
        where = np.argwhere(differ.any(-1))
        first = tuple(int(i) for i in where[0])
        return [f"{name}: values differ at {len(where)} of {va.size} elements, first {first}: "
                f"A {_show(va[first])}, B {_show(vb[first])}"]
    if isinstance(va, np.ndarray) and va.ndim:
        where = [i for i, (x, y) in enumerate(zip(va.reshape(-1), vb.reshape(-1))) if x != y]
        return [f"{name}: values differ at {len(where)} of {va.size} elements, first {where[0]}: "
                f"A {_show(va.reshape(-1)[where[0]])}, B {_show(vb.reshape(-1)[where[0]])}"]
    return [f"{name}: value differs: A {_show(va)}, B {_show(vb)}"]


def _kind(obj) -> str:
    return "group" if isinstance(obj, h5py.Group) else "dataset" if isinstance(obj, h5py.Dataset) else type(obj).__name__


def compare(a: h5py.File, b: h5py.File, ignore: set[str] = frozenset()) -> list[str]:
    """Every difference between two open files, one line each, in path order."""
    out = compare_attrs("/", a.attrs, b.attrs, set(ignore))
    names: set[str] = set()
    a.visit(names.add)
    b.visit(names.add)
    for name in sorted(names):
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            out.append(f"/{name}: {_kind(x if y is None else y)} only in {'A' if y is None else 'B'}")
            continue
        if _kind(x) != _kind(y):
            out.append(f"/{name}: a {_kind(x)} in A, a {_kind(y)} in B")
            continue
        if isinstance(x, h5py.Dataset):
            out += compare_datasets(f"/{name}", x, y)
        out += compare_attrs(f"/{name}", x.attrs, y.attrs, set(ignore))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="first store (A)")
    p.add_argument("b", help="second store (B)")
    p.add_argument("--ignore", action="append", default=[], metavar="NAME",
                   help="also ignore attributes of this name (anywhere); repeatable")
    args = p.parse_args(argv)
    try:
        with h5py.File(args.a, "r") as a, h5py.File(args.b, "r") as b:
            diffs = compare(a, b, set(args.ignore))
    except OSError as e:
        print(f"cannot read: {e}", file=sys.stderr)
        return 2
    for line in diffs:
        print(line)
    ignored = ", ".join([*(f"/{t}" for t in TIMING), *args.ignore])
    print(f"{len(diffs)} difference(s) between {args.a} and {args.b} (ignored: {ignored})"
          if diffs else f"identical: {args.a} and {args.b} (ignored: {ignored})")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
