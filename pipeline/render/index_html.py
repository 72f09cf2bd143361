"""The viewer: ``index.html``, a page per layer and a page per rendered unit, all static files.

* ``index.html``: the store and render options, a unit search box, and per layer its top-9
  across feature maps and overview (when rendered) with a link to the layer page;
* ``{layer}.html``: every unit of the layer as a card (its montage pair when rendered), sortable
  by unit number, max activation or firing rate (when the store has unit statistics); dead units
  (never positive: top value <= 0 or no entry) are marked;
* ``{layer}_unit_{c}.html``: the unit's k entries large (projection, receptive-field patch, and
  the heatmap on the whole image with the box), each with its value, rank, box and image path;
  its histogram as a small plot and its heatmap level; previous/next unit links and keys
  (left/right arrow, or p/n).

Every page has the search box (layer + unit number: goes to the unit's page, or says it is not
rendered) and the same small inline script; the rendered units are embedded as JSON in a
``<script type="application/json">`` block. No CDN, no fetch, every link relative: the folder
works from file:// and can be copied anywhere. File names are URL-quoted inside ``href``/``src``
and everything stored (layer names, image paths, store and weights names) is HTML-escaped.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..durable import write_atomically
from ..pictures.montage import GAP

__all__ = ["EntryView", "LayerView", "SiteMeta", "UnitView", "render_pages", "write_site"]

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{position:sticky;top:0;background:#222;color:#eee;padding:.5em 1em;z-index:2;display:flex;
 flex-wrap:wrap;gap:.4em 1em;align-items:center}
header a{color:#9cf;text-decoration:none}
header form{margin-left:auto}
header input{width:5em}
#search-status{color:#fc6;margin-left:.5em}
main{padding:0 1em 2em}
h1{font-size:20px;margin:.8em 0 .2em}
h2{margin:1.2em 0 .3em;border-bottom:1px solid #ccc}
.meta{color:#666;font-size:12px}
.tops img{max-width:100%;max-height:420px;image-rendering:pixelated;margin:.3em .6em .3em 0;border:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{margin:0;background:#fff;border:1px solid #ddd;padding:4px;min-width:90px}
.card img{display:block;height:120px;image-rendering:pixelated}
.card.dead{background:#eee;opacity:.75}
.card .badge{background:#933;color:#fff;border-radius:3px;padding:0 .3em;font-size:11px}
figcaption{font-size:12px;color:#444}
.entry{background:#fff;border:1px solid #ddd;padding:8px;margin:10px 0}
.entry .pics{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin-bottom:6px}
.crop{position:relative;overflow:hidden;width:224px;height:224px;border:1px solid #ccc}
.crop img{position:absolute;max-width:none;image-rendering:pixelated}
.heat{position:relative;width:256px;height:256px}
.heat>img{position:absolute;left:0;top:0;width:256px;height:256px}
.heat .crop{position:absolute;left:0;top:0;width:256px;height:256px;border:0}
.entry dl{margin:0;font-size:13px;display:grid;grid-template-columns:auto 1fr;gap:0 .6em;max-width:28em}
.entry dt{color:#666}
.entry dd{margin:0;word-break:break-all}
.label{font-size:11px;color:#666}
.nav a{margin-right:1em}
svg.hist rect{fill:#58a}
svg.hist line{stroke:#d33;stroke-width:2}
svg.hist line.max{stroke:#222;stroke-width:1.5}
svg.hist text{font-size:10px;fill:#444}
svg.hist text.gap{font-size:12px;fill:#888}
"""

