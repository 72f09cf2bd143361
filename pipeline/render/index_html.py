"""``index.html``: one self-contained page to browse the rendered layers and feature maps.

No CDN, no script, inline CSS; every link is relative, so the folder works from file:// and can
be copied anywhere. File names are URL-quoted inside ``href``/``src`` and HTML-escaped
everywhere (layer names come from stores, file names from the file system: neither is trusted).
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

__all__ = ["FeatureLinks", "LayerLinks", "write_index", "render_index"]

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{position:sticky;top:0;background:#222;color:#eee;padding:.5em 1em;z-index:1}
header a{color:#9cf;margin-right:.8em;text-decoration:none}
main{padding:0 1em 2em}
h2{margin:1.2em 0 .3em;border-bottom:1px solid #ccc}
.meta{color:#666;font-size:12px}
.layer-top img{max-width:100%;image-rendering:pixelated;margin:.3em .6em .3em 0;border:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:4px}
figure img{display:block;height:140px;image-rendering:pixelated}
figcaption{font-size:12px;color:#444}
figcaption a{margin-left:.4em}
"""


@dataclass
class FeatureLinks:
    """Files of one rendered feature map (names relative to the index's folder)."""

    feature: int | str
    pair: str
    feat: str
    im: str
    array: str | None = None
    value: float | None = None


@dataclass
class LayerLinks:
    name: str
    channels: int | None = None
    rf: int | None = None
    feat: str | None = None  # top-9 across feature maps, projections
    im: str | None = None  # ... and their patches
    overview: str | None = None
    features: list[FeatureLinks] = field(default_factory=list)


def _url(name: str) -> str:
    """A relative file name as an attribute value: URL-quoted, then HTML-escaped."""
    return html.escape(quote(name.replace(os.sep, "/"), safe="/"), quote=True)


def _text(s) -> str:
    return html.escape(str(s), quote=True)


def _anchor(layer: str) -> str:
    return "layer-" + quote(layer, safe="")


def render_index(layers: list[LayerLinks], title: str = "mine render", subtitle: str = "") -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_text(title)}</title>", f"<style>{CSS}</style></head><body>", "<header>",
           f"<strong>{_text(title)}</strong> "]
    for lay in layers:
        out.append(f'<a href="#{_text(_anchor(lay.name))}">{_text(lay.name)}</a>')
    out.append("</header><main>")
    if subtitle:
        out.append(f'<p class="meta">{_text(subtitle)}</p>')
    for lay in layers:
        meta = []
        if lay.channels is not None:
            meta.append(f"{lay.channels} channels")
        if lay.rf is not None:
            meta.append(f"receptive field {lay.rf} px")
        meta.append(f"{len(lay.features)} feature maps rendered")
        out.append(f'<section><h2 id="{_text(_anchor(lay.name))}">{_text(lay.name)}</h2>')
        out.append(f'<p class="meta">{_text(", ".join(meta))}</p>')
        tops = [(lay.feat, "top-9 across feature maps: projections"), (lay.im, "top-9 across feature maps: patches"),
                (lay.overview, "overview: projections beside patches")]
        tops = [(f, t) for f, t in tops if f]
        if tops:
            out.append('<div class="layer-top">')
            for f, t in tops:
                out.append(f'<a href="{_url(f)}"><img src="{_url(f)}" alt="{_text(t)}" title="{_text(t)}"></a>')
            out.append("</div>")
        out.append('<div class="grid">')
        for fe in lay.features:
            cap = f"feature {_text(fe.feature)}"
            if fe.value is not None:
                cap += f" &middot; max {_text(f'{fe.value:.4g}')}"
            links = f'<a href="{_url(fe.feat)}">projections</a><a href="{_url(fe.im)}">patches</a>'
            if fe.array:
                links += f'<a href="{_url(fe.array)}">npy</a>'
            out.append(f'<figure><a href="{_url(fe.pair)}"><img loading="lazy" src="{_url(fe.pair)}" '
                       f'alt="{_text(lay.name)} feature {_text(fe.feature)}"></a>'
                       f"<figcaption>{cap}{links}</figcaption></figure>")
        out.append("</div></section>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def write_index(out_dir: Path, layers: list[LayerLinks], title: str = "mine render", subtitle: str = "") -> Path:
    path = Path(out_dir) / "index.html"
    tmp = path.with_name(f".index.html.tmp-{os.getpid()}")
    tmp.write_text(render_index(layers, title, subtitle), encoding="utf-8")
    os.replace(tmp, path)
    return path
