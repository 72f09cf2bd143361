"""Read a store: metadata, entries, crops and switches, without the source images.

``Store`` is what notebooks, ``mine info``/``mine top`` and ``mine render`` use.
Opening validates the whole schema (``validate``: format, status, attributes,
groups, datasets, shapes, dtypes, index ranges), so a truncated, half-written,
damaged or foreign file is one clear ``StoreError`` and never a traceback. Opening
reads no /images rows but the kept ones, so it takes the same time for any number of
images; ``images()`` reads (and checks) the whole table.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from ..mining import stats as unit_stats
from ..models.geometry import Geometry, pad_crop
from ..models.layers import select_layers
from .schema import (
    EMBED,
    FIRES,
    FORMAT,
    HIST,
    IMAGES,
    KEPT_IMAGE,
    KEPT_KEY,
    KEPT_PIXELS,
    LAYERS,
    STATS,
    SWITCHES,
    StoreError,
    as_str,
    column,
    pooled_column,
)
from .validate import Damaged, check_table, plain, read_column, validate
from .validate import rows as read_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One kept activation."""

    layer: str
    feature: int
    rank: int
    value: float
    key: int
    kept: int  # row in /kept
    path: str
    y: int
    x: int
    box: tuple[int, int, int, int]  # [top, left, bottom, right) clipped, input pixels

    def to_json(self) -> dict:
        d = asdict(self)
        d["box"] = list(self.box)
        return d


@dataclass(frozen=True)
class UnitSummary:
    """A layer's unit statistics (``mining/stats.py`` has the bins and error bounds).

    ``quantile``/``quantile_lo``/``quantile_hi``: the q-quantile of each channel over
    every position of every image counted (estimate and the bin that holds the exact
    value); ``mean`` from the bins; ``firing``: fraction of images whose spatial
    maximum is > 0; ``dead``: channels never positive on any image.
    """

    layer: str
    q: float
    images: int
    hist: np.ndarray  # (C, bins) int64
    fired: np.ndarray  # (C,) int64
    quantile: np.ndarray
    quantile_lo: np.ndarray
    quantile_hi: np.ndarray
    mean: np.ndarray
    firing: np.ndarray

    @property
    def dead(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.fired == 0)]


def live_units(arrays: dict) -> np.ndarray:
    """(C,) bool: the unit has a filled slot with a value above 0.

    A dead unit (no slot, or every kept value <= 0) keeps images by the tie rule alone
    (smaller image id, then position (0, 0)): its "top images" say nothing about it.
    """
    return ((arrays["kept"] >= 0) & (arrays["value"] > 0)).any(axis=1)


def border_places(arrays: dict, size: int) -> dict[int, tuple[int, int, int, int]]:
    """Border units -> (y, x, entries there, filled entries): each live unit with two or more
    filled slots, at least two thirds of them at one (y, x) on the edge of its ``size`` x ``size``
    map (ties between positions: the smaller y * size + x).

    Such a unit answers to the zero padding at that border (MobileNetV2 features.14: 30 of 160
    units have all nine at one position; features.11 unit 84 has eight of nine at (0, 13) and one
    at (0, 0)), not to what its images show, so its top images repeat other units' and its
    patches are mostly padding. Maps without an interior (``size`` < 3) have no border units.
    """
    if size < 3:
        return {}
    live = live_units(arrays)
    out = {}
    for c, (kept, ys, xs) in enumerate(zip(arrays["kept"], arrays["y"], arrays["x"])):
        got = (ys * size + xs)[kept >= 0]
        if len(got) < 2 or not live[c]:
            continue
        where, count = np.unique(got, return_counts=True)
        y, x = divmod(int(where[np.argmax(count)]), size)
        if 3 * count.max() >= 2 * len(got) and (y in (0, size - 1) or x in (0, size - 1)):
            out[c] = (y, x, int(count.max()), len(got))
    return out


