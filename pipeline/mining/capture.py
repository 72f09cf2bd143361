"""What finalize needs, captured during the streaming pass for the current top-k candidates.

Finalize re-runs the kept images in float32 to get their values, max-pool switches and
pixels. When most images end up kept (``--layer all`` over a few hundred images keeps
almost all of them) that re-run costs as much as the streaming pass itself. When the
streaming pass is float32 in the contiguous memory format, the streaming forward already
computes exactly those numbers, provided the forward pass gives each image the same bits
whatever images share its batch (batch invariance). ``Capture`` keeps, for the images
currently in some top-k, their uint8 pixels and the switches of every pool finalize would
store, within a memory budget; finalize takes captured images as they are and re-runs only
the others. Images that drop out of every top-k are evicted after each batch.

Exactness: ``batch_invariant`` probes the network once at start-up (three images run as
one batch of 3 and as batches of 2 and 1 must give identical layer maxima and switches);
where it fails (e.g. oneDNN picks another kernel for a batch of one at tiny inputs, or
cuDNN on GPUs) nothing is captured and finalize re-runs everything as before. Only the
pixels are captured then (decoding twice is avoided either way; pixels are exact).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import normalize
from ..data.preprocess import Preprocessing
from ..models.geometry import step_of
from ..models.network import Network
from .switches import pool_offsets
from .taps import layer_maxima
from .topk import EMPTY_KEY, RunningTopK

DEFAULT_BUDGET_MB = 2048
MIN_ADMITTED = 0.1  # see Capture.hooks


class Capture:
    """key -> (pixels (S, S, 3) uint8, {pool: (C, Ho, Wo) uint8 switches or None})."""

    def __init__(self, pools: list[str], switches: bool, budget_mb: float = DEFAULT_BUDGET_MB) -> None:
        self.pools, self.switches = list(pools), switches
        self.budget = int(budget_mb * 2**20)
        self.items: dict[int, tuple[np.ndarray, dict[str, np.ndarray] | None]] = {}
        self.bytes = 0
        self.full = False  # the budget was hit at least once (some candidates are not captured)
        self.admitted = 1.0  # fraction of the last batch's images that entered some top-k

    def hooks(self, net: Network):
        """Pre-hooks computing switches during the streaming forward (filled into the returned dict).

        Switches cost about a max-pool per pool and image; once the top-k are full and few
        images of a batch still enter them (below ``MIN_ADMITTED``, judged by the previous
        batch) re-running those few in finalize is cheaper, so only pixels are kept then."""
        found: dict[str, torch.Tensor] = {}
        handles = []
        if self.switches and self.admitted >= MIN_ADMITTED:
            for p in self.pools:
                st = step_of(net.module(p))
                handles.append(net.module(p).register_forward_pre_hook(
                    lambda _m, inp, p=p, st=st: found.__setitem__(p, pool_offsets(inp[0], st))))
        return found, handles

    def add(self, keys: torch.Tensor, pixels: torch.Tensor, offsets: dict[str, torch.Tensor],
            tops: dict[str, RunningTopK]) -> None:
        """After a batch is folded: keep the batch's images that are in some top-k, drop the
        captured ones that no longer are."""
        kept = _kept_keys(tops)
        for key in list(self.items):
            if key not in kept:
                px, sw = self.items.pop(key)
                self.bytes -= _size(px, sw)
        batch_keys = keys.tolist()
        self.admitted = sum(k in kept for k in batch_keys) / max(1, len(batch_keys))
        with_switches = self.switches and len(offsets) == len(self.pools)
        sw_host = {p: o.cpu().numpy() for p, o in offsets.items()} if with_switches else None
        px_host = pixels.numpy()
        for i, key in enumerate(batch_keys):
            if key in kept and key not in self.items:
                px = px_host[i].copy()
                sw = {p: a[i].copy() for p, a in sw_host.items()} if sw_host is not None else None
                n = _size(px, sw)
                if self.bytes + n > self.budget:
                    self.full = True
                    continue
                self.items[key] = (px, sw)
                self.bytes += n

    def pixels(self, key: int) -> np.ndarray | None:
        item = self.items.get(key)
        return None if item is None else item[0]


def _size(px, sw) -> int:
    return px.nbytes + (sum(a.nbytes for a in sw.values()) if sw else 0)


def _kept_keys(tops: dict[str, RunningTopK]) -> set[int]:
    keys = torch.cat([t.keys.flatten() for t in tops.values()])
    return set(torch.unique(keys[keys != EMPTY_KEY]).tolist())


def batch_invariant(net: Network, layers: list[str], prep: Preprocessing, device: torch.device) -> bool:
    """True if three images give bit-identical layer maxima and switches as one batch of 3
    and as batches of 2 and 1 (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    px = torch.randint(0, 256, (3, prep.size, prep.size, 3), dtype=torch.uint8, generator=g)
    x = normalize(px.to(device), prep).float()
    pools = net.pools_through(layers)
    cap = Capture(pools, True)

    def once(xs):
        found, handles = cap.hooks(net)
        try:
            m = layer_maxima(net, layers, xs)
        finally:
            for h in handles:
                h.remove()
        return m, dict(found)

    (m3, s3), (m2, s2), (m1, s1) = once(x), once(x[:2]), once(x[2:])
    for name in layers:
        for j in (0, 1):
            if not torch.equal(m3[name][j], torch.cat([m2[name][j], m1[name][j]])):
                return False
    return all(torch.equal(s3[p], torch.cat([s2[p], s1[p]])) for p in pools)
