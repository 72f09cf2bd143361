"""Render a store: projections, receptive-field patches, montages and an index page.

One concept per module: ``names`` (file names, feature lists), ``project`` (projections and
patches of store entries), ``normalise`` (display scaling and channel order), ``montage`` (grids,
pairs, overview, PNG writing), ``manifest`` (what is up to date), ``index_html`` (the browsable
page) and ``render`` (the `mine render` pipeline over a store).
"""
from ..pictures.names import default_out_dir, feature_files, layer_files, parse_features, safe_name
from .render import RenderConfig, RenderResult, render_store
from .renderer import Renderer, load_store_network

__all__ = ["RenderConfig", "RenderResult", "Renderer", "default_out_dir", "feature_files", "layer_files", "load_store_network",
           "parse_features", "render_store", "safe_name"]