SCRIPT = r"""
(function () {
  var D = JSON.parse(document.getElementById('mine-data').textContent);
  var f = document.getElementById('search');
  var status = document.getElementById('search-status');
  f.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var layer = f.elements.layer.value, n = f.elements.unit.value.trim();
    var pages = D.units[layer] || {};
    var key = /^[0-9]+$/.test(n) ? String(parseInt(n, 10)) : null;
    if (key !== null && pages[key]) { window.location.href = pages[key]; }
    else { status.textContent = 'unit ' + n + ' of ' + layer + ' is not rendered'; }
  });
  document.addEventListener('keydown', function (ev) {
    var t = ev.target.tagName;
    if (t === 'INPUT' || t === 'SELECT' || ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    if ((ev.key === 'ArrowRight' || ev.key === 'n') && D.next) { window.location.href = D.next; }
    if ((ev.key === 'ArrowLeft' || ev.key === 'p') && D.prev) { window.location.href = D.prev; }
  });
  var sort = document.getElementById('sort');
  if (sort) {
    sort.addEventListener('change', function () {
      var g = document.getElementById('units'), key = sort.value;
      var cards = Array.prototype.slice.call(g.children);
      var num = function (c) { var v = parseFloat(c.getAttribute('data-' + key)); return isNaN(v) ? -Infinity : v; };
      cards.sort(function (a, b) {
        var ua = +a.getAttribute('data-unit'), ub = +b.getAttribute('data-unit');
        return key === 'unit' ? ua - ub : (num(b) - num(a)) || (ua - ub);
      });
      cards.forEach(function (c) { g.appendChild(c); });
    });
  }
})();
"""


@dataclass
class EntryView:
    """One kept entry on its unit page (file names relative to the viewer's folder).

    Its projection and patch are cut (CSS) from the unit's montages, its heatmap overlay from the
    unit's overlay strip, laid over ``image`` (the kept image): no file per entry.
    """

    rank: int
    value: float
    path: str  # source image path as stored (relative to the images root)
    box: tuple[int, int, int, int]
    image: str


@dataclass
class UnitView:
    unit: int
    value: float | None = None  # max activation (top-1), None when the unit has no entry
    rate: float | None = None  # fraction of images where it fires, when the store has statistics
    page: str | None = None  # set when rendered
    pair: str | None = None
    array: str | None = None
    occlusion: str | None = None  # the unit's occlusion maps (`mine occlude STORE`), when they exist
    visual: str | None = None  # what the unit wants to see (`mine render --visualize`), when it exists
    level: float | None = None
    level_note: str = ""
    hist: dict | None = None  # {"edges": [...], "counts": [...], "over": "all" | "top-k"}
    feat: str | None = None  # projection montage (grid of k tiles of ``tile`` px, GAP apart)
    im: str | None = None  # patch montage, same layout
    overlay: str | None = None  # k RGBA heatmap overlays side by side, each the input's size
    tile: int = 0
    border: tuple[int, int] | None = None  # (y, x) on the map's edge where every top entry sits (``border_units``)
    entries: list[EntryView] = field(default_factory=list)

    @property
    def dead(self) -> bool:
        return self.value is None or self.value <= 0


@dataclass
class LayerView:
    name: str
    page: str
    channels: int | None = None
    rf: int | None = None
    feat: str | None = None  # top-9 across feature maps, projections
    im: str | None = None  # ... and their patches
    overview: str | None = None
    units: list[UnitView] = field(default_factory=list)

    @property
    def rendered(self) -> list[UnitView]:
        return [u for u in self.units if u.page]


@dataclass
class SiteMeta:
    title: str = "mine render"
    store: str = ""
    model: str = ""
    weights: str = ""
    k: int = 9
    size: int = 0
    method: str = ""
    contrast: str = ""
    show: str = ""
    quantile: float = 0.99
    images_root: str = ""
    grid: tuple[int, int] = (3, 3)  # rows x cols of the unit montages
    crop: str = "rf"  # "effective": tiles and boxes are the square holding 90% of the projection's energy


def _url(name: str) -> str:
    """A relative file name as an attribute value: URL-quoted, then HTML-escaped."""
    return html.escape(_href(name), quote=True)


def _href(name: str) -> str:
    return quote(name.replace(os.sep, "/"), safe="/")


def _text(s) -> str:
    return html.escape(str(s), quote=True)


def _num(v: float | None, fmt: str = ".4g") -> str:
    return "—" if v is None else format(v, fmt)


