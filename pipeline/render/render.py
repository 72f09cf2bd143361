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

The steps, as :func:`render_store` runs them: choose the units (``_plan``), lock the folder, decide
what is up to date (``_Render.decide``: the manifest's options per map, the files on disk), write the
kept images, then layer by layer: the units' maps and masks (``forward``: one forward pass per kept
image), the units' projections a batch of several units at a time, their files handed to writer
threads (``writer``) while the next batch is projected, the layer-level images, and last the viewer.
Under torchrun the units are split over the ranks (``ranks``); the folder is the same.

Typical use::

    from pipeline.render import RenderConfig, render_store
    result = render_store("mine-vgg16-conv4_3-photos.h5", layers="conv4_3", features=[171])
    result = render_store("store.h5", RenderConfig(method="deconvnet", crop="rf"))
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
from ..pictures.montage import (
    display_side,
    fit_height,
    grid,
    grid_shape,
    label_rows,
    layer_tile,
    overview,
    save_png,
    side_by_side,
    to_display,
)
from ..pictures.names import default_out_dir, feature_files, kept_image_file, layer_files, parse_features
from ..signals import InterruptGuard
from ..store.read import Store, border_units, overview_channels
from . import index_html as site
from .crop import CROPS, image_boxes, unit_crop
from .forward import Forwards
from .heatmap import DEFAULT_QUANTILE, LEVEL_SOURCES, composite, overlays, topk_level, unit_hist, unit_level, unit_rates
from .manifest import current, feature_record, forget, load_manifest, render_lock, save_manifest, store_key
from .normalise import CONTRASTS, display, scales
from .ranks import One
from .renderer import Renderer, load_store_network
from .writer import Writer, write_jpeg, write_npy, write_png

__all__ = ["RenderConfig", "RenderResult", "SHOWS", "render_store"]

METHOD_TITLES = {"deconvnet": "deconvnet (Zeiler & Fergus)", "guided": "guided backpropagation",
                 "gradient": "gradient (saliency)", "epsilon_plus_flat": "LRP epsilon-plus-flat relevance",
                 "excitation_backprop": "excitation backprop, LRP z+ relevance"}
SHOWS = ("patch", "heatmap", "both")
SAVE_EVERY = 5.0  # seconds between manifest saves while a layer renders (each writes the whole manifest)


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
        for name, val, allowed in (("method", self.method, ("auto", *METHODS)), ("contrast", self.contrast, CONTRASTS),
                                   ("show", self.show, SHOWS), ("crop", self.crop, CROPS)):
            if val not in allowed:
                raise ValueError(f"unknown {name} {val!r}; use one of: {', '.join(allowed)}")
        if not 0 < self.quantile < 1:
            raise ValueError(f"--quantile must be in (0, 1), got {self.quantile}")
        if self.overview < 0:
            raise ValueError("overview needs a feature count >= 0")


