"""Render a store: deconvnet projections, receptive-field patches, montages and an index page.

One concept per module: ``crop`` (receptive-field boxes padded to R x R), ``normalise`` (display
scaling and channel order), ``montage`` (grids, pairs, overview, PNG writing), ``index_html``
(the browsable page) and ``render`` (the `mine render` pipeline over a store).
"""
from .render import (RenderResult, Renderer, default_out_dir, feature_files, layer_files, load_store_network,
                     parse_features, render_store, safe_name)

__all__ = ["RenderResult", "Renderer", "default_out_dir", "feature_files", "layer_files", "load_store_network",
           "parse_features", "render_store", "safe_name"]
