"""`mine render` as Python: projections, crops, montages, arrays and the index page of a store.

Only the store and the weights are needed: the kept images' network-input pixels and the
max-pool switches are in the store, so there is no forward pass and no access to the source
images. The weights are checked against the store's ``weights_hash`` first.

Files written into ``out`` (``{layer}`` made file-safe, ``{c}`` the channel)::

    {layer}_feat_{c}.png   3 x 3 deconvnet projections of the channel's top-9 (best first)
    {layer}_im_{c}.png     the matching receptive-field patches, same geometry
    {layer}_{c}.png        the two side by side
    {layer}_feat_{c}.npy   with save_arrays: float32 (k, 3, R, R) projections, RGB, zeros for
                           empty slots, in the activation's value scale (no display scaling)
    {layer}_feat.png       per layer (whole-layer renders): the best entry of each of the 9
    {layer}_im.png           strongest channels, projections / patches
    {layer}_overview.png   Zeiler & Fergus Fig. 2 style grid of the strongest feature maps
    index.html             browse everything rendered into this folder
    .mine-render.json      manifest: which store/options produced which files (re-runs skip
                           what is up to date)

Typical use::

    from pipeline.render import render_store
    result = render_store("mine-vgg16-conv4_3-photos.h5", layers="conv4_3", features=[171])
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data.preprocess import Preprocessing
from ..deconv import Deconvnet
from ..models.errors import WeightsError
from ..models.layers import select_layers
from ..models.network import Network
from ..models.weights import BUNDLED, load_network
from ..store.read import Store, strongest_channels
from ..store.schema import StoreError
from .crop import crop_tiles
from .index_html import FeatureLinks, LayerLinks, write_index
from .montage import enlarge, grid, grid_shape, overview, save_png, side_by_side, tile_scale
from .normalise import display, to_rgb

__all__ = ["RenderResult", "Renderer", "parse_features", "load_store_network", "render_store",
           "default_out_dir", "feature_files", "layer_files", "safe_name"]

RENDER_VERSION = 1
MANIFEST = ".mine-render.json"
CACHE_BYTES = 1 << 30  # switches/pixels of all kept images are held in memory below this
BATCH_BYTES = 1 << 30  # target peak memory of one projection batch
MAX_BATCH = 256


# --- names ---------------------------------------------------------------------------------
def safe_name(layer: str) -> str:
    """A layer name usable in a file name (path separators and NUL replaced)."""
    return re.sub(r"[/\\\x00]", "_", layer) or "_"


def feature_files(layer: str, c: int) -> dict[str, str]:
    n = safe_name(layer)
    return {"feat": f"{n}_feat_{c}.png", "im": f"{n}_im_{c}.png", "pair": f"{n}_{c}.png", "array": f"{n}_feat_{c}.npy"}


def layer_files(layer: str) -> dict[str, str]:
    n = safe_name(layer)
    return {"feat": f"{n}_feat.png", "im": f"{n}_im.png", "overview": f"{n}_overview.png"}


def default_out_dir(store_path: str | Path) -> Path:
    """``<store folder>/<store name>-render``: next to the store."""
    p = Path(store_path)
    return p.with_name(f"{p.stem}-render")


def parse_features(spec) -> list[int]:
    """``"0-63,171"`` -> sorted unique channel indices; ints and lists pass through."""
    if spec is None:
        return None
    if isinstance(spec, int):
        spec = [spec]
    if not isinstance(spec, str):
        out = sorted({int(v) for v in spec})
        if any(v < 0 for v in out):
            raise ValueError("feature indices must be >= 0")
        return out
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ValueError(f"bad feature list {spec!r}: use numbers and ranges like 0-63,171")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad feature range {part!r}: end before start")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError(f"no feature in {spec!r}")
    return sorted(out)


# --- weights -------------------------------------------------------------------------------
def load_store_network(store: Store, weights: str | None = None) -> Network:
    """The network a store was mined with; refuses weights whose hash differs from the store's."""
    a = store.attrs
    name = weights or a["weights"]
    try:
        net = load_network(a["model"], name, store.size)
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