@dataclass
class RenderConfig:
    """What a render is asked for (``render_store``'s options; the CLI's `mine render` options).

    ``layers``: names/globs (``"conv4_3"``, ``"conv5_*"``, a list); ``features``: channel list or
    ``"0-63,171"``; with features and no layers, each feature is rendered in every layer that has it.
    ``overview_features``: layer-level images (top-9 across feature maps and an overview grid of the N
    strongest maps, which are rendered too) are made when no features are selected (N = 16) or when N
    is given. ``method``: guided (default), deconvnet or gradient (``deconv.rules``); ``shifts``: shift
    averaging (``deconv.graph``; None: ``project.auto_shifts``); ``crop``: effective or rf (``crop``);
    ``contrast``: robust, max or shared (``normalise``); ``show``: patch, heatmap or both beside the
    projections, the heatmap level at the unit's ``quantile`` (``heatmap``); ``shared_scale=True`` is the
    deprecated spelling of ``contrast="shared"``; ``visualize=N``: also optimise, with N steps, an
    image that maximises each rendered unit (``mine visualize``); ``batch_size``: projections per batch
    (the files do not depend on it); ``force``: re-render what is up to date.
    """

    out: str | Path | None = None
    layers: str | list[str] | None = None
    features: object = None
    weights: str | None = None
    contrast: str = "robust"
    save_arrays: bool = False
    device: str = "auto"
    batch_size: int | None = None
    overview_features: int | None = None
    progress: bool = True
    force: bool = False
    method: str = DEFAULT_METHOD
    show: str = "patch"
    quantile: float = DEFAULT_QUANTILE
    shared_scale: bool | None = None
    visualize: int = 0
    crop: str = "effective"
    shifts: int | None = None

    @property
    def n_overview(self) -> int:
        return 16 if self.overview_features is None else int(self.overview_features)

    def options(self) -> Options:
        contrast = "shared" if self.shared_scale else self.contrast
        opts = Options(self.method, contrast, self.show, float(self.quantile), self.n_overview, self.crop)
        opts.check()
        return opts


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
    rendered: int = 0  # feature maps rendered now (by every rank)
    skipped: int = 0  # feature maps already up to date
    layers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    projections: int = 0
    ranks: int = 1

    def summary(self) -> str:
        r = self.projections / self.seconds if self.seconds else 0.0
        rate = f", {r:.0f} projections/s" if r >= 100 else f", {r:.3g} projections/s" if r else ""
        by = f" by {self.ranks} processes" if self.ranks > 1 else ""
        maps, layers = self.rendered, len(self.layers)
        return (f"rendered {maps} feature map{'s' * (maps != 1)} ({self.skipped} up to date) of {layers} "
                f"layer{'s' * (layers != 1)} in {self.seconds:.1f} s{rate}{by} -> {self.index}")


def _plan(store: Store, layers, features) -> dict[str, list[int]]:
    """Layer -> channels to render; errors name what exists."""
    chosen = store.select(layers) if layers else list(store.layers)
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


def render_store(store_path: str | Path, config: RenderConfig | None = None, ranks: One | None = None,
                 **options) -> RenderResult:
    """Render a store: every channel of every layer by default, or the selected ones (``RenderConfig``;
    keyword arguments override its fields: ``render_store(path, layers="conv4_3", features=[171])``).

    Re-running skips feature maps whose files are up to date (made with these options, as the
    manifest records per map) unless ``force``. The folder is locked while rendering
    (``LockedError`` if another live render holds it; released on errors and SIGTERM, which
    raises ``Interrupted``). Under torchrun every rank renders its share of the units (``ranks``)
    and the folder is the one a single process writes; the result counts every rank's maps.
    ``ranks``: this process's place in a torchrun job (``render.ranks.Ranks``, from the CLI), default
    the one process.
    """
    t0 = time.perf_counter()
    cfg = replace(config or RenderConfig(), **options)
    if cfg.shared_scale:
        warnings.warn("shared_scale is deprecated; use contrast='shared'", DeprecationWarning, stacklevel=2)
    feats = parse_features(cfg.features)
    cfg.options()  # checks the options before the store is opened
    rk = ranks or One(cfg.device)
    with InterruptGuard(graceful=False), Store(store_path) as store:
        rk.same_arguments({**asdict(cfg), "progress": None, "store": str(store_path)})
        layer_level = feats is None or bool(cfg.overview_features)
        plan = _plan(store, cfg.layers, feats)
        if feats is not None and layer_level:  # the overview shows the strongest maps: render them
            plan = {n: sorted(set(cs) | set(_overview_units(store, n, store.arrays(n), cfg.n_overview)))
                    for n, cs in plan.items()}
        out_dir = Path(cfg.out) if cfg.out is not None else default_out_dir(store.path)
        with _folder_lock(out_dir, rk):  # one render per folder; released on exit, error and SIGTERM
            job = _Render(store, cfg, rk, out_dir, plan, layer_level)
            job.decide()
            job.kept_images()
            with Writer() as writer, tqdm(total=job.total, unit="map", desc="render",
                                          disable=not cfg.progress or job.total == 0 or not rk.root) as bar:
                for layer in plan:
                    job.units(layer, writer, bar)
                    job.visualize(layer)
                    job.layer_images(layer, bar)
            job.site()
    job.res.seconds = time.perf_counter() - t0
    return job.res


