"""Check an open HDF5 file against the store schema before anything uses it.

Why: every command that reads a store (``info``, ``top``, ``render``, ``merge``,
``run --update``) uses its arrays as indices and shapes. A damaged file (a group or
dataset missing, a wrong shape or dtype, an index out of range, an attribute that is
not valid JSON, NaN where a value must be, ``k = 0``) would otherwise end in a
traceback, a misleading exit code, or, worse, be merged silently into a new store.

``validate`` reads the small parts of a store -- attributes, the ``/kept`` keys and the
``/images`` rows they name, every ``/layers`` array, the shapes of ``/images`` columns,
pooled vectors and embeddings -- and checks each against ``schema.py``, in a time that does
not grow with the number of images; the values of the whole ``/images`` table are checked
when it is read (``check_table``, by ``Store.images``: ``--update``, ``merge``, ``embed``); the big
compressed datasets (pixels, switches) are checked by shape and dtype only (zlib's
checksum catches a flipped bit in them when they are read). A flipped bit in an
uncompressed numeric dataset is caught by HDF5's fletcher32 checksum, which
``write_store`` adds to every one of them (stores written before that simply have
none). The first problem found is raised as one ``StoreError`` line naming it.
"""
from __future__ import annotations

import json

import h5py
import numpy as np

from ..data.preprocess import Preprocessing
from .schema import COMPLETE, FORMAT, SCHEMA_VERSION, StoreError

JSON_ATTRS = ("preprocessing", "layers", "versions", "pooled")  # pooled: `mine run --pooled`
PRECISIONS = ("fp32", "bf16", "fp16")
IMAGE_COLUMNS = {"path": "str", "sha256": "str", "key": "int", "status": "str", "width": "int", "height": "int"}
FILE_COLUMNS = ("size", "mtime_ns", "ctime_ns")  # optional: the file's metadata when listed (jobs.update)
LAYER_ARRAYS = {"value": "float", "kept": "int", "key": "int", "y": "int", "x": "int", "box": "int"}


class Damaged(Exception):
    """One problem found in a store (the message names the part)."""


