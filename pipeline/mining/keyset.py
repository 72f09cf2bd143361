"""A set of int64 content keys as a few sorted disjoint numpy arrays, exact membership.

Why: a run keeps the keys of every image content it fed (and ``--update`` those the base store
holds); a Python set costs ~70 bytes a key, this ~8. The arrays' sizes halve from one to the next
and are merged as they fill, like a binary counter: O(log n) work per key.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


class KeySet:
    """A set of int64 keys: sorted disjoint arrays, each at most half the size of the one before
    (``add``/``update`` merge the small ones as they fill). ``k in s``, ``contains`` (vectorised),
    ``len``, iteration in ascending order, ``|=``."""

    def __init__(self, keys: Iterable[int] | np.ndarray = ()) -> None:
        self._levels: list[np.ndarray] = []
        self._n = 0
        self.update(keys)

    def contains(self, keys) -> np.ndarray:
        """Whether each of ``keys`` is in the set (bool array)."""
        keys = np.asarray(keys, np.int64).reshape(-1)
        found = np.zeros(len(keys), bool)
        for level in self._levels:
            at = np.searchsorted(level, keys).clip(max=len(level) - 1)
            found |= level[at] == keys
        return found

    def update(self, keys: Iterable[int] | np.ndarray) -> None:
        if not isinstance(keys, np.ndarray):
            keys = np.fromiter(keys, np.int64)
        new = np.unique(np.asarray(keys, np.int64).reshape(-1))
        new = new[~self.contains(new)]
        if not len(new):
            return
        self._n += len(new)
        while self._levels and len(self._levels[-1]) <= 2 * len(new):
            new = np.sort(np.concatenate([self._levels.pop(), new]), kind="stable")
        self._levels.append(new)

    def add(self, key: int) -> None:
        self.update(np.array([key], np.int64))

    def __ior__(self, keys) -> "KeySet":
        self.update(keys)
        return self

    def __contains__(self, key) -> bool:
        return bool(self.contains([int(key)])[0])

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[int]:
        keys = self.array()
        for start in range(0, len(keys), 65536):  # Python ints a chunk at a time
            yield from keys[start:start + 65536].tolist()

    def array(self) -> np.ndarray:
        """Every key, ascending."""
        return np.sort(np.concatenate(self._levels)) if self._levels else np.zeros(0, np.int64)
