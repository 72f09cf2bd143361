"""`mine render` as Python: projections, crops, montages, arrays and the index page of a store.

Only the store and the weights are needed: the kept images' network-input pixels and the
max-pool switches are in the store, so there is no forward pass and no access to the source
images. The weights are checked against the store's ``weights_hash`` first.

Files written into ``out`` (``{layer}`` made file-safe, ``{c}`` the channel)::

    {layer}_feat_{c}.png   3 x 3 projections of the channel's top-9 (best first)
    {layer}_im_{c}.png     the matching receptive-field patches, same geometry (T x T tiles,
                           T = min(R, input size))
    {layer}_heat_{c}.png   with show heatmap/both: each entry's whole image, the region where the
                           unit exceeds its top-quantile level outlined, its box drawn (S x S tiles)
    {layer}_{c}.png        projections beside patches, heatmaps or both (``show``)
    {layer}_unit_{c}.html  the unit's page of the viewer (see ``index_html``)
    units/{layer}_{c}_heat.png  the k heatmap overlays (RGBA, S x S each, side by side) and
    images/{kept}.jpg      each kept image once: the unit pages lay the first over the second
    {layer}_feat_{c}.npy   with save_arrays: float32 (k, 3, T, T) projections, RGB, zeros for
                           empty slots, in the activation's value scale (no display scaling)
    {layer}_feat.png       per layer (whole-layer renders): the best entry of each of the 9
    {layer}_im.png           strongest channels, projections / patches
    {layer}_overview.png   Zeiler & Fergus Fig. 2 style grid of the strongest feature maps
    {layer}.html           the layer's page of the viewer: every unit, sortable, dead units marked
    index.html             the viewer's start page (self-contained, works from file://)
    .mine-render.json      manifest: which store produced the folder and which options each feature
                           map's / layer's files (re-runs skip what these options already made;
                           see ``manifest``)
    .mine-render.lock      while a render runs: its pid, host, start, command (one render per folder)

Typical use::

    from pipeline.render import render_store
    result = render_store("mine-vgg16-conv4_3-photos.h5", layers="conv4_3", features=[171])
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..deconv import DEFAULT_METHOD, METHODS
from ..devices import resolve_device
from ..durable import save_array
from ..models.layers import select_layers
from ..pictures.montage import (
    display_side,
    fit_height,
    grid,
    grid_shape,
    label_rows,
    layer_tile,
    overview,
    save_jpeg,
    save_png,
    side_by_side,
    to_display,
)
from ..pictures.names import default_out_dir, feature_files, kept_image_file, layer_files, parse_features
from ..signals import InterruptGuard
from ..store.read import Store, border_units, overview_channels
from . import index_html as site
from .crop import CROPS, image_boxes, unit_crop
from .heatmap import DEFAULT_QUANTILE, LEVEL_SOURCES, composite, overlay, topk_level, unit_hist, unit_level, unit_rates
from .manifest import current, feature_record, forget, load_manifest, render_lock, save_manifest, store_key
from .normalise import CONTRASTS, display, scales
from .project import Renderer, load_store_network

__all__ = ["RenderResult", "SHOWS", "render_store"]

METHOD_TITLES = {"deconvnet": "deconvnet (Zeiler & Fergus)", "guided": "guided backpropagation",
                 "gradient": "gradient (saliency)"}
SHOWS = ("patch", "heatmap", "both")


@dataclass(frozen=True)
class Options:
    """What decides the pixels of a render (recorded per feature map and per layer in the manifest:
    a map made with other options is re-rendered)."""

    method: str = DEFAULT_METHOD
    contrast: str = "robust"
    show: str = "patch"
    quantile: float = DEFAULT_QUANTILE
    overview: int = 16
    crop: str = "effective"
    shifts: int | None = None  # shift averaging (``deconv.graph``); None until the model resolves "auto"

    def check(self) -> None:
        for name, val, allowed in (("method", self.method, METHODS), ("contrast", self.contrast, CONTRASTS),
                                   ("show", self.show, SHOWS), ("crop", self.crop, CROPS)):
            if val not in allowed:
                raise ValueError(f"unknown {name} {val!r}; use one of: {', '.join(allowed)}")
        if not 0 < self.quantile < 1:
            raise ValueError(f"--quantile must be in (0, 1), got {self.quantile}")
        if self.overview < 0:
            raise ValueError("overview needs a feature count >= 0")


# --- montages -----------------------------------------------------------------------------
def _montage(tiles: np.ndarray, filled: np.ndarray, k: int, min_tile: int | None = None) -> np.ndarray:
    """k uint8 (T, T, 3) tiles in a grid, each shown at ``display_side`` (at least ``min_tile``, default
    MIN_TILE); empty slots stay background."""
    side = display_side(tiles.shape[1], min_tile)
    big = to_display(tiles, side)
    rows, cols = grid_shape(k)
    return grid([big[i] if filled[i] else None for i in range(len(tiles))], rows, cols, tile=side)


def _pair(proj: np.ndarray, im: np.ndarray | None, heat: np.ndarray | None) -> np.ndarray:
    """Projections beside patches and/or heatmaps (heatmaps scaled to the projections' height)."""
    out = proj
    for right in (im, heat):
        if right is not None:
            out = side_by_side(out, fit_height(right, proj.shape[0]) if right is heat else right)
    return out
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
    contrast: str = "robust",
    save_arrays: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    overview_features: int | None = None,
    progress: bool = True,
    force: bool = False,
    method: str = DEFAULT_METHOD,
    show: str = "patch",
    quantile: float = DEFAULT_QUANTILE,
    shared_scale: bool | None = None,
    visualize: int = 0,
    crop: str = "effective",
    shifts: int | None = None,
) -> RenderResult:
    """Render a store: every channel of every layer by default, or the selected ones.

    ``layers``: names/globs (``"conv4_3"``, ``"conv5_*"``, a list); ``features``: channel list or
    ``"0-63,171"``. With features and no layers, each feature is rendered in every layer that has
    it. Layer-level images (top-9 across feature maps, and an overview grid of the
    ``overview_features`` strongest feature maps, which are rendered too) are made when no
    features are selected (overview of 16 by default) or when ``overview_features`` is given:
    a quick look at a big store is ``features="0-3", overview_features=16``.
    Re-running skips feature maps whose files are up to date (made with these options, as the
    manifest records per map) unless ``force``. The folder is locked while rendering
    (``LockedError`` if another live render holds it; released on errors and SIGTERM, which
    raises ``Interrupted``). The files do not depend on ``batch_size`` (see ``project``). ``method``:
    guided (default), deconvnet or gradient (see ``deconv.rules``); ``shifts``: shift averaging (see
    ``deconv.graph``; None: ``project.auto_shifts``); ``crop``: effective (default) or rf (see
    ``crop``); ``contrast``: robust
    (default), max or shared (see ``normalise``); ``show``: what goes beside the projections,
    patch (default), heatmap or both, with the heatmap level at the unit's ``quantile`` (see
    ``heatmap``). ``shared_scale=True`` is the deprecated spelling of ``contrast="shared"``.
    ``visualize=N``: also optimise, with N steps, an image that maximises each rendered unit
    (``mine visualize``; kept when it exists) and show it on the unit's page.
    """
    t0 = time.perf_counter()
    feats = parse_features(features)
    if shared_scale:
        warnings.warn("shared_scale is deprecated; use contrast='shared'", DeprecationWarning, stacklevel=2)
        contrast = "shared"
    n_overview = 16 if overview_features is None else overview_features
    opts = Options(method, contrast, show, float(quantile), int(n_overview), crop)
    opts.check()
    layer_level = feats is None or bool(overview_features)
    with InterruptGuard(graceful=False), Store(store_path) as store:
        plan = _plan(store, layers, feats)
        if feats is not None and layer_level:  # the overview shows the strongest maps: render them
            plan = {n: sorted(set(cs) | set(_overview_units(store, n, store.arrays(n), n_overview))) for n, cs in plan.items()}
        out_dir = Path(out) if out is not None else default_out_dir(store.path)
        with render_lock(out_dir):  # one render per folder; released on exit, error and SIGTERM
            dev = resolve_device(device)
            net = load_store_network(store, weights)
            rnd = Renderer(store, net, dev, batch_size, method=method, shifts=shifts)
            opts = replace(opts, shifts=rnd.shifts)  # what "auto" chose for this model is what the files show
            key = store_key(store)
            optd = asdict(opts)
            man = load_manifest(out_dir, key, optd)
            res = RenderResult(out_dir, out_dir / "index.html", layers=list(plan))

            def up_to_date(layer: str, c: int) -> bool:
                rec = feature_record(man, layer, c)
                if force or not current(rec, optd) or (save_arrays and not rec.get("arrays")):
                    return False
                fs = feature_files(layer, c)
                need = ["feat", "im", "pair", "overlay"] + (["heat"] if opts.show != "patch" else []) + (
                    ["array"] if save_arrays else [])
                return all((out_dir / fs[n]).exists() for n in need) and str(c) in man["units"].get(layer, {})

            todo = {n: [c for c in cs if not up_to_date(n, c)] for n, cs in plan.items()}
            todo_layers = [n for n in plan if layer_level and (force or not (
                current(man["layers"].get(n) or {}, optd)
                and all((out_dir / f).exists() for f in layer_files(n).values())))]
            if any(todo.values()) or todo_layers:  # what is redone is no longer what the manifest says
                for n in plan:
                    forget(man, n, todo[n], n in todo_layers)
                save_manifest(out_dir, man)
            res.skipped = sum(len(cs) for cs in plan.values()) - sum(len(cs) for cs in todo.values())
            total = sum(len(cs) for cs in todo.values()) + len(todo_layers)
            k = store.k
            with tqdm(total=total, unit="map", desc="render", disable=not progress or total == 0) as bar:
                for layer, chans in plan.items():
                    arrays = store.arrays(layer)
                    if todo[layer]:
                        rnd.tile(layer)
                        levels = unit_level(store, layer, opts.quantile)
                        maps = _unit_maps(rnd, layer, todo[layer], arrays)
                        per_chunk = max(1, rnd.batch_for(layer) // max(k, 1))
                        for s in range(0, len(todo[layer]), per_chunk):
                            chunk = todo[layer][s:s + per_chunk]
                            res.projections += _render_features(
                                rnd, layer, chunk, arrays, out_dir, opts, save_arrays, maps, levels,
                                man["units"].setdefault(layer, {}), man["features"].setdefault(layer, {}))
                            save_manifest(out_dir, man)
                            res.rendered += len(chunk)
                            bar.update(len(chunk))
                    if visualize:
                        _visualize(net, store, layer, plan[layer], out_dir, visualize)
                    if layer in todo_layers:
                        res.projections += _render_layer(rnd, layer, arrays, out_dir, opts, k, n_overview)
                        man["layers"][layer] = {"options": optd}
                        save_manifest(out_dir, man)
                        bar.update(1)
            save_manifest(out_dir, man)
            _site(store, man, out_dir, opts)
    res.seconds = time.perf_counter() - t0
    return res


def _visualize(net, store: Store, layer: str, chans: list[int], out: Path, steps: int) -> None:
    """Feature visualisations of the rendered units that do not have one yet (16 units per batch)."""
    from ..visualize import VisualizeConfig, visualize_units
    from ..visualize.files import write_unit_images

    missing = [c for c in chans if not (out / feature_files(layer, c)["vis"]).exists()]
    prep = net.prep(store.size)
    for s in range(0, len(missing), 16):
        chunk = missing[s:s + 16]
        write_unit_images(out, layer, chunk, visualize_units(net, layer, chunk, prep, VisualizeConfig(steps=steps))
                          .numpy(), save_arrays=False)


def _unit_maps(rnd: Renderer, layer: str, chans: list[int], arrays: dict) -> dict[int, np.ndarray]:
    """Channel -> (filled slots, h, w) maps on its kept images, best first: one forward per kept image."""
    kept = arrays["kept"][chans]
    ci, ri = np.nonzero(kept >= 0)
    ch = np.asarray(chans, np.int64)[ci]
    maps = rnd.maps(layer, kept[ci, ri], ch)
    return {c: maps[ch == c] for c in chans}


def _render_features(rnd: Renderer, layer: str, chunk: list[int], arrays: dict, out: Path, opts: Options,
                     save_arrays: bool, unit_maps: dict, levels: np.ndarray | None, units: dict,
                     records: dict) -> int:
    """Project every filled slot of the channels in ``chunk`` in one batch, write their files.

    ``units`` (the manifest's record of this layer's units) gets each unit's heatmap level and
    histogram for its page, ``records`` (the manifest's features of this layer) the options that
    made its files. Files of the unit that these options do not make (a heatmap montage with
    show=patch, arrays without ``save_arrays``) are removed: they were made with other options.
    """
    k = arrays["value"].shape[1]
    kept = arrays["kept"][chunk]  # (n, k)
    c_idx, r_idx = np.nonzero(kept >= 0)
    chans = np.asarray(chunk)[c_idx]
    rows = kept[c_idx, r_idx]
    tiles, crops = rnd.project(layer, chans, rows, arrays["y"][chans, r_idx], arrays["x"][chans, r_idx],
                               arrays["value"][chans, r_idx])
    maps = np.concatenate([unit_maps[c] for c in chunk])  # the order of (c_idx, r_idx)
    pixels = rnd.pixels(rows)
    size = pixels.shape[1]
    for m in np.unique(rows):  # each kept image once, for the unit pages
        f = out / kept_image_file(m)
        if not f.exists():
            f.parent.mkdir(exist_ok=True)
            save_jpeg(pixels[np.nonzero(rows == m)[0][0]], f)
    (out / "units").mkdir(exist_ok=True)
    r = crops.shape[1]
    geo = rnd.net.layers[layer].geometry
    for j, c in enumerate(chunk):
        sel = np.nonzero(c_idx == j)[0]
        ranks = r_idx[sel]
        level = float(levels[c]) if levels is not None else topk_level(maps[sel], opts.quantile)
        source = "histogram" if levels is not None else "top-k"
        t = np.zeros((k, 3, r, r), np.float32)
        cr = np.zeros((k, r, r, 3), np.uint8)
        heat = np.zeros((k, size, size, 3), np.uint8)
        t[ranks], cr[ranks] = tiles[sel], crops[sel]
        filled = kept[j] >= 0
        t, cr, side, corners = unit_crop(t, cr, filled, opts.crop, size)
        oy, ox = geo.tile_origin(arrays["y"][c], arrays["x"][c], size)
        boxes = image_boxes(oy + corners[:, 0], ox + corners[:, 1], side, size, filled)
        strip = np.zeros((size, k * size, 4), np.uint8)  # the unit page's overlays, rank by rank
        for i, rank in zip(sel, ranks):
            ov = overlay(maps[i], level, size, boxes[rank])
            heat[rank] = composite(pixels[i], ov)
            strip[:, rank * size:(rank + 1) * size] = ov
        proj = _montage(display(t, opts.contrast), filled, k)
        im = _montage(cr, filled, k)
        hm = _montage(heat, filled, k) if opts.show != "patch" else None
        fs = feature_files(layer, c)
        save_png(proj, out / fs["feat"])
        save_png(im, out / fs["im"])
        save_png(strip, out / fs["overlay"])
        if hm is not None:
            save_png(hm, out / fs["heat"])
        else:
            (out / fs["heat"]).unlink(missing_ok=True)
        save_png(_pair(proj, im if opts.show != "heatmap" else None, hm), out / fs["pair"])
        if save_arrays:
            for name, a in (("array", t), ("box_array", boxes)):
                save_array(out / fs[name], a)
        else:
            (out / fs["array"]).unlink(missing_ok=True)
            (out / fs["box_array"]).unlink(missing_ok=True)
        hist = unit_hist(rnd.store, layer, c)
        if hist is None and len(sel):
            counts, edges = np.histogram(maps[sel], bins=24)
            hist = {"edges": edges.tolist(), "counts": counts.tolist(), "over": "top-k"}
        units[str(c)] = {"level": level if np.isfinite(level) else None, "source": source, "hist": hist,
                         "crop": {"kind": opts.crop, "side": int(side), "boxes": boxes.tolist()}}
        records[str(c)] = {"options": asdict(opts), "arrays": bool(save_arrays)}
    return len(chans)


def _overview_units(store: Store, layer: str, arrays: dict, n: int) -> list[int]:
    """The feature maps a layer's overview shows: live, not the same images again, border units last
    (``store.read.overview_channels``)."""
    return overview_channels(arrays, n, int(store.layer_info(layer)["out_size"]))


def _render_layer(rnd: Renderer, layer: str, arrays: dict, out: Path, opts: Options, k: int, n_overview: int) -> int:
    """Top-k across feature maps (the best entry of each of the k units the overview would pick first:
    live, strongest first, not the same images again, border units last) and the overview, each cell
    labelled with its unit (border units say so: their top images are padding responses). With the
    effective crop each entry has its own square, all shown at one display size."""
    top = _overview_units(rnd.store, layer, arrays, k)
    r = rnd.tile(layer)
    t = np.zeros((k, 3, r, r), np.float32)
    cr = np.zeros((k, r, r, 3), np.uint8)
    if top:
        t[:len(top)], cr[:len(top)] = rnd.project(layer, top, arrays["kept"][top, 0], arrays["y"][top, 0],
                                                  arrays["x"][top, 0], arrays["value"][top, 0])
    filled = np.arange(k) < len(top)
    border = border_units(arrays, int(rnd.store.layer_info(layer)["out_size"]))
    name = {c: f"unit {c}" + (" · border" if border[c] else "") for c in range(len(border))}
    cols = grid_shape(k)[1]
    min_tile = layer_tile(cols)
    cells = [unit_crop(t[i:i + 1], cr[i:i + 1], filled[i:i + 1], opts.crop, rnd.size) for i in range(k)]
    shared = None  # contrast "shared": one scale over every cell, as for one array of tiles
    if opts.contrast == "shared":
        shared = float(scales(np.concatenate([p.ravel() for p, _, _, _ in cells])[None], "shared")[0])
    side = display_side(max(c[2] for c in cells), min_tile)  # every cell resized to one side, then tiled
    proj = np.concatenate([to_display(display(p, opts.contrast, scale=shared), side) for p, _, _, _ in cells])
    im = np.concatenate([to_display(c, side) for _, c, _, _ in cells])
    proj, im = (label_rows(_montage(x, filled, k, min_tile), [name[c] for c in top], cols, side) for x in (proj, im))
    fs = layer_files(layer)
    save_png(proj, out / fs["feat"])
    save_png(im, out / fs["im"])
    pairs, labels = [], []
    for c in _overview_units(rnd.store, layer, arrays, n_overview):
        p = out / feature_files(layer, c)["pair"]
        if p.exists():
            with Image.open(p) as img:
                pairs.append(np.asarray(img.convert("RGB")))
            labels.append(name[c])
    save_png(overview(pairs, cols=4, labels=labels), out / fs["overview"])
    return len(top)


def _method_title(opts: Options) -> str:
    shifts = opts.shifts or 1
    return METHOD_TITLES[opts.method] + (f", mean over {shifts} x {shifts} one-pixel shifts" if shifts > 1 else "")


def _site(store: Store, man: dict, out: Path, opts: Options) -> Path:
    """The viewer: index, a page per layer, a page per rendered unit (see ``index_html``)."""
    layers = []
    for layer in store.layers:
        optd = asdict(opts)  # only what these options made (a unit rendered with others is not shown)
        done = {int(c) for c, rec in man["features"].get(layer, {}).items() if current(rec, optd)}
        has_layer = current(man["layers"].get(layer) or {}, optd)
        if not done and not has_layer:
            continue
        arrays = store.arrays(layer)
        info = store.layer_info(layer)
        lf = layer_files(layer)
        rates = unit_rates(store, layer)
        view = site.LayerView(layer, lf["page"], int(info["channels"]), int(info["rf"]))
        tile = min(int(info["rf"]), store.size)
        if has_layer:
            view.feat, view.im, view.overview = lf["feat"], lf["im"], lf["overview"]
        recorded = man.get("units", {}).get(layer, {})
        border = border_units(arrays, int(info["out_size"]))
        for c in range(int(info["channels"])):
            v = float(arrays["value"][c, 0])
            unit = site.UnitView(c, v if np.isfinite(v) else None, None if rates is None else float(rates[c]))
            unit.border = (int(arrays["y"][c, 0]), int(arrays["x"][c, 0])) if border[c] else None
            if c in done:
                fs = feature_files(layer, c)
                rec = recorded.get(str(c), {})
                unit.page, unit.pair = fs["page"], fs["pair"]
                unit.array = fs["array"] if (out / fs["array"]).exists() else None
                unit.occlusion = fs["occlusion"] if (out / fs["occlusion"]).exists() else None  # `mine occlude STORE`
                unit.visual = fs["vis"] if (out / fs["vis"]).exists() else None  # --visualize
                unit.level, unit.hist = rec.get("level"), rec.get("hist")
                unit.level_note = LEVEL_SOURCES.get(rec.get("source", ""), "")
                unit.feat, unit.im, unit.overlay = fs["feat"], fs["im"], fs["overlay"]
                crop = rec.get("crop") or {}
                unit.tile = display_side(crop.get("side", tile))
                boxes = crop.get("boxes")  # the crop's boxes; the receptive field's without one
                for e in store.entries(layer, c, arrays):
                    box = boxes[e.rank] if boxes else e.box
                    unit.entries.append(site.EntryView(e.rank, e.value, e.path, tuple(int(b) for b in box),
                                                       kept_image_file(e.kept)))
            view.units.append(unit)
        layers.append(view)
    a = store.attrs
    meta = site.SiteMeta(
        title=f"mine · {store.path.stem}", store=store.path.name, model=str(a["model"]), weights=str(a["weights"]),
        k=store.k, size=store.size, method=_method_title(opts), contrast=opts.contrast, show=opts.show,
        quantile=opts.quantile, images_root=str(a.get("images_root") or ""), crop=opts.crop)
    meta.grid = grid_shape(store.k)
    return site.write_site(out, layers, meta)