def plain(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_attrs(f: h5py.File) -> dict:
    """The root attributes as Python values; JSON attributes parsed (``Damaged`` if they do not parse)."""
    out = {}
    for name in f.attrs:
        v = plain(f.attrs[name])
        if name in JSON_ATTRS:
            if not isinstance(v, str):
                raise Damaged(f"attribute {name} is not JSON text")
            try:
                v = json.loads(v)
            except ValueError as e:
                raise Damaged(f"attribute {name} is not valid JSON ({e})") from None
        out[name] = v
    return out


def check_header(path, attrs: dict, require_complete: bool = True) -> None:
    """Format, schema version and status: what tells a mine store from any other HDF5 file."""
    if attrs.get("format") != FORMAT:
        raise StoreError(f"{path} is not a mine store")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{path} has schema {attrs.get('schema_version')}, this mine reads {SCHEMA_VERSION}")
    if require_complete and attrs.get("status") != COMPLETE:
        raise StoreError(f"{path} is not complete (status {attrs.get('status')!r}); re-run `mine run` to finish it")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_attrs(a: dict) -> None:
    def need(name, ok, what):
        if name not in a:
            raise Damaged(f"attribute {name} is missing")
        if not ok(a[name]):
            raise Damaged(f"attribute {name} = {a[name]!r} is not {what}")

    def may(name, ok, what):
        if name in a and not ok(a[name]):
            raise Damaged(f"attribute {name} = {a[name]!r} is not {what}")

    text = lambda v: isinstance(v, str)
    for name in ("model", "weights", "images_spec", "images_root"):
        need(name, text, "text")
    need("weights_hash", lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
         "a sha256 in hex")
    need("k", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
    need("input_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
    need("layers", lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v)
         and len(set(v)) == len(v), "a list of distinct layer names")
    need("preprocessing", lambda v: isinstance(v, dict), "a JSON object")
    try:
        prep = Preprocessing.from_dict(a["preprocessing"])
    except (ValueError, TypeError) as e:
        raise Damaged(f"attribute preprocessing: {e}") from None
    if prep.size != a["input_size"]:
        raise Damaged(f"attribute preprocessing has size {prep.size} but input_size is {a['input_size']}")
    may("precision", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
    may("versions", lambda v: isinstance(v, dict), "a JSON object")
    for name in ("images_seen", "images_skipped", "images_duplicate"):
        may(name, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    for name in ("created", "inputs_id"):
        may(name, text, "text")
    may("pooled", lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v),
        "a list of distinct layer names")


def _dataset(f: h5py.File, name: str, kind: str, shape: tuple) -> h5py.Dataset:
    """``f[name]`` if it is a dataset of ``kind`` ("int", "float", "str", "uint8") and ``shape``
    (``None`` entries match any length)."""
    obj = f.get(name)
    if obj is None:
        raise Damaged(f"/{name} is missing")
    if not isinstance(obj, h5py.Dataset):
        raise Damaged(f"/{name} is not a dataset")
    dt = obj.dtype
    ok = {"int": dt.kind in "iu", "float": dt.kind == "f", "uint8": dt == np.uint8,
          "str": h5py.check_string_dtype(dt) is not None}[kind]
    if not ok:
        raise Damaged(f"/{name} has dtype {dt}, expected {kind}")
    if len(obj.shape) != len(shape) or any(want is not None and got != want for got, want in zip(obj.shape, shape)):
        want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        raise Damaged(f"/{name} has shape {obj.shape}, expected {want}")
    return obj


def _group(f: h5py.File, name: str) -> h5py.Group:
    obj = f.get(name)
    if not isinstance(obj, h5py.Group):
        raise Damaged(f"/{name} is {'missing' if obj is None else 'not a group'}")
    return obj


def read_column(ds: h5py.Dataset) -> np.ndarray:
    """A dataset's values, or ``Damaged`` naming it (a checksum mismatch says so)."""
    try:
        return ds[()]
    except OSError as e:
        why = "its checksum does not match the data (flipped bits?)" if ds.fletcher32 else str(e).splitlines()[0]
        raise Damaged(f"{ds.name} cannot be read: {why}") from None


def _check_images(f: h5py.File, a: dict) -> int:
    """The /images columns by their metadata only (present, kind, one length, the same as
    images_seen): no rows are read, so opening costs the same for 100 or 10 million images.
    Their values are checked where they are read (:func:`check_table`, the kept rows in
    :func:`_check_kept`)."""
    n = {c: _dataset(f, f"images/{c}", kind, (None,)).shape[0] for c, kind in IMAGE_COLUMNS.items()}
    for c in FILE_COLUMNS:  # optional (stores written before mine kept file metadata have none)
        if f"images/{c}" in f:
            n[c] = _dataset(f, f"images/{c}", "int", (None,)).shape[0]
    if len(set(n.values())) != 1:
        raise Damaged(f"/images columns differ in length: {n}")
    if "images_seen" in a and a["images_seen"] != n["path"]:
        raise Damaged(f"attribute images_seen is {a['images_seen']} but /images has {n['path']} rows")
    if "label" in f["images"]:
        labels = _dataset(f, "images/label", "str", (n["path"],))
        if len(labels) != n["path"]:
            raise Damaged(f"/images/label has {len(labels)} rows but /images has {n['path']}")
    return n["path"]


def check_table(cols: dict) -> None:
    """The values of /images columns read in full (``Store.images``): status and keys."""
    if "status" in cols:
        bad = [s for s in cols["status"] if plain(s) not in ("ok", "duplicate") and not plain(s).startswith("skipped")]
        if bad:
            raise Damaged(f"/images/status holds {plain(bad[0])!r}; expected ok, duplicate or skipped: <reason>")
    if "key" in cols and (np.asarray(cols["key"]) < 0).any():
        raise Damaged("/images/key holds negative keys")


def rows(ds: h5py.Dataset, index: np.ndarray) -> np.ndarray:
    """``ds[index]`` for any int array (repeats, any order), reading only the chunks that hold
    those rows (h5py wants increasing, distinct indices)."""
    index = np.asarray(index, dtype=np.int64)
    if not len(index):
        return ds[:0]
    unique, back = np.unique(index, return_inverse=True)
    try:
        if len(unique) > len(ds) // 4:  # most of the table: one plain read is faster
            return ds[()][index]
        return ds[unique][back]
    except OSError as e:
        why = "its checksum does not match the data (flipped bits?)" if ds.fletcher32 else str(e).splitlines()[0]
        raise Damaged(f"{ds.name} cannot be read: {why}") from None


def _check_kept(f: h5py.File, n_images: int, size: int) -> np.ndarray:
    image = read_column(_dataset(f, "kept/image", "int", (None,)))
    keys = read_column(_dataset(f, "kept/key", "int", (None,)))
    m = len(image)
    if len(keys) != m:
        raise Damaged(f"/kept/key has {len(keys)} rows, /kept/image {m}")
    _dataset(f, "kept/pixels", "uint8", (m, size, size, 3))
    if m and (image.min() < 0 or image.max() >= n_images):
        raise Damaged(f"/kept/image holds rows outside 0..{n_images - 1} of /images")
    if m and (np.diff(keys) <= 0).any():
        raise Damaged("/kept/key is not strictly increasing")
    if m and (rows(f["images/key"], image) != keys).any():
        raise Damaged("/kept/key differs from the keys of the /images rows that /kept/image names")
    for name, obj in _group(f, "switches").items():
        if not isinstance(obj, h5py.Dataset) or obj.dtype != np.uint8 or obj.ndim != 4 or obj.shape[0] != m:
            raise Damaged(f"/switches/{name} is not a (kept images={m}, C, H, W) uint8 dataset")
        missing = [k for k in ("kernel", "stride", "padding", "dilation") if k not in obj.attrs]
        if missing:
            raise Damaged(f"/switches/{name} lacks the attribute(s) {', '.join(missing)}")
    return keys


def _check_layer(f: h5py.File, name: str, k: int, size: int, kept_keys: np.ndarray) -> None:
    g = _group(f, f"layers/{name}")
    info = {}
    for attr in ("channels", "rf", "stride", "padding", "out_size"):
        v = plain(g.attrs.get(attr))
        if not _is_int(v) or (attr != "padding" and v < 1):
            raise Damaged(f"/layers/{name} attribute {attr} = {v!r} is not a valid integer")
        info[attr] = v
    c, w = info["channels"], info["out_size"]
    arr = {n: read_column(_dataset(f, f"layers/{name}/{n}", kind, (c, k, 4) if n == "box" else (c, k)))
           for n, kind in LAYER_ARRAYS.items()}
    where = f"/layers/{name}"
    kept, value = arr["kept"], arr["value"]
    if (kept < -1).any() or (kept >= len(kept_keys)).any():
        raise Damaged(f"{where}/kept holds rows outside -1..{len(kept_keys) - 1}")
    empty, filled = kept < 0, kept >= 0
    if not np.isnan(value[empty]).all() or (arr["key"][empty] != -1).any() or (arr["y"][empty] != -1).any() \
            or (arr["x"][empty] != -1).any() or (arr["box"][empty] != -1).any():
        raise Damaged(f"{where}: an empty slot (kept -1) holds a value, key, position or box")
    if not np.isfinite(value[filled]).all():
        raise Damaged(f"{where}/value holds NaN or infinity in a filled slot")
    if (arr["key"][filled] != kept_keys[kept[filled]]).any():
        raise Damaged(f"{where}/key differs from the /kept/key rows that {where}/kept names")
    for axis in ("y", "x"):
        if ((arr[axis][filled] < 0) | (arr[axis][filled] >= w)).any():
            raise Damaged(f"{where}/{axis} holds positions outside 0..{w - 1}")
    box = arr["box"][filled]
    if len(box) and ((box[:, :2] < 0).any() or (box[:, 2:] > size).any() or (box[:, 2:] <= box[:, :2]).any()):
        raise Damaged(f"{where}/box holds boxes outside the {size} x {size} input")
    if (filled[:, 1:] & empty[:, :-1]).any():
        raise Damaged(f"{where}: an empty slot comes before a filled one")
    if (np.diff(value, axis=1)[filled[:, 1:]] > 0).any():  # (filled[:, 1:] implies its left one is filled)
        raise Damaged(f"{where}/value is not sorted best first")
    keys = np.sort(np.where(filled, arr["key"], -1 - np.arange(k)), axis=1)
    if (np.diff(keys, axis=1) == 0).any():
        raise Damaged(f"{where} keeps one image twice for the same channel")


def _check_pooled(f: h5py.File, a: dict, n: int) -> None:
    """``/images/pooled_<L>`` of every layer the ``pooled`` attribute names: float (N, 2, C), one
    row per /images row. Shape and dtype only: the values (finite on used rows) are checked when
    read (``Store.pooled``), as the other large datasets are."""
    for layer in a.get("pooled") or []:
        _dataset(f, f"images/pooled_{layer}", "float", (n, 2, None))


def _check_embed(f: h5py.File, a: dict, n: int) -> None:
    """``/embed/<L>`` (``mine embed``): float (N, 2), one row per /images row, of a pooled layer."""
    if "embed" not in f:
        return
    for layer in _group(f, "embed"):
        if layer not in (a.get("pooled") or []):
            raise Damaged(f"/embed/{layer} maps a layer without pooled vectors")
        _dataset(f, f"embed/{layer}", "float", (n, 2))


def validate(f: h5py.File, path, require_complete: bool = True) -> dict:
    """Check ``f`` (see module docstring); its root attributes as Python values, or ``StoreError``."""
    try:
        attrs = read_attrs(f)
        check_header(path, attrs, require_complete)
        _check_attrs(attrs)
        n_images = _check_images(f, attrs)
        kept_keys = _check_kept(f, n_images, attrs["input_size"])
        _check_pooled(f, attrs, n_images)
        _check_embed(f, attrs, n_images)
        _group(f, "layers")
        for name in attrs["layers"]:
            _check_layer(f, name, attrs["k"], attrs["input_size"], kept_keys)
    except StoreError:
        raise
    except Damaged as e:
        raise StoreError(f"{path} is damaged: {e}") from None
    except Exception as e:  # noqa: BLE001 - whatever else a damaged file does (bad UTF-8, HDF5 errors)
        raise StoreError(f"{path} is damaged: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return attrs