def _device(name: str) -> torch.device:
    from ..run import resolve_device

    return resolve_device(name)


# --- projection of store entries ------------------------------------------------------------
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

    def __init__(self, store: Store, net: Network, device: torch.device | str = "cpu",
                 batch_size: int | None = None, cache_bytes: int = CACHE_BYTES) -> None:
        self.store, self.net = store, net
        self.device = torch.device(device)
        net.to(self.device)
        self.dn = Deconvnet(net.modules, store.size)
        self.prep = Preprocessing.from_dict(store.attrs["preprocessing"])
        self.batch_size = batch_size
        self.cache_bytes = cache_bytes
        self._switches: dict[str, _Rows] = {}
        self._pixels: _Rows | None = None
        self._pool_name = {li.end: n for n, li in net.layers.items() if li.kind == "pool"}

    def geometry(self, layer: str) -> tuple[int, int, int]:
        """(R, S, P) of a layer, checked against what the store recorded."""
        if layer not in self.net.layers:
            raise ValueError(f"layer {layer!r} is not a layer of {self.net.arch}")
        geo = self.dn.geometry(self.net.layers[layer].end)
        info = self.store.layer_info(layer)
        if geo != (int(info["rf"]), int(info["stride"]), int(info["padding"])):
            raise StoreError(f"{self.store.path}: layer {layer} geometry {info} does not match the network's {geo}")
        return geo

    def _switch_rows(self, pool: str, layer: str) -> _Rows:
        if pool not in self._switches:
            if pool not in self.store.f["switches"]:
                raise StoreError(f"{self.store.path} has no max-pool switches for {pool}, which projecting "
                                 f"{layer} needs; it records: {', '.join(self.store.pools()) or 'none'}")
            used = sum(r.budget_used() for r in self._switches.values())
            self._switches[pool] = _Rows(self.store.f["switches"][pool], self.cache_bytes - used, self.device)
        return self._switches[pool]

    def _pixel_rows(self) -> _Rows:
        if self._pixels is None:
            self._pixels = _Rows(self.store.f["kept/pixels"], self.cache_bytes // 2, None)
        return self._pixels

    def batch_for(self, layer: str) -> int:
        if self.batch_size:
            return int(self.batch_size)
        per = self.dn.entry_bytes(self.net.layers[layer].end)
        return int(max(1, min(MAX_BATCH, BATCH_BYTES // max(per, 1))))

    def project(self, layer: str, channel, kept, y, x, value) -> tuple[np.ndarray, np.ndarray]:
        """Projections (N, 3, R, R) float32 RGB and patches (N, R, R, 3) uint8 of N entries.

        Entries are given by channel, kept-image row, position and value (numpy arrays).
        """
        r, s, p = self.geometry(layer)
        end = self.net.layers[layer].end
        channel, kept, y, x = (np.asarray(a, np.int64).reshape(-1) for a in (channel, kept, y, x))
        value = np.asarray(value, np.float32).reshape(-1)
        n = len(channel)
        tiles = np.zeros((n, 3, r, r), np.float32)
        crops = np.zeros((n, r, r, 3), np.uint8)
        if n == 0:
            return tiles, crops
        if (kept < 0).any():
            raise ValueError("empty slots (kept = -1) cannot be projected")
        pools = {i: self._switch_rows(self._pool_name[i], layer) for i in self.dn.pool_indices(end)}
        order = np.argsort(kept, kind="stable")  # entries of one image together
        bs = self.batch_for(layer)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            rows = kept[idx]
            if all(src.cached for src in pools.values()):  # index the resident switches directly
                sw, image = {i: src.all for i, src in pools.items()}, rows
            else:  # this batch's images only, the same row order for every pool
                uniq, image = np.unique(rows, return_inverse=True)
                sw = {i: src.take(uniq) for i, src in pools.items()}
            with torch.inference_mode():
                t = self.dn.project(end, channel[idx], y[idx], x[idx], value[idx], sw, image=image, window=True)
            tiles[idx] = t.float().cpu().numpy()
            pix, pidx = self._pixel_rows().get(rows)
            crops[idx] = crop_tiles(pix, pidx, y[idx] * s - p, x[idx] * s - p, r)
        return to_rgb(tiles, self.prep), crops

    def feature(self, layer: str, c: int, arrays: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All k slots of channel c: projections (k, 3, R, R), patches (k, R, R, 3), filled mask (k,).

        Empty slots are zeros (projection) and black (patch).
        """
        a = arrays or self.store.arrays(layer)
        if not 0 <= c < a["value"].shape[0]:
            raise ValueError(f"feature {c} out of range: {layer} has {a['value'].shape[0]} channels")
        filled = a["kept"][c] >= 0
        r = self.geometry(layer)[0]
        k = a["value"].shape[1]
        tiles = np.zeros((k, 3, r, r), np.float32)
        crops = np.zeros((k, r, r, 3), np.uint8)
        sel = np.nonzero(filled)[0]
        tiles[sel], crops[sel] = self.project(layer, np.full(len(sel), c), a["kept"][c, sel], a["y"][c, sel],
                                              a["x"][c, sel], a["value"][c, sel])
        return tiles, crops, filled


# --- montages -----------------------------------------------------------------------------
def _montages(tiles: np.ndarray, crops: np.ndarray, filled: np.ndarray, k: int, shared: bool):
    """(projection montage, patch montage) as uint8 images; empty slots stay background."""
    r = crops.shape[1]
    f = tile_scale(r)
    rows, cols = grid_shape(k)
    disp = enlarge(display(tiles, shared=shared), f)
    big = enlarge(crops, f)
    pt = [disp[i] if filled[i] else None for i in range(len(tiles))]
    it = [big[i] if filled[i] else None for i in range(len(tiles))]
    return grid(pt, rows, cols, tile=r * f), grid(it, rows, cols, tile=r * f)


# --- manifest -------------------------------------------------------------------------------
def _store_key(store: Store) -> str:
    a = store.attrs
    ident = {k: a.get(k) for k in ("created", "weights_hash", "k", "input_size", "layers", "images_seen", "model")}
    ident["bytes"] = store.path.stat().st_size
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _load_manifest(out: Path, key: str, options: dict) -> dict:
    fresh = {"version": RENDER_VERSION, "store": key, "options": options, "features": {}, "layers": []}
    try:
        m = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return fresh
    if m.get("version") != RENDER_VERSION or m.get("store") != key or m.get("options") != options:
        return fresh
    m.setdefault("features", {})
    m.setdefault("layers", [])
    return m


def _save_manifest(out: Path, m: dict) -> None:
    tmp = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(m, sort_keys=True))
    os.replace(tmp, out / MANIFEST)


# --- the command ----------------------------------------------------------------------------
@dataclass
class RenderResult:
    out: Path
    index: Path
    rendered: int = 0  # feature maps rendered now
    skipped: int = 0  # feature maps already up to date
    layers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    projections: int = 0

    def summary(self) -> str:
        rate = f", {self.projections / self.seconds:.0f} projections/s" if self.seconds and self.projections else ""
        return (f"rendered {self.rendered} feature maps ({self.skipped} up to date) of {len(self.layers)} layer(s) "
                f"in {self.seconds:.1f} s{rate} -> {self.index}")


def _plan(store: Store, layers, features) -> dict[str, list[int]]:
    """Layer -> channels to render; errors name what exists."""
    chosen = select_layers(layers, store.layers) if layers else list(store.layers)
    chans = {n: store.channels(n) for n in chosen}
    if features is None:
        return {n: list(range(chans[n])) for n in chosen}
    if layers:  # explicit layers: every feature must exist in each
        for n in chosen:
            bad = [c for c in features if c >= chans[n]]
            if bad:
                raise ValueError(f"feature {bad[0]} out of range: {n} has {chans[n]} channels (0-{chans[n] - 1})")
        return {n: list(features) for n in chosen}
    plan = {n: [c for c in features if c < chans[n]] for n in chosen}
    missing = [c for c in features if not any(c in v for v in plan.values())]
    if missing:
        raise ValueError(f"feature {missing[0]} is in no layer of the store: "
                         + ", ".join(f"{n} has {chans[n]}" for n in chosen))
    return {n: v for n, v in plan.items() if v}


def render_store(
    store_path: str | Path,
    out: str | Path | None = None,
    layers: str | list[str] | None = None,
    features=None,
    weights: str | None = None,
    shared_scale: bool = False,
    save_arrays: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    overview_features: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> RenderResult:
    """Render a store: every channel of every layer by default, or the selected ones.

    ``layers``: names/globs (``"conv4_3"``, ``"conv5_*"``, a list); ``features``: channel list or
    ``"0-63,171"``. With features and no layers, each feature is rendered in every layer that has
    it. Layer-level images (top-9 across feature maps, and an overview grid of the
    ``overview_features`` strongest feature maps, which are rendered too) are made when no
    features are selected (overview of 16 by default) or when ``overview_features`` is given:
    a quick look at a big store is ``features="0-3", overview_features=16``.
    Re-running skips feature maps whose files are up to date unless ``force``.
    """
    t0 = time.perf_counter()
    feats = parse_features(features)
    if overview_features is not None and overview_features < 0:
        raise ValueError("overview needs a feature count >= 0")
    layer_level = feats is None or bool(overview_features)
    n_overview = 16 if overview_features is None else overview_features
    with Store(store_path) as store:
        plan = _plan(store, layers, feats)
        if feats is not None and layer_level:  # the overview shows the strongest maps: render them
            plan = {n: sorted(set(cs) | set(strongest_channels(store.arrays(n), n_overview))) for n, cs in plan.items()}
        dev = _device(device)
        net = load_store_network(store, weights)
        rnd = Renderer(store, net, dev, batch_size)
        out_dir = Path(out) if out is not None else default_out_dir(store.path)
        out_dir.mkdir(parents=True, exist_ok=True)
        options = {"shared_scale": bool(shared_scale), "overview": int(n_overview)}
        key = _store_key(store)
        man = _load_manifest(out_dir, key, options)
        res = RenderResult(out_dir, out_dir / "index.html", layers=list(plan))

        def up_to_date(layer: str, c: int) -> bool:
            if force or c not in man["features"].get(layer, []):
                return False
            fs = feature_files(layer, c)
            need = ["feat", "im", "pair"] + (["array"] if save_arrays else [])
            return all((out_dir / fs[n]).exists() for n in need)

        todo = {n: [c for c in cs if not up_to_date(n, c)] for n, cs in plan.items()}
        todo_layers = [n for n in plan if layer_level and (force or not (
            n in man["layers"] and all((out_dir / f).exists() for f in layer_files(n).values())))]
        res.skipped = sum(len(cs) for cs in plan.values()) - sum(len(cs) for cs in todo.values())
        total = sum(len(cs) for cs in todo.values()) + len(todo_layers)
        k = store.k
        with tqdm(total=total, unit="map", desc="render", disable=not progress or total == 0) as bar:
            for layer, chans in plan.items():
                arrays = store.arrays(layer)
                if todo[layer]:
                    rnd.geometry(layer)
                    per_chunk = max(1, rnd.batch_for(layer) // max(k, 1))
                    for s in range(0, len(todo[layer]), per_chunk):
                        chunk = todo[layer][s:s + per_chunk]
                        res.projections += _render_features(rnd, layer, chunk, arrays, out_dir, shared_scale,
                                                            save_arrays, k)
                        done = set(man["features"].get(layer, [])) | set(chunk)
                        man["features"][layer] = sorted(done)
                        _save_manifest(out_dir, man)
                        res.rendered += len(chunk)
                        bar.update(len(chunk))
                if layer in todo_layers:
                    res.projections += _render_layer(rnd, layer, arrays, out_dir, shared_scale, k, n_overview)
                    man["layers"] = sorted(set(man["layers"]) | {layer})
                    _save_manifest(out_dir, man)
                    bar.update(1)
        _save_manifest(out_dir, man)
        _index(store, man, out_dir, save_arrays)
    res.seconds = time.perf_counter() - t0
    return res


def _render_features(rnd: Renderer, layer: str, chunk: list[int], arrays: dict, out: Path,
                     shared: bool, save_arrays: bool, k: int) -> int:
    """Project every filled slot of the channels in ``chunk`` in one batch, write their files."""
    kept = arrays["kept"][chunk]  # (n, k)
    c_idx, r_idx = np.nonzero(kept >= 0)
    chans = np.asarray(chunk)[c_idx]
    tiles, crops = rnd.project(layer, chans, kept[c_idx, r_idx], arrays["y"][chans, r_idx],
                               arrays["x"][chans, r_idx], arrays["value"][chans, r_idx])
    r = crops.shape[1]
    for j, c in enumerate(chunk):
        t = np.zeros((k, 3, r, r), np.float32)
        cr = np.zeros((k, r, r, 3), np.uint8)
        sel = c_idx == j
        t[r_idx[sel]], cr[r_idx[sel]] = tiles[sel], crops[sel]
        filled = kept[j] >= 0
        proj, im = _montages(t, cr, filled, k, shared)
        fs = feature_files(layer, c)
        save_png(proj, out / fs["feat"])
        save_png(im, out / fs["im"])
        save_png(side_by_side(proj, im), out / fs["pair"])
        if save_arrays:
            tmp = out / f".{fs['array']}.tmp-{os.getpid()}.npy"
            np.save(tmp, t)
            os.replace(tmp, out / fs["array"])
    return len(chans)


def _render_layer(rnd: Renderer, layer: str, arrays: dict, out: Path, shared: bool, k: int, n_overview: int) -> int:
    """Top-k across feature maps (best entry of each of the k strongest channels) and the overview."""
    top = strongest_channels(arrays, k)
    r = rnd.geometry(layer)[0]
    t = np.zeros((k, 3, r, r), np.float32)
    cr = np.zeros((k, r, r, 3), np.uint8)
    if top:
        t[:len(top)], cr[:len(top)] = rnd.project(layer, top, arrays["kept"][top, 0], arrays["y"][top, 0],
                                                  arrays["x"][top, 0], arrays["value"][top, 0])
    filled = np.arange(k) < len(top)
    proj, im = _montages(t, cr, filled, k, shared)
    fs = layer_files(layer)
    save_png(proj, out / fs["feat"])
    save_png(im, out / fs["im"])
    pairs = []
    for c in strongest_channels(arrays, n_overview):
        p = out / feature_files(layer, c)["pair"]
        if p.exists():
            with Image.open(p) as img:
                pairs.append(np.asarray(img.convert("RGB")))
    save_png(overview(pairs, cols=4), out / fs["overview"])
    return len(top)


def _index(store: Store, man: dict, out: Path, save_arrays: bool) -> Path:
    pages = []
    for layer in store.layers:
        done = man["features"].get(layer, [])
        has_layer = layer in man["layers"]
        if not done and not has_layer:
            continue
        values = store.arrays(layer)["value"][:, 0]
        info = store.layer_info(layer)
        lf = layer_files(layer)
        page = LayerLinks(layer, int(info["channels"]), int(info["rf"]))
        if has_layer:
            page.feat, page.im, page.overview = lf["feat"], lf["im"], lf["overview"]
        for c in done:
            fs = feature_files(layer, c)
            arr = fs["array"] if (out / fs["array"]).exists() else None
            v = float(values[c]) if np.isfinite(values[c]) else None
            page.features.append(FeatureLinks(c, fs["pair"], fs["feat"], fs["im"], arr, v))
        pages.append(page)
    a = store.attrs
    sub = (f"store {store.path.name} · model {a['model']} · weights {a['weights']} · k {store.k} · "
           f"input {store.size} px · projections: deconvnet (Zeiler & Fergus), zero = mid-grey")
    return write_index(out, pages, title=f"mine · {store.path.stem}", subtitle=sub)