def _json_script(data) -> str:
    """JSON safe inside a <script> element (no '<', '>' or '&' survive)."""
    s = json.dumps(data, sort_keys=True)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(title: str, body: list[str], layers: list[LayerView], meta: SiteMeta, current: str | None,
          nav: tuple[str | None, str | None] = (None, None)) -> str:
    """A page of the viewer; ``nav``: the pages of the previous and next unit (a unit page's arrows)."""
    prev, nxt = nav
    units = {lay.name: {str(u.unit): _href(u.page) for u in lay.rendered} for lay in layers}
    data = {"units": units, "prev": _href(prev) if prev else None, "next": _href(nxt) if nxt else None}
    opts = "".join(f'<option value="{_text(lay.name)}"{" selected" if lay.name == current else ""}>'
                   f"{_text(lay.name)}</option>" for lay in layers)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_text(title)}</title>", f"<style>{CSS}</style></head><body>",
           f'<header><a href="index.html"><strong>{_text(meta.title)}</strong></a>']
    out += [f'<a href="{_url(lay.page)}">{_text(lay.name)}</a>' for lay in layers]
    out.append('<form id="search" autocomplete="off"><label>unit <select name="layer" aria-label="layer">'
               f'{opts}</select> <input name="unit" type="search" inputmode="numeric" placeholder="number" '
               'aria-label="unit number"></label> <button type="submit">go</button>'
               '<span id="search-status" role="status"></span></form></header><main>')
    out += body
    out.append(f'</main><script type="application/json" id="mine-data">{_json_script(data)}</script>')
    out.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"


def _meta_line(meta: SiteMeta) -> str:
    parts = [f"store {meta.store}", f"model {meta.model}", f"weights {meta.weights}", f"k {meta.k}",
             f"input {meta.size} px", f"projections: {meta.method}, zero = mid-grey, contrast {meta.contrast}",
             f"beside them: {meta.show}", f"heatmap level: quantile {meta.quantile:g}"]
    return f'<p class="meta">{_text(" · ".join(parts))}</p>'


def _tops(lay: LayerView) -> list[str]:
    tops = [(lay.feat, "top-9 across feature maps: projections"), (lay.im, "top-9 across feature maps: patches"),
            (lay.overview, "overview: projections beside patches")]
    tops = [(f, t) for f, t in tops if f]
    if not tops:
        return []
    return ['<div class="tops">'] + [f'<a href="{_url(f)}"><img src="{_url(f)}" alt="{_text(t)}" title="{_text(t)}">'
                                      "</a>" for f, t in tops] + ["</div>"]


def index_page(layers: list[LayerView], meta: SiteMeta) -> str:
    body = [f"<h1>{_text(meta.title)}</h1>", _meta_line(meta),
            '<p class="meta">Search a unit by number (top right); on a unit page the left/right arrow keys '
            "go to the previous/next unit.</p>"]
    for lay in layers:
        dead = sum(u.dead for u in lay.units)
        info = [f"{lay.channels} units", f"receptive field {lay.rf} px", f"{len(lay.rendered)} rendered",
                f"{dead} dead", f"{sum(bool(u.border) for u in lay.units)} border"]
        body.append(f'<section><h2><a href="{_url(lay.page)}">{_text(lay.name)}</a></h2>')
        body.append(f'<p class="meta">{_text(", ".join(info))}</p>')
        body += _tops(lay)
        body.append("</section>")
    return _page(meta.title, body, layers, meta, layers[0].name if layers else None)


def layer_page(lay: LayerView, layers: list[LayerView], meta: SiteMeta) -> str:
    has_rate = any(u.rate is not None for u in lay.units)
    body = [f"<h1>{_text(lay.name)}</h1>", _meta_line(meta),
            f'<p class="meta">{_text(lay.channels)} units, receptive field {_text(lay.rf)} px, '
            f"{len(lay.rendered)} rendered, {sum(u.dead for u in lay.units)} dead (never positive), "
            f"{sum(bool(u.border) for u in lay.units)} border units (every top entry at one edge position)"
            f'{"" if has_rate else "; firing rates need unit statistics, which this store does not hold"}</p>']
    body += _tops(lay)
    rate_opt = '<option value="rate">firing rate</option>' if has_rate else ""
    body.append('<p><label>sort by <select id="sort"><option value="unit">unit number</option>'
                f'<option value="max">max activation</option>{rate_opt}</select></label></p>')
    body.append('<div class="grid" id="units">')
    for u in lay.units:
        cls = "card dead" if u.dead else "card"
        attrs = (f'data-unit="{u.unit}" data-max="{"" if u.value is None else repr(u.value)}" '
                 f'data-rate="{"" if u.rate is None else repr(u.rate)}"')
        cap = [f"unit {u.unit}", f"max {_num(u.value)}"]
        if u.rate is not None:
            cap.append(f"fires {u.rate:.1%}")
        badge = ' <span class="badge">dead</span>' if u.dead else ""
        badge += f' <span class="badge" title="every top entry at (y, x) = {u.border}">border</span>' if u.border else ""
        if u.page:
            img = (f'<a href="{_url(u.page)}"><img loading="lazy" src="{_url(u.pair)}" '
                   f'alt="{_text(lay.name)} unit {u.unit}"></a>')
            cap[0] = f'<a href="{_url(u.page)}">unit {u.unit}</a>'
        else:
            img = ""
            cap.append("not rendered")
        body.append(f'<figure class="{cls}" {attrs}>{img}<figcaption>{" · ".join(cap)}{badge}</figcaption></figure>')
    body.append("</div>")
    return _page(f"{lay.name} · {meta.title}", body, layers, meta, lay.name)