class _folder_lock:
    """The folder lock, held by rank 0 for every rank (its refusal is every rank's)."""

    def __init__(self, out: Path, rk: One) -> None:
        self.lock, self.rk = render_lock(out) if rk.root else None, rk

    def __enter__(self):
        err = None
        try:
            if self.lock is not None:
                self.lock.acquire()
        except Exception as e:  # noqa: BLE001 - passed to every rank
            err = e
        self.rk.agree(err)
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()


class _Render:
    """One render into one folder: what is to do, and the steps that do it (see the module doc)."""

    def __init__(self, store: Store, cfg: RenderConfig, rk: One, out: Path, plan: dict[str, list[int]],
                 layer_level: bool) -> None:
        self.store, self.cfg, self.rk, self.out, self.plan, self.layer_level = store, cfg, rk, out, plan, layer_level
        self.net = load_store_network(store, cfg.weights)
        self.rnd = Renderer(store, self.net, rk.device, cfg.batch_size, method=cfg.method, shifts=cfg.shifts)
        self.opts = replace(cfg.options(), shifts=self.rnd.shifts, method=self.rnd.method)  # what "auto" chose is in the files
        self.optd = asdict(self.opts)
        self.man: dict = {}
        self.res = RenderResult(out, out / "index.html", layers=list(plan), ranks=rk.world)
        self.pending: dict = {}  # (layer, c) -> manifest records of a unit whose files are being written
        self.arrays = {n: store.arrays(n) for n in plan}
        self.saved, self.unsaved = time.monotonic(), False

    # --- what is to do -----------------------------------------------------------------------
    def _up_to_date(self, layer: str, c: int) -> bool:
        rec = feature_record(self.man, layer, c)
        if self.cfg.force or not current(rec, self.optd) or (self.cfg.save_arrays and not rec.get("arrays")):
            return False
        fs = feature_files(layer, c)
        need = ["feat", "im", "pair", "overlay"] + (["heat"] if self.opts.show != "patch" else []) + (
            ["array"] if self.cfg.save_arrays else [])
        return all((self.out / fs[n]).exists() for n in need) and str(c) in self.man["units"].get(layer, {})

    def decide(self) -> None:
        """Rank 0 reads the manifest and the folder: the units and layer-level images to (re)do, which
        every rank then follows; what is redone is dropped from the manifest first."""
        todo = todo_layers = None
        if self.rk.root:
            self.man = load_manifest(self.out, store_key(self.store), self.optd)
            todo = {n: [c for c in cs if not self._up_to_date(n, c)] for n, cs in self.plan.items()}
            todo_layers = [n for n in self.plan if self.layer_level and (self.cfg.force or not (
                current(self.man["layers"].get(n) or {}, self.optd)
                and all((self.out / f).exists() for f in layer_files(n).values())))]
            if any(todo.values()) or todo_layers:  # what is redone is no longer what the manifest says
                for n in self.plan:
                    forget(self.man, n, todo[n], n in todo_layers)
                save_manifest(self.out, self.man)
        self.todo, self.todo_layers = self.rk.from_root((todo, todo_layers))
        self.res.skipped = sum(len(cs) for cs in self.plan.values()) - sum(len(cs) for cs in self.todo.values())
        self.total = sum(len(cs) for cs in self.todo.values()) + len(self.todo_layers)
        self.per_chunk = {n: max(1, self.rnd.batch_for(n) // max(self.store.k, 1)) for n in self.todo if self.todo[n]}
        self.chunks = {n: [cs[s:s + self.per_chunk[n]] for s in range(0, len(cs), self.per_chunk[n])]
                       for n, cs in self.todo.items() if cs}
        mine = {n: [c for i, ch in enumerate(chunks) if self.rk.mine(i) for c in ch] for n, chunks in self.chunks.items()}
        self.forwards = Forwards(self.rnd, mine, self.arrays)
        self.rnd.mask_source = self.forwards.masks

    # --- the steps ---------------------------------------------------------------------------
    def kept_images(self) -> None:
        """Each kept image of the units to render once (``images/{kept}.jpg``, for the unit pages);
        image m is written by rank ``m % world``."""
        rows = set()
        for n, cs in self.todo.items():
            kept = self.arrays[n]["kept"][cs]
            rows.update(int(m) for m in kept[kept >= 0])
        mine = [m for m in sorted(rows) if m % self.rk.world == self.rk.rank
                and not (self.out / kept_image_file(m)).exists()]
        if mine:
            (self.out / kept_image_file(mine[0])).parent.mkdir(parents=True, exist_ok=True)
        for m, px in zip(mine, self.rnd.pixels(mine) if mine else []):
            write_jpeg(px, self.out / kept_image_file(m))
        self.rk.barrier()

    def units(self, layer: str, writer: Writer, bar) -> None:
        """The layer's units to render: this rank's chunks, a round of ``world`` chunks at a time; after
        each round the units whose files are written go into rank 0's manifest."""
        chunks = self.chunks.get(layer, [])
        if not chunks:
            return
        self.rnd.tile(layer)
        levels = unit_level(self.store, layer, self.opts.quantile)
        (self.out / "units").mkdir(parents=True, exist_ok=True)
        maps = self.forwards.maps(layer) if any(self.rk.mine(i) for i in range(len(chunks))) else {}
        records = (self.man.setdefault("units", {}).setdefault(layer, {}),
                   self.man.setdefault("features", {}).setdefault(layer, {})) if self.rk.root else None
        for start in range(0, len(chunks), self.rk.world):
            i = start + self.rk.rank
            done = 0
            if i < len(chunks):
                done = _render_features(self, layer, chunks[i], maps, levels, writer)
            self._record(writer.finished(), done, records, bar)
        self._record(writer.drain(), 0, records, bar, final=True)

    def _record(self, finished: list, projections: int, records, bar, final: bool = False) -> None:
        """Rank 0 records the units whose files every rank has written; the manifest is saved at the end
        of each layer and at most every ``SAVE_EVERY`` seconds in between (a render killed meanwhile
        redoes those units)."""
        mine = {key: self.pending.pop(key) for key in finished}
        gathered = self.rk.gather((mine, projections))
        if gathered is None:
            return
        units, features = records
        n = 0
        for recs, projected in gathered:
            self.res.projections += projected
            for (_, c), (unit, feature) in recs.items():
                units[str(c)], features[str(c)] = unit, feature
                n += 1
        if n:
            self.res.rendered += n
            bar.update(n)
            self.unsaved = True
        if self.unsaved and (final or time.monotonic() - self.saved > SAVE_EVERY):
            save_manifest(self.out, self.man)  # the whole manifest each time: not after every chunk
            self.saved, self.unsaved = time.monotonic(), False

    def visualize(self, layer: str) -> None:
        """``--visualize``: the rendered units' feature visualisations that do not exist yet, 16 units per
        batch (batch j by rank ``j % world``: the batches one process would run)."""
        if not self.cfg.visualize:
            return
        from ..visualize import VisualizeConfig, visualize_units
        from ..visualize.files import write_unit_images

        missing = None
        if self.rk.root:
            missing = [c for c in self.plan[layer] if not (self.out / feature_files(layer, c)["vis"]).exists()]
        missing = self.rk.from_root(missing)
        prep = self.net.prep(self.store.size)
        for j, s in enumerate(range(0, len(missing), 16)):
            if self.rk.mine(j):
                chunk = missing[s:s + 16]
                units = visualize_units(self.net, layer, chunk, prep, VisualizeConfig(steps=self.cfg.visualize))
                write_unit_images(self.out, layer, chunk, units.numpy(), save_arrays=False)
        self.rk.barrier()

    def layer_images(self, layer: str, bar) -> None:
        """The layer's top-k across feature maps and overview (rank 0, once every rank's files are written)."""
        if layer not in self.todo_layers or not self.rk.root:
            return
        self.res.projections += _render_layer(self, layer)
        self.man["layers"][layer] = {"options": self.optd}
        save_manifest(self.out, self.man)
        bar.update(1)

    def site(self) -> None:
        """The viewer (rank 0)."""
        if self.rk.root:
            save_manifest(self.out, self.man)
            _site(self.store, self.man, self.out, self.opts)


@dataclass
class _Unit:
    """One unit of a chunk on its way to its files: its entries in the chunk's arrays (``sel``, their
    ranks), its heatmap level, its tiles and patches (k slots, cut by the crop) and boxes."""

    c: int
    sel: np.ndarray
    ranks: np.ndarray
    filled: np.ndarray
    level: float
    source: str
    tiles: np.ndarray | None = None
    crops: np.ndarray | None = None
    side: int = 0
    boxes: np.ndarray | None = None


def _render_features(job: _Render, layer: str, chunk: list[int], unit_maps: dict, levels: np.ndarray | None,
                     writer: Writer) -> int:
    """Project every filled slot of the channels in ``chunk`` in one batch; hand their files to ``writer``.

    The heatmap overlays of the whole chunk are drawn at once (one upsampling call: many small ones
    cost more than the projections at conv1-conv3). ``job.pending[(layer, c)]`` gets each unit's
    manifest records (see :func:`_submit_unit`). Returns the projections made.
    """
    rnd, arrays, size = job.rnd, job.arrays[layer], job.rnd.size
    kept = arrays["kept"][chunk]  # (n, k)
    c_idx, r_idx = np.nonzero(kept >= 0)
    chans = np.asarray(chunk)[c_idx]
    rows = kept[c_idx, r_idx]
    tiles, crops = rnd.project(layer, chans, rows, arrays["y"][chans, r_idx], arrays["x"][chans, r_idx],
                               arrays["value"][chans, r_idx])
    maps = np.concatenate([unit_maps[c] for c in chunk])  # the order of (c_idx, r_idx)
    units = []
    for j, c in enumerate(chunk):
        sel = np.nonzero(c_idx == j)[0]
        level = float(levels[c]) if levels is not None else topk_level(maps[sel], job.opts.quantile)
        u = _Unit(c, sel, r_idx[sel], kept[j] >= 0, level, "histogram" if levels is not None else "top-k")
        _cut_unit(job, layer, u, tiles, crops)
        units.append(u)
    ov = np.zeros((0, size, size, 4), np.uint8)
    if len(maps):  # entry i is unit c_idx[i]'s slot r_idx[i]
        ov = overlays(maps, np.array([u.level for u in units])[c_idx], size,
                      np.stack([u.boxes for u in units])[c_idx, r_idx])
    heat = composite(rnd.pixels(rows), ov) if job.opts.show != "patch" else None  # the heatmap montage only
    for u in units:
        _submit_unit(job, layer, u, (maps[u.sel], ov[u.sel], None if heat is None else heat[u.sel]), writer)
    return len(chans)


def _cut_unit(job: _Render, layer: str, u: _Unit, tiles: np.ndarray, crops: np.ndarray) -> None:
    """The unit's k slots of tiles and patches, cut as ``--crop`` says, and their boxes in the image."""
    k, r, size = len(u.filled), crops.shape[1], job.rnd.size
    t = np.zeros((k, 3, r, r), np.float32)
    cr = np.zeros((k, r, r, 3), np.uint8)
    t[u.ranks], cr[u.ranks] = tiles[u.sel], crops[u.sel]
    u.tiles, u.crops, u.side, corners = unit_crop(t, cr, u.filled, job.opts.crop, size)
    a = job.arrays[layer]
    oy, ox = job.rnd.net.layers[layer].geometry.tile_origin(a["y"][u.c], a["x"][u.c], size)
    u.boxes = image_boxes(oy + corners[:, 0], ox + corners[:, 1], u.side, size, u.filled)


def _submit_unit(job: _Render, layer: str, u: _Unit, drawn: tuple, writer: Writer) -> None:
    """Hand the unit's files to ``writer``; ``job.pending[(layer, c)]`` gets its manifest records (its
    heatmap level and histogram for its page, the options that made its files), recorded once the
    writer has its files on disk. Files of the unit that these options do not make (a heatmap montage
    with show=patch, arrays without ``save_arrays``) are removed: they were made with other options.
    ``drawn``: the maps, overlays and heatmaps of its entries."""
    maps, ov, heat_entries = drawn
    opts, out, size, k = job.opts, job.out, job.rnd.size, len(u.filled)
    strip = np.zeros((size, k * size, 4), np.uint8)  # the unit page's overlays, rank by rank
    for o, rank in zip(ov, u.ranks):
        strip[:, rank * size:(rank + 1) * size] = o
    proj = _montage(display(u.tiles, opts.contrast), u.filled, k)
    im = _montage(u.crops, u.filled, k)
    hm = None
    if heat_entries is not None:
        heat = np.zeros((k, size, size, 3), np.uint8)
        heat[u.ranks] = heat_entries
        hm = _montage(heat, u.filled, k)
    fs = feature_files(layer, u.c)
    key = (layer, u.c)
    for img, name in ((proj, "feat"), (im, "im"), (strip, "overlay"), (hm, "heat"),
                      (_pair(proj, im if opts.show != "heatmap" else None, hm), "pair")):
        if img is not None:
            writer.submit(key, write_png, img, out / fs[name])
        else:
            (out / fs[name]).unlink(missing_ok=True)
    for a, name in ((u.tiles, "array"), (u.boxes, "box_array")):
        if job.cfg.save_arrays:
            writer.submit(key, write_npy, a, out / fs[name])
        else:
            (out / fs[name]).unlink(missing_ok=True)
    hist = unit_hist(job.store, layer, u.c)
    if hist is None and len(u.sel):
        counts, edges = np.histogram(maps, bins=24)
        hist = {"edges": edges.tolist(), "counts": counts.tolist(), "over": "top-k"}
    job.pending[key] = ({"level": u.level if np.isfinite(u.level) else None, "source": u.source, "hist": hist,
                         "crop": {"kind": opts.crop, "side": int(u.side), "boxes": u.boxes.tolist()}},
                        {"options": asdict(opts), "arrays": bool(job.cfg.save_arrays)})


def _overview_units(store: Store, layer: str, arrays: dict, n: int) -> list[int]:
    """The feature maps a layer's overview shows: live, not the same images again, border units last
    (``store.read.overview_channels``)."""
    return overview_channels(arrays, n, int(store.layer_info(layer)["out_size"]))


def _render_layer(job: _Render, layer: str) -> int:
    """Top-k across feature maps (the best entry of each of the k units the overview would pick first:
    live, strongest first, not the same images again, border units last) and the overview, each cell
    labelled with its unit (border units say so: their top images are padding responses). With the
    effective crop each entry has its own square, all shown at one display size."""
    rnd, arrays, out, opts, k = job.rnd, job.arrays[layer], job.out, job.opts, job.store.k
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
    for c in _overview_units(rnd.store, layer, arrays, opts.overview):
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
