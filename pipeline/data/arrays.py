"""Image collections that are items of one file or object: ``.npz``/``.npy`` arrays, MNIST IDX
files, and a torch ``Dataset`` from ``package.module:factory``.

Why each item becomes the bytes of a PNG: everything downstream of the sources (the content key
from the SHA-256 of the bytes, ``--update``'s known contents, duplicates, torchrun's rank share,
merge, finalize's re-read and check) works on the bytes of one image. An item is encoded to PNG
exactly as ``PIL.Image.fromarray(pixels).save(path)`` writes a file (mode ``L`` for one channel,
``RGB`` for three, PIL's default settings), so a collection and the same images written as PNG
files give the same keys, the same decoded pixels and the same store, names aside. Float pixels
in [0, 1] are stored as ``round(v * 255)``, which is what the network sees of any image anyway
(uint8 before normalisation).

Each item is named ``<file>#<index>`` (``digits.npz#0123``, ``tiny_models:digits#07``), the
index zero-padded to the width of the largest so that names sort in index order (a store's rows
are in path order): a stable name that resume, ``--update``, sharding and ``mine merge`` can
compare. (A collection that grows past a power of ten renames its items; ``--update`` still
knows their contents by key, but the old names stay in the table as a renamed file's would.)

* ``.npz``: array ``images`` shaped (N, H, W) or (N, H, W, C) with C 1 or 3, uint8 or float in
  [0, 1]; optional ``labels`` (N,) (numbers or text), stored in the store's ``/images/label``.
* ``.npy``: the images array alone (memory-mapped: only the items read are loaded).
* IDX (``*-images-idx3-ubyte``, also ``.idx3-ubyte``, gzipped or not): the labels file of the
  same name (``labels-idx1-ubyte``) is read when it is there.
* ``package.module:factory``: ``factory()`` returns a ``Dataset`` (``__len__`` and
  ``__getitem__``) whose items are ``(image, label)`` or images: PIL images, tensors (C, H, W)
  or (H, W), numpy arrays (H, W[, C]). It is read once when the run starts (items encoded in
  memory, about 300 bytes for a 28 px digit), so a dataset with random transforms still gives
  one fixed collection; an item that raises or is not an image is recorded as skipped, with
  its reason, as an unreadable file is.

What makes a collection unusable as a whole (no ``images`` array, a dtype or rank we do not
take, labels of another length, an IDX file with a bad magic number or cut short) raises
:class:`~pipeline.data.source_error.SourceError` with one line naming the file and what is wrong.
"""
from __future__ import annotations

import gzip
import importlib
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .decode import to_rgb
from .safe_read import MAX_FILE_BYTES, Unreadable, read_file
from .source_error import SourceError

__all__ = ["ARRAY_SUFFIXES", "Collection", "encode_png", "open_collection", "to_uint8"]

