"""Projections and image patches of store entries, from the store and the weights alone.

:class:`Renderer` turns entries (layer, channel, kept image, position, value) into T x T
projection tiles and the matching T x T patches of the kept image (T = min(R, input size), see
``models.geometry``). Two paths give the same projections:

* chains (VGG, AlexNet) with the deconvnet: the windowed walker of ``deconv.project`` over the
  stored switches, computed only inside the receptive field (no forward pass);
* everything else (residual nets, concatenations, BatchNorm, guided/gradient methods): the
  autograd walk of ``deconv.graph`` over a forward pass of the stored pixels.

Batch-size independence. A convolution library picks its algorithm (and so its order of
summation) by the tensor shapes: on CPU (oneDNN) one entry alone rounds differently from the
same entry in a batch of two or more, and a 1-ulp difference can flip a ReLU (or a display
rounding) and change PNG bytes. So, as in the streaming pass (``mining.stream``), a batch of one
is never run: a lone entry, projection or forward pass of ``Renderer.maps``, is paired with a copy
of itself. Batches of two or more give every entry the same bits whatever its neighbours
(``tests/test_render_lock.py`` renders with ``--batch-size 1`` and the default and compares bytes).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..data import normalize
from ..data.preprocess import Preprocessing
from ..deconv import METHODS, Deconvnet, Entries, auto_method, graph_entry_bytes, project_graph
from ..deconv.tiles import shift_crop
from ..models.geometry import crop_tiles
from ..models.hooks import hooked, run_to
from ..models.network import Network
from ..models.weights import BUNDLED, load_network
from ..models.weights_error import WeightsError
from ..store.read import Store
from ..store.schema import StoreError
from .normalise import to_rgb

CACHE_BYTES = 1 << 30  # switches/pixels of all kept images are held in memory below this
BATCH_BYTES = 1 << 30  # target peak memory of one projection batch
MAX_BATCH = 256
MAPS_BATCH = 16  # images per forward pass of Renderer.maps
MAX_SHIFTS = 4  # shift averaging costs shifts**2 passes per entry


def auto_shifts(net: Network, method: str) -> int:
    """Shift averaging by default (``deconv.graph``): the stride of the network's first layer for
    guided and gradient projections (a stride-2 stem's grid cancels), none for the deconvnet, which
    stays exactly Zeiler & Fergus's."""
    if method == "deconvnet":
        return 1
    first = min(net.layers.values(), key=lambda li: li.order).geometry
    return max(1, min(MAX_SHIFTS, first.stride)) if first.period == 1 else 1


def never_one(a) -> np.ndarray:
    """``a`` (first axis) with a lone row doubled: never a batch of one (see the module doc)."""
    a = np.asarray(a)
    return np.concatenate([a, a]) if len(a) == 1 else a


def load_store_network(store: Store, weights: str | None = None) -> Network:
    """The network a store was mined with; refuses weights whose hash differs from the store's."""
    a = store.attrs
    name = weights or a["weights"]
    try:
        net = load_network(a["model"], name, store.size, Preprocessing.from_dict(a["preprocessing"]))
    except WeightsError as e:
        if weights is None and name not in ("random", "imagenet", *BUNDLED):
            raise WeightsError(f"{e}; the store was mined with the checkpoint {name}: pass --weights PATH "
                               "to where it is now") from None
        raise
    if net.weights_hash != a["weights_hash"]:
        raise WeightsError(
            f"weights {name!r} (hash {net.weights_hash[:16]}) are not the ones {store.path} was mined with "
            f"(weights {a['weights']!r}, hash {str(a['weights_hash'])[:16]}); projections would not match the "
            "stored activations: pass --weights with the original weights"
        )
    return net


class _Rows:
    """Rows of a (M, ...) store dataset: all of it in memory when small enough, else per batch."""

    def __init__(self, dset, budget: int, device: torch.device | None) -> None:
        self.dset, self.device = dset, device
        nbytes = int(np.prod(dset.shape)) * dset.dtype.itemsize
        self.all = None
        if nbytes <= budget:
            self.all = self._wrap(dset[()])

    def _wrap(self, a: np.ndarray):
        return torch.from_numpy(a).to(self.device) if self.device is not None else a

    def budget_used(self) -> int:
        return 0 if self.all is None else int(np.prod(self.dset.shape)) * self.dset.dtype.itemsize

    @property
    def cached(self) -> bool:
        return self.all is not None

    def get(self, rows: np.ndarray):
        """(data, index): ``data[index[i]]`` is row ``rows[i]``."""
        if self.all is not None:
            return self.all, rows
        uniq, inv = np.unique(rows, return_inverse=True)
        return self.take(uniq), inv

    def take(self, uniq: np.ndarray):
        """Rows ``uniq`` (sorted, distinct) in that order."""
        if self.all is not None:
            return self.all[torch.as_tensor(uniq, device=self.device)] if self.device is not None else self.all[uniq]
        return self._wrap(self.dset[uniq])


class Renderer:
    """Projects and crops entries of a store with its network (see :func:`load_store_network`)."""

    def __init__(self, store: Store, net: Network, device: torch.device | str = "cpu", batch_size: int | None = None,
                 method: str = "deconvnet", shifts: int | None = 1) -> None:
        if method == "auto":  # per model: deconv.rules.auto_method
            method = auto_method(min(net.layers.values(), key=lambda li: li.order).geometry.stride)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; use one of: auto, {', '.join(METHODS)}")
        self.store, self.net, self.method = store, net, method
        self.shifts = auto_shifts(net, method) if shifts is None else int(shifts)
        if not 1 <= self.shifts <= MAX_SHIFTS:
            raise ValueError(f"--shifts must be between 1 and {MAX_SHIFTS}, got {self.shifts}")
        self.device = torch.device(device)
        net.to(self.device)
        self.size = store.size
        self.chain = Deconvnet.from_network(net, store.size) if net.chain else None
        self.prep = Preprocessing.from_dict(store.attrs["preprocessing"])
        self.batch_size = batch_size
        self.cache_bytes = CACHE_BYTES  # set before the first projection to hold less (0: read per batch)
        self._switches: dict[str, _Rows] = {}
        self._pixels: _Rows | None = None
        self.mask_source = None  # (images, end) -> kept ReLU masks or None (``render.forward``)

    def geometry(self, layer: str) -> tuple[int, int, int]:
        """(R, S, P) of a layer, checked against what the store recorded."""
        if layer not in self.net.layers:
            raise ValueError(f"layer {layer!r} is not a layer of {self.net.arch}")
        geo = self.net.layers[layer].geometry.rsp
        info = self.store.layer_info(layer)
        if geo != (int(info["rf"]), int(info["stride"]), int(info["padding"])):
            raise StoreError(f"{self.store.path}: layer {layer} geometry {info} does not match the network's {geo}")
        return geo

    def tile(self, layer: str) -> int:
        """Side of the layer's tiles: R, or the input size where R exceeds it."""
        self.geometry(layer)
        return self.net.layers[layer].geometry.tile_size(self.size)

    def windowed(self, layer: str) -> int | None:
        """Chain index of the layer when the windowed walker applies (deconvnet, or guided with the
        forward masks of :meth:`Deconvnet.relu_masks`; no shift averaging), else None."""
        plain = self.method in ("deconvnet", "guided") and self.shifts == 1
        return self.net.chain_index(layer) if plain and self.chain is not None else None

    def _switch_rows(self, pool: str, layer: str) -> _Rows:
        if pool not in self._switches:
            switches = self.store.switches_dataset(pool)
            if switches is None:
                raise StoreError(f"{self.store.path} has no max-pool switches for {pool}, which projecting "
                                 f"{layer} needs; it records: {', '.join(self.store.pools()) or 'none'}")
            used = sum(r.budget_used() for r in self._switches.values())
            self._switches[pool] = _Rows(switches, self.cache_bytes - used, self.device)
        return self._switches[pool]

    def _pixel_rows(self) -> _Rows:
        if self._pixels is None:
            self._pixels = _Rows(self.store.pixels_dataset(), self.cache_bytes // 2, None)
        return self._pixels

    def batch_for(self, layer: str) -> int:
        if self.batch_size:
            return int(self.batch_size)
        end = self.windowed(layer)
        per = self.chain.entry_bytes(end) if end is not None else graph_entry_bytes(self.net, layer)
        return int(max(1, min(MAX_BATCH, BATCH_BYTES // max(per, 1))))

    def project(self, layer: str, channel, kept, y, x, value) -> tuple[np.ndarray, np.ndarray]:
        """Projections (N, 3, T, T) float32 RGB and patches (N, T, T, 3) uint8 of N entries.

        Entries are given by channel, kept-image row, position and value (numpy arrays).
        """
        geo = self.net.layers[layer].geometry if layer in self.net.layers else None
        t = self.tile(layer)
        channel, kept, y, x = (np.asarray(a, np.int64).reshape(-1) for a in (channel, kept, y, x))
        value = np.asarray(value, np.float32).reshape(-1)
        n = len(channel)
        tiles = np.zeros((n, 3, t, t), np.float32)
        crops = np.zeros((n, t, t, 3), np.uint8)
        if n == 0:
            return tiles, crops
        if (kept < 0).any():
            raise ValueError("empty slots (kept = -1) cannot be projected")
        order = np.argsort(kept, kind="stable")  # entries of one image together
        bs = self.batch_for(layer)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            oy, ox = geo.tile_origin(y[idx], x[idx], self.size)
            tiles[idx] = self._project_batch(layer, Entries(channel[idx], y[idx], x[idx], value[idx], kept[idx]),
                                             (oy, ox), t)
            pix, pidx = self._pixel_rows().get(kept[idx])
            crops[idx] = crop_tiles(pix, pidx, oy, ox, t)
        return to_rgb(tiles, self.prep), crops

    def _project_batch(self, layer: str, e: Entries, origin: tuple[np.ndarray, np.ndarray], t: int) -> np.ndarray:
        """Tiles of a batch of entries (``e.image``: their kept rows; ``origin``: their tiles' corners in the
        input), a lone entry computed paired with itself."""
        n = len(e)
        e, origin = Entries(*(never_one(a) for a in (e.channel, e.y, e.x, e.value, e.image))), tuple(map(never_one, origin))
        return self._project_paired(layer, e, origin, t)[:n]

    def _project_paired(self, layer: str, e: Entries, origin: tuple[np.ndarray, np.ndarray], t: int) -> np.ndarray:
        dev = self.device
        as_t = lambda a: torch.as_tensor(a, device=dev)
        end = self.windowed(layer)
        oy, ox = origin
        if end is not None:
            sw, image, masks = self._walker_inputs(layer, end, e.image)
            with torch.inference_mode():
                z = self.chain.project(end, replace(e, image=image), sw, window=True, masks=masks)
                top, left = (as_t(a) for a in self.net.layers[layer].geometry.corner(e.y, e.x))
                if z.shape[-1] != t:  # R exceeds the input: the tile is the whole input
                    z = shift_crop(z, as_t(oy) - top, as_t(ox) - left, t)
        else:
            pix, pidx = self._pixel_rows().get(e.image)
            inputs = normalize(torch.from_numpy(np.ascontiguousarray(pix[pidx])).to(dev), self.prep)
            full = project_graph(self.net, layer, inputs, Entries(*(as_t(a) for a in (e.channel, e.y, e.x, e.value))),
                                 self.method, self.shifts)
            with torch.inference_mode():
                z = shift_crop(full, as_t(oy), as_t(ox), t)
        return z.float().cpu().numpy()

    def _walker_inputs(self, layer: str, end: int, kept: np.ndarray) -> tuple[dict, np.ndarray, dict | None]:
        """The windowed walker's switches, each entry's row in them, and the guided ReLU masks (or None)."""
        pools = {self.net.chain_index(p): self._switch_rows(p, layer) for p in self.net.pools_through([layer])}
        if self.method == "deconvnet" and all(src.cached for src in pools.values()):  # resident switches
            return {i: src.all for i, src in pools.items()}, kept, None
        # this batch's images only, the same row order for every pool (and mask)
        uniq, image = np.unique(kept, return_inverse=True)
        sw = {i: src.take(uniq) for i, src in pools.items()}
        masks = None
        if self.method == "guided" and self.mask_source is not None:
            masks = self.mask_source(uniq, end)
        if self.method == "guided" and masks is None:  # one forward pass per distinct image of the batch
            pix = torch.from_numpy(np.ascontiguousarray(self.pixels(never_one(uniq)))).to(self.device)
            with torch.inference_mode():
                masks = self.chain.relu_masks(normalize(pix, self.prep), end)
        return sw, image, masks

    def feature(self, layer: str, c: int, arrays: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All k slots of channel c: projections (k, 3, T, T), patches (k, T, T, 3), filled mask (k,).

        Empty slots are zeros (projection) and black (patch).
        """
        a = arrays or self.store.arrays(layer)
        if not 0 <= c < a["value"].shape[0]:
            raise ValueError(f"feature {c} out of range: {layer} has {a['value'].shape[0]} channels")
        filled = a["kept"][c] >= 0
        t = self.tile(layer)
        k = a["value"].shape[1]
        tiles = np.zeros((k, 3, t, t), np.float32)
        crops = np.zeros((k, t, t, 3), np.uint8)
        sel = np.nonzero(filled)[0]
        tiles[sel], crops[sel] = self.project(layer, np.full(len(sel), c), a["kept"][c, sel], a["y"][c, sel],
                                              a["x"][c, sel], a["value"][c, sel])
        return tiles, crops, filled

    def pixels(self, kept) -> np.ndarray:
        """(N, S, S, 3) uint8 network inputs (before normalisation) of kept-image rows."""
        pix, pidx = self._pixel_rows().get(np.asarray(kept, np.int64).reshape(-1))
        return np.asarray(pix)[pidx]

    def maps(self, layer: str, kept, channel, batch: int = MAPS_BATCH) -> np.ndarray:
        """(N, h, w) float32: the layer's map of channel ``channel[i]`` on kept image ``kept[i]``.

        One forward pass (up to the layer) per distinct image, whatever the number of entries,
        ``batch`` images at a time (a lone image paired with itself: see the module doc).
        """
        kept, channel = (np.asarray(a, np.int64).reshape(-1) for a in (kept, channel))
        li = self.net.layers[layer]
        out = np.zeros((len(kept), li.out_size, li.out_size), np.float32)
        uniq = np.unique(kept)
        got: dict[str, torch.Tensor] = {}
        for s in range(0, len(uniq), batch):
            rows = uniq[s:s + batch]
            px = torch.from_numpy(np.ascontiguousarray(self.pixels(never_one(rows)))).to(self.device)
            with torch.inference_mode(), hooked(self.net, [layer], lambda n, o: got.__setitem__(n, o)):
                run_to(self.net, normalize(px, self.prep))
            sel = np.nonzero(np.isin(kept, rows))[0]
            local = torch.as_tensor(np.searchsorted(rows, kept[sel]), device=self.device)
            out[sel] = got[layer][local, torch.as_tensor(channel[sel], device=self.device)].float().cpu().numpy()
        return out
