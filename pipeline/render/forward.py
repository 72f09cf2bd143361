"""One forward pass per kept image for a whole render.

A unit's files need two things from the forward pass of each of its kept images: the unit's map
(heatmaps, the top-k level) and, for guided projections on the windowed walker, where every ReLU
below the layer was active (``Deconvnet.relu_masks``). Computed per projection batch and per layer,
the forward passes cost more than the projections (VGG16 at 224 px, conv4_3: 25 s of maps and 29 s
of masks for 5 s of windowed projections of 8 units). A render's units share few images (the demo
store: 4,224 units of 13 layers, 68 kept images), so :class:`Forwards` runs the network once per
image for every layer it renders and keeps

* the masks of every ReLU up to the deepest guided windowed layer, bit-packed (VGG16 at 224 px:
  1.7 MB per image), while they fit ``MASK_BYTES`` (images beyond are computed per batch, as before);
* the maps of the units this process renders, layer group by layer group under ``MAPS_BYTES``.

Bits: images go through the network ``MAPS_BATCH`` at a time (a lone image paired with itself), so
every value is the one a batch of two or more gives (``project``'s module doc): the same maps and
masks whatever images a process or a batch holds.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import normalize
from ..deconv import PackedMask
from ..models.hooks import hooked, run_to
from .renderer import MAPS_BATCH, Renderer, never_one

MASK_BYTES = 512 << 20  # packed ReLU masks kept for the whole render
MAPS_BYTES = 512 << 20  # unit maps computed per forward pass group


class Forwards:
    """``fw = Forwards(rnd, plan)``; ``fw.maps(layer)`` -> channel -> (filled, h, w) maps;
    ``rnd.mask_source = fw.masks`` gives the walker the cached ReLU masks."""

    def __init__(self, rnd: Renderer, units: dict[str, list[int]], arrays: dict[str, dict]) -> None:
        self.rnd, self.net = rnd, rnd.net
        self.units = {n: cs for n, cs in units.items() if cs}
        self.arrays = arrays
        guided = [n for n in self.units if rnd.method == "guided" and rnd.windowed(n) is not None]
        self.depth_layer = max(guided, key=lambda n: self.net.chain_index(n)) if guided else None
        self.relus: dict[int, nn.Module] = {}
        if self.depth_layer is not None:
            mods = self.net.chain_modules()
            end = self.net.chain_index(self.depth_layer)
            relus = {i: m for i, m in enumerate(mods[:end + 1]) if isinstance(m, nn.ReLU)}
            if len({id(m) for m in relus.values()}) == len(relus):  # one module per ReLU: one hook each
                self.relus = relus
        self.packed: dict[int, dict[int, np.ndarray]] = {}  # image row -> relu index -> packed bits
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.mask_bytes = 0
        self.groups = self._groups()
        self._maps: dict[str, dict[int, np.ndarray]] = {}

    # --- which layers share a forward pass -----------------------------------------------
    def _entries(self, layer: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        chans = self.units[layer]
        kept = self.arrays[layer]["kept"][chans]
        ci, ri = np.nonzero(kept >= 0)
        return chans, kept[ci, ri].astype(np.int64), np.asarray(chans, np.int64)[ci]

    def _groups(self) -> list[list[str]]:
        groups: list[list[str]] = []
        size = 0
        for n in self.units:
            li = self.net.layers[n]
            b = len(self._entries(n)[1]) * li.out_size * li.out_size * 4
            if groups and size + b <= MAPS_BYTES:
                groups[-1].append(n)
                size += b
            else:
                groups.append([n])
                size = b
        return groups

    # --- the forward passes --------------------------------------------------------------
    def _run(self, group: list[str]) -> None:
        """One forward per image of the group's entries: their maps, and the masks not yet kept."""
        entries = {n: self._entries(n) for n in group}
        out = {n: np.zeros((len(k), self.net.layers[n].out_size, self.net.layers[n].out_size), np.float32)
               for n, (_, k, _) in entries.items()}
        uniq = np.unique(np.concatenate([k for _, k, _ in entries.values()]))
        want_masks = bool(self.relus) and any(int(m) not in self.packed for m in uniq)
        hook_layers = list(group) + ([self.depth_layer] if want_masks and self.depth_layer not in group else [])
        dev = self.rnd.device
        for s in range(0, len(uniq), MAPS_BATCH):
            rows = uniq[s:s + MAPS_BATCH]
            fresh = [m for m in rows if m not in self.packed] if want_masks else []
            keep_masks = bool(fresh) and self.mask_bytes < MASK_BYTES
            got: dict[int, torch.Tensor] = {}
            handles = [m.register_forward_hook(lambda _m, _i, o, i=i, got=got: got.__setitem__(i, (o > 0).cpu()))
                       for i, m in self.relus.items()] if keep_masks else []

            def take(n: str, o: torch.Tensor, rows=rows) -> None:
                if n not in entries:
                    return
                _, kept, ch = entries[n]
                sel = np.nonzero(np.isin(kept, rows))[0]
                local = torch.as_tensor(np.searchsorted(rows, kept[sel]), device=dev)
                out[n][sel] = o[local, torch.as_tensor(ch[sel], device=dev)].float().cpu().numpy()

            px = torch.from_numpy(np.ascontiguousarray(self.rnd.pixels(never_one(rows)))).to(dev)
            try:
                with torch.inference_mode(), hooked(self.net, hook_layers, take):
                    run_to(self.net, normalize(px, self.rnd.prep))
            finally:
                for h in handles:
                    h.remove()
            if keep_masks and len(got) == len(self.relus):
                for j, m in enumerate(rows):
                    if m in self.packed:
                        continue
                    self.packed[int(m)] = {i: np.packbits(t[j].numpy(), axis=-1) for i, t in got.items()}
                    self.shapes.update({i: tuple(t.shape[1:]) for i, t in got.items()})
                    self.mask_bytes += sum(p.nbytes for p in self.packed[int(m)].values())
        for n, (chans, _, ch) in entries.items():
            self._maps[n] = {c: out[n][ch == c] for c in chans}

    def maps(self, layer: str) -> dict[int, np.ndarray]:
        """Channel -> (filled slots, h, w) maps of the layer's units on their kept images, best first."""
        if layer not in self._maps:
            group = next(g for g in self.groups if layer in g)
            for n in group:
                self._maps.pop(n, None)
            self._run(group)
        return self._maps.pop(layer)

    def masks(self, uniq: np.ndarray, end: int) -> dict[int, PackedMask] | None:
        """The ReLU masks up to chain module ``end`` of images ``uniq`` (``(len(uniq), C, H, W)`` each, still
        bit-packed: the walker reads the entries' windows), or None when one of them is not kept (the walker
        then runs the forward itself)."""
        if not all(int(m) in self.packed for m in uniq):
            return None
        idx = [i for i in self.relus if i <= end]
        dev = self.rnd.device
        return {i: PackedMask(torch.from_numpy(np.stack([self.packed[int(m)][i] for m in uniq])).to(dev),
                              self.shapes[i][-1]) for i in idx}