ARRAY_SUFFIXES = (".npz", ".npy")
_IDX = re.compile(r"idx3-ubyte(\.gz)?$", re.IGNORECASE)
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: Largest decompressed IDX file or .npz array read (a bound against gzip/zip bombs and headers
#: that declare more than the file holds): 60,000 MNIST digits are 47 MB.
MAX_IDX_BYTES = MAX_ARRAY_BYTES = 4 * 2**30
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801


@dataclass(frozen=True)
class Collection:
    """``len(images)`` items; ``read(i)`` gives item ``i`` as PNG bytes (see module docstring).

    ``images`` is an array (N, H, W[, C]) or, for a Dataset, a list of PNG bytes or
    :class:`Unreadable` (an item that could not be read). ``labels``: text per item, or None.
    """

    name: str
    root: Path
    images: Any
    labels: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> bytes:
        """Item ``index`` as PNG bytes, or :class:`Unreadable` (a Dataset item that failed, an
        array file cut short since it was opened)."""
        item = self.images[index]
        if isinstance(item, Unreadable):
            raise item
        if isinstance(item, bytes):
            return item
        try:
            return encode_png(np.asarray(item))
        except (OSError, ValueError) as e:
            raise Unreadable(f"unreadable: item {index} of {self.name}: {_line(e)}") from None


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> the PNG bytes PIL writes for it by default."""
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(to_uint8(pixels))).save(buf, "PNG")
    return buf.getvalue()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 stays; float in [0, 1] becomes ``round(v * 255)``; anything else is a ValueError."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind == "f":
        lo, hi = (float(np.min(pixels)), float(np.max(pixels))) if pixels.size else (0.0, 0.0)
        if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
            raise ValueError(f"float pixels must lie in [0, 1] (found {lo:.4g}..{hi:.4g}; a normalised dataset: "
                             f"drop its Normalize transform and give --mean/--std instead)")
        return np.rint(pixels.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f"pixels of dtype {pixels.dtype} (expected uint8, or float in [0, 1])")


def open_collection(spec: str) -> Collection | None:
    """The collection ``spec`` names, or None when it names none (a folder, a list, an image)."""
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _npz(path)
        if suffix == ".npy":
            return _npy(path)
        if _IDX.search(path.name):
            return _idx(path)
        return None
    if not path.exists() and _FACTORY.match(spec):
        return _dataset(spec)
    return None


# --- arrays -------------------------------------------------------------------------------------

def _checked(images: np.ndarray, where: str) -> np.ndarray:
    """Rank, channels and dtype of an images array; float range too (one pass, at open)."""
    shape = images.shape
    if images.ndim not in (3, 4) or (images.ndim == 4 and shape[-1] not in (1, 3)):
        raise SourceError(f"{where} has shape {shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3")
    if min(shape[:3]) == 0:
        raise SourceError(f"{where} has shape {shape}: no images")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise SourceError(f"{where} has dtype {images.dtype}; expected uint8, or float with values in [0, 1]")
    if images.dtype.kind == "f":
        lo, hi = float(np.min(images)), float(np.max(images))
        if not (0.0 <= lo and hi <= 1.0):
            raise SourceError(f"{where} holds float values {lo:.4g}..{hi:.4g}; expected [0, 1] "
                              f"(or uint8 0..255)")
    return images


def _labels(labels: np.ndarray | None, n: int, where: str) -> tuple[str, ...] | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise SourceError(f"{where} has shape {labels.shape} for {n} images; expected ({n},)")
    if labels.dtype.kind not in "iubUSf":
        raise SourceError(f"{where} has dtype {labels.dtype}; expected numbers or text")
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in labels.tolist())


def _npz(path: Path) -> Collection:
    if not zipfile.is_zipfile(path):
        raise SourceError(f"{path} is not a .npz file (not a zip archive of arrays); write it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise SourceError(f"{path} has no array 'images' (it has: {', '.join(z.files) or 'none'}); "
                                  f"save with np.savez(path, images=..., labels=...)")
            _refuse_large(z.zip, "images.npy", path)
            images = _checked(z["images"], f"{path}: images")
            labels = _labels(z["labels"] if "labels" in z.files else None, len(images), f"{path}: labels")
    except SourceError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise SourceError(f"{path} is not a readable .npz file: {_line(e)}") from None
    return Collection(path.name, path.absolute().parent, images, labels)


def _refuse_large(archive: zipfile.ZipFile, member: str, path: Path) -> None:
    """Read an .npz member's header and refuse an array over MAX_ARRAY_BYTES before loading it."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise SourceError(f"{path}: images of shape {shape} would take {nbytes} bytes, over {MAX_ARRAY_BYTES}; "
                          f"save them as .npy (memory-mapped) instead")


def _npy(path: Path) -> Collection:
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise SourceError(f"{path} is not a readable .npy file: {_line(e)}") from None
    return Collection(path.name, path.absolute().parent, _checked(images, str(path)))


