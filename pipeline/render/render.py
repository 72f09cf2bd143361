"""`mine render` as Python: projections, crops, montages, arrays and the index page of a store.

Only the store and the weights are needed: the kept images' network-input pixels and the
max-pool switches are in the store, so there is no forward pass and no access to the source
images. The weights are checked against the store's ``weights_hash`` first.

Files written into ``out`` (``{layer}`` made file-safe, ``{c}`` the channel)::

    {layer}_feat_{c}.png   3 x 3 projections of the channel's top-9 (best first)
    {layer}_im_{c}.png     the matching receptive-field patches, same geometry (T x T tiles,
                           T = min(R, input size))
    {layer}_{c}.png        the two side by side
    {layer}_feat_{c}.npy   with save_arrays: float32 (k, 3, T, T) projections, RGB, zeros for
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

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..deconv import METHODS
from ..devices import resolve_device
from ..models.layers import select_layers
from ..store.read import Store, strongest_channels
from .index_html import FeatureLinks, LayerLinks, write_index
from .manifest import load_manifest, save_manifest, store_key
from .montage import enlarge, grid, grid_shape, overview, save_png, side_by_side, tile_scale
from .names import default_out_dir, feature_files, layer_files, parse_features
from .normalise import display
from .project import Renderer, load_store_network

__all__ = ["RenderResult", "render_store"]

METHOD_TITLES = {"deconvnet": "deconvnet (Zeiler & Fergus)", "guided": "guided backpropagation",
                 "gradient": "gradient (saliency)"}


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
    method: str = "deconvnet",
) -> RenderResult:
    """Render a store: every channel of every layer by default, or the selected ones.

    ``layers``: names/globs (``"conv4_3"``, ``"conv5_*"``, a list); ``features``: channel list or
    ``"0-63,171"``. With features and no layers, each feature is rendered in every layer that has
    it. Layer-level images (top-9 across feature maps, and an overview grid of the
    ``overview_features`` strongest feature maps, which are rendered too) are made when no
    features are selected (overview of 16 by default) or when ``overview_features`` is given:
    a quick look at a big store is ``features="0-3", overview_features=16``.
    Re-running skips feature maps whose files are up to date unless ``force``. ``method``:
    deconvnet (default), guided or gradient (see ``deconv.rules``).
    """
    t0 = time.perf_counter()
    feats = parse_features(features)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of: {', '.join(METHODS)}")
    if overview_features is not None and overview_features < 0:
        raise ValueError("overview needs a feature count >= 0")
    layer_level = feats is None or bool(overview_features)
    n_overview = 16 if overview_features is None else overview_features
    with Store(store_path) as store:
        plan = _plan(store, layers, feats)
        if feats is not None and layer_level:  # the overview shows the strongest maps: render them
            plan = {n: sorted(set(cs) | set(strongest_channels(store.arrays(n), n_overview))) for n, cs in plan.items()}
        dev = resolve_device(device)
        net = load_store_network(store, weights)
        rnd = Renderer(store, net, dev, batch_size, method=method)
        out_dir = Path(out) if out is not None else default_out_dir(store.path)
        out_dir.mkdir(parents=True, exist_ok=True)
        options = {"shared_scale": bool(shared_scale), "overview": int(n_overview), "method": method}
        key = store_key(store)
        man = load_manifest(out_dir, key, options)
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
                    rnd.tile(layer)
                    per_chunk = max(1, rnd.batch_for(layer) // max(k, 1))
                    for s in range(0, len(todo[layer]), per_chunk):
                        chunk = todo[layer][s:s + per_chunk]
                        res.projections += _render_features(rnd, layer, chunk, arrays, out_dir, shared_scale,
                                                            save_arrays, k)
                        done = set(man["features"].get(layer, [])) | set(chunk)
                        man["features"][layer] = sorted(done)
                        save_manifest(out_dir, man)
                        res.rendered += len(chunk)
                        bar.update(len(chunk))
                if layer in todo_layers:
                    res.projections += _render_layer(rnd, layer, arrays, out_dir, shared_scale, k, n_overview)
                    man["layers"] = sorted(set(man["layers"]) | {layer})
                    save_manifest(out_dir, man)
                    bar.update(1)
        save_manifest(out_dir, man)
        _index(store, man, out_dir, method)
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
    r = rnd.tile(layer)
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


def _index(store: Store, man: dict, out: Path, method: str) -> Path:
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
           f"input {store.size} px · projections: {METHOD_TITLES[method]}, zero = mid-grey")
    return write_index(out, pages, title=f"mine · {store.path.stem}", subtitle=sub)