def border_units(arrays: dict, size: int) -> np.ndarray:
    """(C,) bool: the units :func:`border_places` finds."""
    out = np.zeros(len(arrays["kept"]), bool)
    out[list(border_places(arrays, size))] = True
    return out


def strongest_channels(arrays: dict, n: int) -> list[int]:
    """The ``n`` channels with the largest top value (ties: lower channel); dead ones (see
    :func:`live_units`) left out."""
    best = np.where(live_units(arrays), arrays["value"][:, 0], -np.inf)
    order = np.lexsort((np.arange(len(best)), -best))
    return [int(c) for c in order[:n] if best[c] > -np.inf]


def overview_channels(arrays: dict, n: int, size: int) -> list[int]:
    """Up to ``n`` live channels that show different things: what a layer overview shows, in pick order.

    Walking the channels from the strongest, a channel is skipped when more than half of its
    kept images are among the kept images of one channel already picked (the same pictures
    again), and border units (:func:`border_units`, whose top images are padding responses)
    are left for later. When fewer than ``n`` remain, border units that bring new images come
    next, then the strongest of the rest; dead units never.
    """
    order = strongest_channels(arrays, len(arrays["value"]))
    border = border_units(arrays, size)
    images = {c: set(arrays["kept"][c][arrays["kept"][c] >= 0].tolist()) for c in order}
    picked: list[int] = []

    def new(c: int) -> bool:
        return all(len(images[c] & images[p]) * 2 <= len(images[c]) for p in picked)

    for allowed in (lambda c: not border[c] and new(c), new, lambda c: True):
        for c in order:
            if len(picked) == n:
                return picked
            if c not in picked and allowed(c):
                picked.append(c)
    return picked


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file whose ``format`` attribute says mine-store (nothing else checked:
    ``Store`` validates); what ``mine render`` looks for when no store is given."""
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except OSError:
        return False
    return as_str(fmt) == FORMAT if fmt is not None else False


class Store:
    """A read-only view of a finished store. Use as a context manager or call ``close``."""

    def __init__(self, path: str | Path, require_complete: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"store {self.path} does not exist")
        if not self.path.is_file():  # HDF5 would block on a FIFO, read a device forever
            raise StoreError(f"store {self.path} is not a regular file")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as e:
            raise StoreError(f"{self.path} is not a readable HDF5 store (corrupt or truncated?): {e}") from None
        try:
            self.attrs = validate(self.f, self.path, require_complete)
            self.layers: list[str] = list(self.attrs["layers"])
            self.k = int(self.attrs["k"])
            self.size = int(self.attrs["input_size"])
            self.n_images = int(self.f[column("path")].shape[0])
            self._kept_image = self.f[KEPT_IMAGE][()]
            self._kept_paths: list[str] | None = None  # read on first use: the kept rows only
            self._stats_usable: bool | None = None  # checked on first use: /stats present, bins version ours
        except StoreError:
            self.f.close()
            raise
        except (KeyError, OSError, ValueError) as e:
            self.f.close()
            raise StoreError(f"{self.path} is damaged: {e}") from None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.f.close()

    # --- layers and entries -------------------------------------------------
    def layer_info(self, layer: str) -> dict:
        self._check_layer(layer)
        return {k: plain(v) for k, v in self.f[LAYERS][layer].attrs.items()}

    def channels(self, layer: str) -> int:
        return int(self.layer_info(layer)["channels"])

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} is not in {self.path}; it has: {self._listing()}")

    # --- layer names: every command that takes --layer on a store resolves it here ----------
    def module_paths(self) -> dict[str, str]:
        """Layer name -> the module path it was mined from (``conv5`` -> ``features.11``)."""
        return {n: str(plain(self.f[LAYERS][n].attrs.get("module", n))) for n in self.layers}

    def _listing(self) -> str:
        return ", ".join(n if p == n else f"{n} ({p})" for n, p in self.module_paths().items())

    def select(self, spec: str | list[str]) -> list[str]:
        """The store's layers named by ``--layer``: names, module paths, globs of either, ``all``;
        in store order. A ValueError names what the store has."""
        try:
            return select_layers(spec, self.layers, paths=self.module_paths())
        except ValueError as e:
            if "unknown layer" not in str(e):
                raise
            raise ValueError(f"{str(e).split(';')[0]} in {self.path}; it has: {self._listing()}") from None

    def layer_name(self, layer: str | None) -> str:
        """The one layer a command works on, by name or module path (``mine run --layer features.11``
        stores ``conv5``; ``--layer features.11`` finds it again). ``None`` is the only layer of a
        one-layer store; with several, a ValueError asks for --layer and lists them."""
        if layer is None:
            if len(self.layers) == 1:
                return self.layers[0]
            raise ValueError(f"{self.path} has {len(self.layers)} layers: give --layer, one of {self._listing()}")
        if layer in self.layers:
            return layer
        by_path = {p: n for n, p in self.module_paths().items()}
        if layer in by_path:
            return by_path[layer]
        raise ValueError(f"layer {layer!r} is not in {self.path}; it has: {self._listing()}")

    def arrays(self, layer: str) -> dict[str, np.ndarray]:
        """All (channels, k) arrays of a layer: value, kept, key, y, x, box."""
        self._check_layer(layer)
        g = self.f[LAYERS][layer]
        return {n: g[n][()] for n in ("value", "kept", "key", "y", "x", "box")}

    def entries(self, layer: str, feature: int, arrays: dict | None = None) -> list[Entry]:
        """The filled slots of one channel, best first (fewer than k if fewer images)."""
        a = arrays or self.arrays(layer)
        if not 0 <= feature < a["value"].shape[0]:
            raise ValueError(f"feature {feature} out of range: {layer} has {a['value'].shape[0]} channels")
        out = []
        for r in range(a["value"].shape[1]):
            kept = int(a["kept"][feature, r])
            if kept < 0:
                continue
            out.append(Entry(layer, feature, r, float(a["value"][feature, r]), int(a["key"][feature, r]), kept,
                             self.kept_path(kept), int(a["y"][feature, r]), int(a["x"][feature, r]),
                             tuple(int(v) for v in a["box"][feature, r])))
        return out

    def topk_state(self, layer: str) -> dict[str, np.ndarray]:
        """The layer's entries as a ``RunningTopK`` state (for ``--update`` and ``mine merge``):
        values float32 (-inf where empty), keys int64 (-1 empty), flat positions
        ``y * out_size + x`` (-1 empty), each (channels, k), best first."""
        a = self.arrays(layer)
        w = int(self.layer_info(layer)["out_size"])
        empty = a["kept"] < 0
        return {"values": np.where(empty, -np.inf, a["value"]).astype(np.float32),
                "keys": np.where(empty, -1, a["key"]).astype(np.int64),
                "pos": np.where(empty, -1, a["y"].astype(np.int64) * w + a["x"]).astype(np.int64)}

    # --- unit statistics --------------------------------------------------------
    def has_stats(self) -> bool:
        """False for stores written before mine kept unit statistics (or merged from one)."""
        return STATS in self.f

    def stats_images(self) -> int | None:
        """The images the unit statistics counted (/stats ``images``; after a merge that could not
        re-read shared images it can exceed ``images_seen``), None without statistics."""
        return int(self.f[STATS].attrs["images"]) if self.has_stats() else None

    def _stats_group(self, layer: str):
        """The layer's group when its statistics can be read: present and counted into the bins this
        mine reads (``bins_version``; another version is ignored, with one warning per store)."""
        self._check_layer(layer)
        g = self.f[LAYERS][layer]
        if not self.has_stats() or HIST not in g:
            return None
        if self._stats_usable is None:
            a = self.f[STATS].attrs
            self._stats_usable = int(a.get("bins_version", -1)) == unit_stats.BINS_VERSION
            if not self._stats_usable:  # counted otherwise: not comparable
                log.warning("%s has unit statistics of bins version %s, this mine reads %s: ignoring them (mine run "
                            "--force rebuilds them)", self.path, a.get("bins_version"), unit_stats.BINS_VERSION)
        return g if self._stats_usable else None

    def stats_state(self, layer: str) -> dict | None:
        """The layer's statistics as a ``UnitStats`` state (hist, fired, images), None if absent."""
        g = self._stats_group(layer)
        if g is None:
            return None
        return {"hist": g[HIST][()], "fired": g[FIRES][()], "images": self.stats_images()}

    def unit_hist(self, layer: str, channel: int) -> np.ndarray | None:
        """(bins,) int64 counts of one unit (bins: ``mining.stats.BINS``), None without usable statistics;
        reads that unit's row only."""
        g = self._stats_group(layer)
        return None if g is None else g[HIST][int(channel)]

    def unit_stats(self, layer: str, q: float = 0.99) -> UnitSummary | None:
        """Quantile (default 0.99), mean, firing fraction and dead units of every channel."""
        st = self.stats_state(layer)
        if st is None:
            return None
        qs = unit_stats.quantile(st["hist"], q)
        with np.errstate(invalid="ignore", divide="ignore"):
            firing = st["fired"] / st["images"] if st["images"] else np.full(len(st["fired"]), np.nan)
        return UnitSummary(layer, q, st["images"], st["hist"], st["fired"], qs["value"], qs["lo"], qs["hi"],
                           unit_stats.mean(st["hist"]), firing)

    def levels(self, layer: str, q: float) -> np.ndarray | None:
        """(C,) the q-quantile of each unit over the positions its statistics counted (``mining.stats.quantile``,
        the one quantile of a histogram: the heatmaps' level is ``unit_stats(layer, q).quantile``), None
        without usable statistics."""
        st = self.stats_state(layer)
        return None if st is None else unit_stats.quantile(st["hist"], q)["value"]

    def kept_keys(self) -> np.ndarray:
        """(M,) int64 image key of each row of /kept (sorted ascending)."""
        return self.f[KEPT_KEY][()]

    @property
    def n_kept(self) -> int:
        """M, the rows of /kept: the distinct images some entry keeps."""
        return len(self._kept_image)

    def top_entries(self, layer: str, n: int | None = None) -> list[Entry]:
        """The top-n entries of a layer across all channels (one per channel), best first."""
        a = self.arrays(layer)
        return [self.entries(layer, c, a)[0] for c in strongest_channels(a, n or self.k)]

    # --- images --------------------------------------------------------------
    def kept_path(self, kept: int) -> str:
        """The path of kept image ``kept``: the paths of every kept row are read once, on first use
        (``rows``: only the chunks of /images/path that hold them, not the whole table)."""
        if self._kept_paths is None:
            try:
                self._kept_paths = [plain(p) for p in read_rows(self.f[column("path")], self._kept_image)]
            except Damaged as e:
                raise StoreError(f"{self.path} is damaged: {e}") from None
        return self._kept_paths[int(kept)]

    def images(self) -> dict[str, np.ndarray]:
        """The per-file columns (path, sha256, key, status, width, height[, label][, size, mtime_ns,
        ctime_ns]); not the pooled vectors. Reads the whole table (and checks its values)."""
        try:
            cols = {k: read_column(self.f[IMAGES][k]) for k in self.f[IMAGES] if not k.startswith(pooled_column(""))}
            check_table(cols)
        except Damaged as e:
            raise StoreError(f"{self.path} is damaged: {e}") from None
        return cols

    def image_counts(self) -> dict[str, int]:
        """files, used ("ok"), skipped, duplicate: from the attributes (no row read) when the store
        has ``images_duplicate``, else from /images/status."""
        a, n = self.attrs, self.n_images
        if "images_duplicate" in a and "images_skipped" in a:
            dup, skipped = int(a["images_duplicate"]), int(a["images_skipped"])
        else:
            st = [plain(x) for x in self.images()["status"]]
            dup, skipped = st.count("duplicate"), sum(x.startswith("skipped") for x in st)
        return {"files": n, "ok": n - dup - skipped, "skipped": skipped, "duplicate": dup}

    def has_column(self, name: str) -> bool:
        """Whether /images has the column ``name`` (``label`` and ``pooled_<L>`` are optional)."""
        return name in self.f[IMAGES]

    def image_column(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """/images/``name``, every row or the rows ``rows`` (any order, repeats; only the chunks that
        hold them are read); strings as ``str`` in an object array."""
        ds = self.f[column(name)]
        try:
            v = ds[()] if rows is None else read_rows(ds, rows)
        except Damaged as e:
            raise StoreError(f"{self.path} is damaged: {e}") from None
        return np.array([as_str(x) for x in v], object) if v.dtype == object else v

    def labels(self, rows: np.ndarray | None = None) -> list[str] | None:
        """The source's own label of every row (or of ``rows``), "" where unknown; None when the store
        has no /images/label (only array and Dataset sources with labels have one)."""
        return list(self.image_column("label", rows)) if self.has_column("label") else None

    def pooled_dataset(self, layer: str):
        """The h5py dataset /images/pooled_<layer> (N, 2, C) float16, to read in chunks; a ValueError naming
        the layers that have pooled vectors when this one has none."""
        name = pooled_column(layer)
        if not self.has_column(name):
            have = self.attrs.get("pooled") or []
            raise ValueError(f"{self.path} has no pooled vectors of {layer!r} (it has: {', '.join(have) or 'none'}); "
                             f"mine with `mine run ... --pooled {layer}`")
        return self.f[column(name)]

    def pooled(self, layer: str) -> np.ndarray:
        """(N, 2, C) float16 per /images row: spatial mean [0] and max [1] of ``layer``, NaN where the
        file was skipped (``mine run --pooled``); ``StoreError`` if a used row is not finite."""
        v = self.pooled_dataset(layer)[()]
        used = np.array([plain(s) in ("ok", "duplicate") for s in self.f[column("status")][()]], bool)
        if not np.isfinite(v[used]).all():
            raise StoreError(f"{self.path} is damaged: /images/{pooled_column(layer)} holds NaN or infinity on a "
                             f"used image")
        return v

    def embedding(self, layer: str) -> np.ndarray | None:
        """/embed/<layer> (N, 2) float32: the map coordinates ``mine embed`` wrote per /images row, None if none."""
        return self.f[EMBED][layer][()] if EMBED in self.f and layer in self.f[EMBED] else None

    def pixels(self, kept) -> np.ndarray:
        """uint8 (S, S, 3) RGB network input of a kept image (or a batch for a sorted index list)."""
        return self.f[KEPT_PIXELS][kept]

    def pixels_dataset(self):
        """The h5py dataset /kept/pixels (M, S, S, 3) uint8, for readers that cache its chunks."""
        return self.f[KEPT_PIXELS]

    def geometry(self, layer: str) -> Geometry:
        return Geometry.from_attrs(self.layer_info(layer))

    def crop(self, entry: Entry) -> np.ndarray:
        """The entry's receptive field from its image as a T x T tile (uint8, RGB).

        T = min(R, input size); padding (black) goes where the box leaves the image, on
        whichever side (see ``models.geometry``).
        """
        geo = self.geometry(entry.layer)
        top, left = geo.tile_origin(entry.y, entry.x, self.size)
        return pad_crop(self.pixels(entry.kept), int(top), int(left), geo.tile_size(self.size))

    def switches(self, pool: str, kept) -> np.ndarray:
        return self.f[SWITCHES][pool][kept]

    def switches_dataset(self, pool: str):
        """The h5py dataset /switches/<pool> (M, C, Ho, Wo) uint8, None when the store has none for ``pool``."""
        return self.f[SWITCHES][pool] if pool in self.f[SWITCHES] else None

    def pools(self) -> list[str]:
        return list(self.f[SWITCHES])