GAP_BINS = 4  # a run of more empty bins than this is drawn as one narrow break


def hist_svg(hist: dict | None, level: float | None, width: int = 320, height: int = 90,
             top: float | None = None) -> str:
    """A small bar plot of a unit's activation histogram with the heatmap level marked.

    Only the occupied stretch of bins is drawn (first to last with a count), one equal-width bar
    each, and a run of more than ``GAP_BINS`` empty bins inside it as one break (a dotted slot):
    the store's bins (8 per octave of magnitude, mirrored for negative values, from -2^128 to
    2^128) then read as a symmetric logarithmic axis whose empty decades (between a rectified
    unit's zeros and its smallest positive values) take no room, and the 24 linear bins of the
    top-k fallback as a linear axis. Heights are log(1 + count), so the zero bin of a rectified
    unit (most of its positions) does not flatten the rest. The level sits inside its bin, linearly.

    ``top``, the unit's maximum activation, extends the axis to its bin: the statistics count a grid
    of positions per map, so the maximum (the top-1 entry, at any position) can lie beyond the last
    counted bin, and an axis that ends below the page's "max activation" misreads.
    """
    if not hist or not hist.get("counts"):
        return '<p class="meta">no histogram</p>'
    counts, edges = np.asarray(hist["counts"], float), np.asarray(hist["edges"], float)
    occupied = np.flatnonzero(counts > 0)
    if not len(occupied):
        return '<p class="meta">no histogram (nothing counted)</p>'
    last = int(occupied[-1])
    if top is not None and np.isfinite(top):
        last = max(last, min(int(np.searchsorted(edges, top, side="right")) - 1, len(counts) - 1))
    slots = _slots(counts, int(occupied[0]), last)
    plot_h, bw = height - 14, width / len(slots)
    scale = float(np.log1p(counts.max()))
    parts = []
    for i, (a, b, gap) in enumerate(slots):
        lo, hi = _edge(edges[a]), _edge(edges[b + 1])
        if gap:
            parts.append(f'<text class="gap" x="{(i + 0.5) * bw:.2f}" y="{plot_h}" text-anchor="middle">&#8943;'
                         f"<title>{_text(f'nothing from {lo} to {hi}')}</title></text>")
            continue
        c = counts[a]
        h = 0.0 if c <= 0 else max(1.0, plot_h * float(np.log1p(c)) / scale)
        what = lo if lo == hi else f"{lo} to {hi}"
        parts.append(f'<rect x="{i * bw:.2f}" y="{plot_h - h:.2f}" width="{max(bw - 1, 0.5):.2f}" height="{h:.2f}">'
                     f"<title>{_text(f'{what}: {c:g}')}</title></rect>")
    x = _position(level, edges, slots)
    if x is not None:
        parts.append(f'<line x1="{x * bw:.2f}" x2="{x * bw:.2f}" y1="0" y2="{plot_h}">'
                     f"<title>level {level:.4g}</title></line>")
    xt = _position(top, edges, slots)
    if xt is not None:
        parts.append(f'<line class="max" x1="{xt * bw:.2f}" x2="{xt * bw:.2f}" y1="{plot_h - 6}" y2="{plot_h}">'
                     f"<title>max activation {top:.4g}</title></line>")
    parts.append(f'<text x="0" y="{height - 2}">{_text(_edge(edges[slots[0][0]]))}</text>')
    parts.append(f'<text x="{width}" y="{height - 2}" text-anchor="end">{_text(_edge(edges[slots[-1][1] + 1]))}</text>')
    zero = _position(0.0, edges, slots)
    if zero is not None and 0.15 * len(slots) < zero < 0.85 * len(slots):
        parts.append(f'<text x="{zero * bw:.2f}" y="{height - 2}" text-anchor="middle">0</text>')
    over = ("over the positions the statistics count (at most 6 x 6 per map) of all images seen"
            if hist.get("over") == "all" else "over all positions of the unit's top-k images only")
    widths = np.diff(edges)
    axis = "a linear axis" if np.allclose(widths, widths[0]) else "a symmetric log axis, 8 bins per octave"
    return (f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="activation histogram">{"".join(parts)}</svg><p class="meta">activation histogram '
            f"{_text(over)}; values on {axis} (&#8943;: a stretch with nothing), bar height log(1 + count); "
            f"red line: heatmap level{'; black tick: the maximum' if xt is not None else ''}</p>")


