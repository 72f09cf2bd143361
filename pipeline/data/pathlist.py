"""The file list of an :class:`~pipeline.data.sources.ImageSource`, kept compact.

Why: a run lists every file of its collection once and holds the list to its end. A tuple of
``pathlib.Path`` costs several hundred bytes a file (each Path keeps its string, its parsed
parts and their strings); at ten million files that alone is gigabytes. A :class:`PathList` holds
the root once and the names relative to it in one ``bytes`` blob with an int64 offset per name,
about the length of the name plus 8 bytes a file, and makes a ``Path`` only when one is asked for.

It behaves as the tuple it replaces: ``len``, ``[i]`` (an absolute ``Path``, equal to the one
given), slices (``head``: a view on the same blob), iteration, ``==`` with a tuple or list of
paths. Names are stored as the OS's bytes (UTF-8 with ``surrogateescape``), so a file name
that is not valid UTF-8 comes back as the same ``str`` the OS handed over. A path that is not
under the root (never so for a resolved source) is stored whole, after a NUL byte (which no file
name holds), and given back as it was.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

__all__ = ["PathList"]

_WHOLE = b"\0"  # marks a path stored whole (not under the root)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class PathList(Sequence):
    """``root`` plus names relative to it, in one blob (see the module docstring)."""

    __slots__ = ("_root", "_prefix", "_blob", "_offsets", "_lo", "_hi")

    def __init__(self, root: str | os.PathLike[str], blob: bytes, offsets: np.ndarray,
                 span: tuple[int, int] | None = None) -> None:
        self._root = Path(root)
        text = str(self._root)
        self._prefix = text if text.endswith("/") else text + "/"
        self._blob, self._offsets = blob, offsets
        self._lo, self._hi = span if span is not None else (0, len(offsets) - 1)

    @classmethod
    def of(cls, root: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]]) -> "PathList":
        """The list of ``paths`` (each kept as given: ``self[i] == Path(paths[i])``)."""
        prefix = str(Path(root))
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        return cls.from_names(root, (_relative(os.fspath(p), prefix) for p in paths))

    @classmethod
    def from_names(cls, root: str | os.PathLike[str], names: Iterable[str]) -> "PathList":
        """The list of ``root / name`` for ``names`` (``str`` or the OS's bytes), relative to ``root``."""
        parts: list[bytes] = [_encode(n) if isinstance(n, str) else n for n in names]
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum(np.fromiter((len(b) for b in parts), np.int64, count=len(parts)), out=offsets[1:])
        return cls(root, b"".join(parts), offsets)

    @property
    def root(self) -> Path:
        return self._root

    def __len__(self) -> int:
        return self._hi - self._lo

    def _raw(self, i: int) -> bytes:
        j = self._lo + i
        return self._blob[int(self._offsets[j]):int(self._offsets[j + 1])]

    def name(self, i: int) -> str:
        """The ``i``-th name as stored: relative to the root (the OS's ``str``, ``/`` separated),
        or a whole path if it is not under the root."""
        raw = self._raw(self._index(i))
        return _decode(raw[1:] if raw.startswith(_WHOLE) else raw)

    def relative(self, i: int) -> str | None:
        """The ``i``-th name relative to the root, None when it is stored whole."""
        raw = self._raw(self._index(i))
        return None if raw.startswith(_WHOLE) else _decode(raw)

    def _index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"path index {i} out of range for {n} paths")
        return i

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return PathList(self._root, self._blob, self._offsets, (self._lo + start, self._lo + max(start, stop)))
            return PathList.of(self._root, (self[j] for j in range(start, stop, step)))
        raw = self._raw(self._index(i))
        if raw.startswith(_WHOLE):
            return Path(_decode(raw[1:]))
        return self._root / _decode(raw)

    def __iter__(self) -> Iterator[Path]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PathList):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        if isinstance(other, (tuple, list)):
            return len(self) == len(other) and all(a == Path(b) for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:  # the tuple's hash, so an ImageSource hashes as it did
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"PathList({str(self._root)!r}, {len(self)} paths)"

    @property
    def nbytes(self) -> int:
        """Bytes held (blob and offsets), the whole blob even for a slice."""
        return len(self._blob) + self._offsets.nbytes


def _relative(path: str, prefix: str) -> bytes:
    """``path`` as stored under ``prefix`` (the root and a ``/``): the rest of it when
    ``Path(root) / rest == Path(path)``, else the whole path after a NUL."""
    if path.startswith(prefix) and len(path) > len(prefix) and not path[len(prefix)] == "/":
        return _encode(path[len(prefix):])
    return _WHOLE + _encode(path)


def as_pathlist(root: str | os.PathLike[str], paths: Sequence) -> PathList:
    """``paths`` as a :class:`PathList` under ``root`` (itself if it is one already)."""
    return paths if isinstance(paths, PathList) and paths.root == Path(root) else PathList.of(root, paths)