def _read_idx(path: Path) -> bytes:
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read(MAX_IDX_BYTES + 1)
        else:
            data = read_file(path, MAX_IDX_BYTES)
    except Unreadable as e:
        raise SourceError(f"{path}: {e}") from None
    except (OSError, EOFError) as e:
        raise SourceError(f"{path} is not a readable gzip file: {_line(e)}") from None
    if len(data) > MAX_IDX_BYTES:
        raise SourceError(f"{path} holds more than {MAX_IDX_BYTES} bytes")
    return data


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (``magic`` 0x0803: images N x H x W, 0x0801: labels N)."""
    data = _read_idx(path)
    ndim = magic & 0xFF
    got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if got != magic:
        shown = f"0x{got:08x}" if got is not None else f"{len(data)} bytes"
        raise SourceError(f"{path} is not an IDX {'image' if ndim == 3 else 'label'} file: its magic number is "
                          f"{shown}, expected 0x{magic:08x} (unsigned bytes, {ndim} dimension(s))")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise SourceError(f"{path} is truncated: {len(data)} bytes, shorter than its {head}-byte header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    need = head + int(np.prod(dims, dtype=np.int64))
    if len(data) != need:
        what = "truncated" if len(data) < need else "longer than its header says"
        raise SourceError(f"{path} is {what}: its header says {' x '.join(map(str, dims))} bytes "
                          f"({need} in all), the file has {len(data)}")
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims)


def _idx(path: Path) -> Collection:
    images = _checked(_parse_idx(path, _IMAGES_MAGIC), str(path))
    labels = None
    for name in _label_names(path.name):
        if (path.parent / name).is_file():
            labels = _labels(_parse_idx(path.parent / name, _LABELS_MAGIC), len(images), str(path.parent / name))
            break
    return Collection(path.name, path.absolute().parent, images, labels)


def _label_names(name: str) -> list[str]:
    """``train-images-idx3-ubyte.gz`` -> the labels file's names, gzipped and not."""
    base = re.sub(r"images([-.])idx3", r"labels\1idx1", name, flags=re.IGNORECASE)
    plain = base[:-3] if base.lower().endswith(".gz") else base
    return [n for n in (base, plain, plain + ".gz") if n != name]


# --- a torch Dataset ----------------------------------------------------------------------------

def _dataset(spec: str) -> Collection:
    module, _, fn = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise SourceError(f"no such file or folder, and no dataset factory {spec} ({_line(e)})") from None
    try:
        ds = factory()
        n = len(ds)
    except Exception as e:  # noqa: BLE001 - the user's code: one line naming it
        raise SourceError(f"dataset factory {spec} failed: {type(e).__name__}: {_line(e)}") from None
    if not hasattr(ds, "__getitem__"):
        raise SourceError(f"dataset factory {spec} returned {type(ds).__name__}, not a Dataset (__len__, __getitem__)")
    if n == 0:
        raise SourceError(f"dataset {spec} is empty")
    items: list[bytes | Unreadable] = []
    labels: list[str] = []
    for i in range(n):
        label = ""
        try:
            item = ds[i]
            image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) and len(item) == 2 else (item, "")
            data = _item_png(image)
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"item of {len(data)} bytes as PNG")
            items.append(data)
        except Exception as e:  # noqa: BLE001 - one bad item is recorded and skipped, as a bad file is
            items.append(Unreadable(f"unreadable: dataset item {i}: {type(e).__name__}: {_line(e)}"[:160]))
        labels.append(_label_text(label))
    return Collection(spec, Path("/"), items, tuple(labels) if any(labels) else None)


def _item_png(image: Any) -> bytes:
    """A Dataset's image (PIL, tensor (C, H, W) / (H, W), array (H, W[, C])) as PNG bytes."""
    if isinstance(image, Image.Image):
        return encode_png(np.asarray(image if image.mode in ("L", "RGB") else to_rgb(image)))
    if hasattr(image, "detach"):  # a torch tensor: channels first
        a = image.detach().cpu().numpy()
        if a.ndim == 3:
            a = a.transpose(1, 2, 0)
    else:
        a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3)) or 0 in a.shape:
        raise ValueError(f"image of shape {tuple(np.shape(image))} (expected (C, H, W) or (H, W), C 1 or 3)")
    return encode_png(a)


def _label_text(label: Any) -> str:
    if hasattr(label, "item") and getattr(label, "ndim", 0) == 0:
        label = label.item()
    return "" if label is None else str(label)


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def item_names(name: str, count: int) -> Sequence[str]:
    """``name#0 .. name#count-1``, zero-padded to one width (``#007`` of 120 items) so that the
    names sort as the items are numbered: a store's rows are in path order."""
    width = len(str(max(count - 1, 0)))
    return [f"{name}#{i:0{width}d}" for i in range(count)]