def _slots(counts: np.ndarray, first: int, last: int) -> list[tuple[int, int, bool]]:
    """The bars of ``hist_svg``, left to right: (first bin, last bin, is a break)."""
    slots, i = [], first
    while i <= last:
        j = i
        while j < last and counts[j] <= 0:  # ``last`` is a bar: it has a count, or holds the maximum
            j += 1
        if j - i > GAP_BINS:
            slots.append((i, j - 1, True))
        else:
            slots.extend((b, b, False) for b in range(i, j))
        slots.append((j, j, False))
        i = j + 1
    return slots


def _position(value: float | None, edges: np.ndarray, slots: list[tuple[int, int, bool]]) -> float | None:
    """Where ``value`` falls on the bars ``slots``, in bars from the left (inside a bin linearly,
    mid-slot in a break), or None when it is not a number or outside them."""
    if value is None or not np.isfinite(value) or not edges[slots[0][0]] <= value <= edges[slots[-1][1] + 1]:
        return None
    j = min(max(int(np.searchsorted(edges, value, side="right")) - 1, slots[0][0]), slots[-1][1])
    for k, (a, b, gap) in enumerate(slots):
        if a <= j <= b:
            return k + 0.5 if gap else k + float((value - edges[j]) / (edges[j + 1] - edges[j]))
    return None


def _edge(v: float) -> str:
    """A bin edge for a label: the zero bin's (+-2^-129) as 0, the overflow bins' (+-2^128) as +-inf."""
    if abs(v) < 1e-30:
        return "0"
    if abs(v) > 1e30:
        return "-inf" if v < 0 else "inf"
    return format(v, ".3g")


