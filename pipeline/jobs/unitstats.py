"""Unit statistics of a union of parts, exactly: what ``combine`` writes to the store.

Histogram and firing counts are sums over images, so the union of parts that share
no image is the sum of their statistics. ``--update`` parts never share one (known
contents are not mined again); resumed passes neither. Overlapping ``mine merge``
inputs do: an image counted by m parts is counted m - 1 times too often. Those
images are run through the network again, as the streaming pass ran them (same
precision, same memory format rule), and their statistics subtracted m - 1 times,
which gives the single run's counts exactly, because an image's activations do not
depend on which other images share its batch (the same assumption the streaming
top-k rests on). Their pixels come from a part that holds them (a store's kept
pixels, a fresh pass's source files) or else from the source file under the union's
root, checked by its content hash. An image found nowhere stays counted twice, with
a warning; ``/stats`` ``images`` then exceeds the images used, which ``mine info``
points out.

A part without statistics (a store written before mine kept them, a checkpoint of
that time) makes the union's statistics unknown: the result has none.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import ImageDataset, make_loader
from ..data.preprocess import Preprocessing
from ..data.sources import ImageSource
from ..devices import channels_last, pin_memory
from ..mining.statistic import merge_all
from ..mining.stats import UnitStats
from ..mining.stream import DTYPES, PassOptions, new_state, stream
from ..models.network import Network

log = logging.getLogger(__name__)
BATCH = 8


class _Records(Dataset):
    def __init__(self, fetch: list) -> None:
        self.fetch = fetch

    def __len__(self) -> int:
        return len(self.fetch)

    def __getitem__(self, i: int) -> dict:
        return self.fetch[i]()


def _fetcher(key: int, parts, paths: dict[int, Path], prep: Preprocessing):
    """A function returning the dataset record of image ``key``; ``ok`` False if its pixels
    are nowhere to be had (then the streaming pass does not count it)."""
    owner = next((p for p in parts if key in p.pixel_keys), None)
    if owner is not None:
        return lambda: {"index": 0, "sha256": "", "width": 0, "height": 0, **owner.record_of(key), "key": key}

    def from_file() -> dict:
        path = paths[key]
        rec = ImageDataset(ImageSource(str(path), path.parent, (path,)), prep)[0]
        if int(rec["key"]) != key:  # moved, deleted or edited since it was mined
            rec.update(ok=False, reason="changed")
        return {**rec, "key": key}
    return from_file


@dataclass(frozen=True)
class MiningSetup:
    """What a union is mined and finalized with: the network, its mined ``layers``, ``k``, the
    preprocessing, the device and the streaming pass's precision (one per run, merge or update)."""

    net: Network
    layers: list[str]
    k: int
    prep: Preprocessing
    device: torch.device
    precision: str


def union_stats(parts, setup: MiningSetup, root: str, table: dict) -> dict[str, dict] | None:
    """layer -> ``UnitStats.result()`` of the union of ``parts`` (``root`` and ``table``: the
    union's images table), None if some part has none."""
    missing = [p.name for p in parts if p.stats is None]
    if missing:
        log.warning("%s has no unit statistics (written before mine kept them); the result has none either: "
                    "re-run with --force to get them", ", ".join(missing))
        return None
    layers = setup.layers
    total = {n: merge_all(UnitStats(setup.net.layers[n].channels), (p.stats[n] for p in parts)) for n in layers}
    keys, times = np.unique(np.concatenate([np.fromiter(p.counted, np.int64, len(p.counted)) for p in parts]),
                            return_counts=True)  # how many parts counted each image: arrays, no dict of every key
    extra = {int(k): int(m) - 1 for k, m in zip(keys[times > 1], times[times > 1])}
    paths = {}
    for path, key, st in zip(table["path"], table["key"], table["status"]):
        if st == "ok" and int(key) in extra:  # only the images counted again: no Path per file
            paths.setdefault(int(key), Path(root) / str(path))
    lost = 0
    for mult in sorted(set(extra.values())):
        keys = sorted(k for k, m in extra.items() if m == mult)
        again = stream_stats([_fetcher(k, parts, paths, setup.prep) for k in keys], setup.net, layers, setup.prep,
                             setup.device, setup.precision)
        lost += (len(keys) - again[layers[0]].images) * mult
        for n in layers:
            for _ in range(mult):
                total[n].merge(again[n], sign=-1)
    if lost:
        log.warning("%d images shared by the merged stores could not be read again (not kept, source file moved "
                    "or changed): the unit statistics count them twice", lost)
    return {n: s.result() for n, s in total.items()}


def stream_stats(fetch: list, net: Network, layers: list[str], prep: Preprocessing, device: torch.device,
                  precision: str) -> dict[str, UnitStats]:
    state = new_state(net, layers, 1, device)
    if fetch:
        nhwc = channels_last(device)
        if nhwc:
            net.model.to(memory_format=torch.channels_last)
        loader = make_loader(_Records(fetch), BATCH, 0, pin_memory(device))
        stream(net, state, loader, prep, device, PassOptions(DTYPES[precision], nhwc))
    return state.stats