def unit_page(lay: LayerView, u: UnitView, prev: UnitView | None, nxt: UnitView | None, layers: list[LayerView],
              meta: SiteMeta) -> str:
    nav = [f'<a href="{_url(lay.page)}">&uarr; {_text(lay.name)}</a>']
    if prev:
        nav.append(f'<a href="{_url(prev.page)}" rel="prev">&larr; unit {prev.unit}</a>')
    if nxt:
        nav.append(f'<a href="{_url(nxt.page)}" rel="next">unit {nxt.unit} &rarr;</a>')
    facts = [f"max activation {_num(u.value)}"]
    if u.rate is not None:
        facts.append(f"fires on {u.rate:.1%} of images")
    if u.dead:
        facts.append("dead: never positive")
    if u.border:
        facts.append(f"border unit: every top entry at position (y, x) = {u.border} on the map's edge, a response "
                     "to the image border (zero padding) more than to what the images show")
    facts.append(f"heatmap level {_num(u.level)} (quantile {meta.quantile:g}; {u.level_note})")
    body = [f'<p class="nav">{"".join(nav)}</p>', f"<h1>{_text(lay.name)} · unit {u.unit}</h1>",
            f'<p class="meta">{_text("; ".join(facts))}</p>', hist_svg(u.hist, u.level, top=u.value)]
    links = [f'<a href="{_url(u.pair)}">montage</a>'] + ([f'<a href="{_url(u.array)}">npy</a>'] if u.array else [])
    links += [f'<a href="{_url(u.occlusion)}">occlusion</a>'] if u.occlusion else []
    body.append(f'<p class="meta">{" · ".join(links)}</p>')
    if u.visual:
        body.append(f'<figure><img src="{_url(u.visual)}" width="224" alt="visualisation of unit {u.unit}">'
                    '<figcaption class="label">what the unit wants to see (activation maximisation)</figcaption>'
                    '</figure>')
    rows, cols = meta.grid
    t = u.tile
    mw, mh = cols * t + (cols - 1) * GAP, rows * t + (rows - 1) * GAP
    effective = meta.crop == "effective"
    patch = "patch where the unit looks (90% of the projection's energy)" if effective else "receptive-field patch"
    box = "crop box" if effective else "box"
    for e in u.entries:
        src = f"{meta.images_root.rstrip('/')}/{e.path}" if meta.images_root and not e.path.startswith("/") else e.path
        r, c = divmod(e.rank, cols)
        tile = (c * (t + GAP), r * (t + GAP))
        k = rows * cols
        body.append(
            f'<div class="entry" id="rank-{e.rank}"><div class="pics">'
            f"<figure>{_crop(u.feat, (mw, mh), tile, t, 224, f'projection, rank {e.rank}')}"
            f'<figcaption class="label">projection ({_text(meta.method)})</figcaption></figure>'
            f"<figure>{_crop(u.im, (mw, mh), tile, t, 224, f'{patch}, rank {e.rank}')}"
            f'<figcaption class="label">{patch}</figcaption></figure>'
            f'<figure><div class="heat"><img src="{_url(e.image)}" alt="image, rank {e.rank}">'
            f"{_crop(u.overlay, (k * meta.size, meta.size), (e.rank * meta.size, 0), meta.size, 256, 'heatmap')}"
            '</div><figcaption class="label">heatmap: region above the level outlined, box in blue</figcaption>'
            f"</figure></div><dl><dt>rank</dt><dd>{e.rank}</dd><dt>value</dt><dd>{_text(f'{e.value:.6g}')}</dd>"
            f"<dt>{box}</dt><dd>{_text(list(e.box))} (top, left, bottom, right)</dd>"
            f'<dt>image</dt><dd title="{_text(src)}">{_text(e.path)}</dd></dl></div>')
    return _page(f"{lay.name} unit {u.unit} · {meta.title}", body, layers, meta, lay.name,
                 (prev.page if prev else None, nxt.page if nxt else None))


def _crop(src: str, size: tuple[int, int], at: tuple[int, int], tile: int, shown: int, alt: str) -> str:
    """The ``tile`` x ``tile`` square at ``at`` (x, y) of an image of ``size`` (w, h), shown ``shown`` px wide."""
    f = shown / max(tile, 1)
    style = (f"width:{size[0] * f:.2f}px;height:{size[1] * f:.2f}px;left:{-at[0] * f:.2f}px;"
             f"top:{-at[1] * f:.2f}px")
    return f'<div class="crop"><img src="{_url(src)}" style="{style}" alt="{_text(alt)}"></div>'


def render_pages(layers: list[LayerView], meta: SiteMeta) -> dict[str, str]:
    """File name -> HTML of every page of the viewer."""
    pages = {"index.html": index_page(layers, meta)}
    for lay in layers:
        pages[lay.page] = layer_page(lay, layers, meta)
        rendered = lay.rendered
        for i, u in enumerate(rendered):
            prev = rendered[i - 1] if i > 0 else None
            nxt = rendered[i + 1] if i + 1 < len(rendered) else None
            pages[u.page] = unit_page(lay, u, prev, nxt, layers, meta)
    return pages


def write_site(out_dir: Path, layers: list[LayerView], meta: SiteMeta) -> Path:
    """Write every page (temp file + rename each); returns the index's path."""
    out_dir = Path(out_dir)
    for name, text in render_pages(layers, meta).items():
        write_atomically(out_dir / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    return out_dir / "index.html"
