"""``mine reconstruct``: one image projected back to pixels from a chosen layer.

Why: a montage shows what one unit responds to across a collection; a reconstruction shows what
a whole layer keeps of *one* image (Zeiler & Fergus project all of a layer's activations, the
seed project of a VGG16 deconvnet did the same layer by layer).

What is computed: the layer's activations ``A`` of the image, kept as they are (every map), or
only feature map C (``feature``), or only the N maps with the largest spatial maximum in this
image (``top``; the ranking ``mine run`` uses), zeros elsewhere, walked down to the pixels with
the method of ``mine render`` (deconvnet: ReLU of the signal at every rectifier; guided;
gradient). That is the gradient of ``<A.detach() * mask, layer>`` with respect to the input with
the rectifier rules of ``deconv.rules`` installed (``deconv.backproject``): max-pools route
through this image's own switches, residual adds and concatenations split the signal, so it
works for every model ``mine`` loads. The result is (3, S, S) float32 at the network input's
size, in the activations' scale, RGB (BGR weights are turned around before anything is saved).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..deconv import METHODS, backproject
from ..durable import save_array
from ..models.network import Network
from ..pictures.montage import save_png
from ..pictures.names import safe_name
from ..pictures.sheet import labelled_grid
from ..render.normalise import display, to_rgb
from .inputs import as_input, image_stems, load_pixels, preprocessing


def map_mask(out: torch.Tensor, feature: int | None = None, top: int | None = None) -> torch.Tensor:
    """(B, C, 1, 1) float mask of the maps to keep: all, map ``feature``, or the ``top`` strongest."""
    b, c = out.shape[:2]
    if feature is not None and top is not None:
        raise ValueError("give feature or top, not both")
    mask = torch.ones(b, c, 1, 1, device=out.device, dtype=out.dtype)
    if feature is not None:
        if not 0 <= feature < c:
            raise ValueError(f"feature {feature} out of range: the layer has {c} channels")
        mask.zero_()[:, feature] = 1
    elif top is not None:
        if top < 1:
            raise ValueError("--top must be at least 1")
        strongest = out.flatten(2).amax(2).topk(min(top, c), dim=1).indices  # (B, N)
        mask.zero_().scatter_(1, strongest[:, :, None, None], 1.0)
    return mask


def reconstruct(net: Network, layer: str, x: torch.Tensor, feature: int | None = None, top: int | None = None,
                method: str = "deconvnet") -> torch.Tensor:
    """Projections (B, 3, S, S) of the selected maps of ``layer`` for normalised inputs ``x``.

    Channels are in the network's input order (BGR for caffe weights; see :func:`reconstruct_images`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of: {', '.join(METHODS)}")
    return backproject(net, layer, x, lambda out: out * map_mask(out, feature, top), method)


@dataclass
class ReconstructResult:
    files: list[Path] = field(default_factory=list)  # one PNG per (image, layer): input | projection
    arrays: list[Path] = field(default_factory=list)
    sheet: Path | None = None

    def summary(self) -> str:
        extra = f", sheet {self.sheet}" if self.sheet else ""
        n = len(self.files)
        return f"{n} reconstruction{'s' * (n != 1)}{extra} -> {self.files[0].parent if self.files else '-'}"


@dataclass(frozen=True)
class ReconstructOptions:
    """Which maps (all, ``feature`` or the ``top`` N), the backward ``method``, the ``resize`` policy of
    the images, ``save_arrays`` (.npy beside the PNGs), the ``device``, and ``sheet`` (None: a sheet
    when there is more than one image or layer)."""

    feature: int | None = None
    top: int | None = None
    method: str = "deconvnet"
    resize: str = "center-crop"
    save_arrays: bool = False
    device: torch.device | str = "cpu"
    sheet: bool | None = None


def reconstruct_images(net: Network, images: list[str | Path], layers: list[str], out: Path,
                       opts: ReconstructOptions = ReconstructOptions()) -> ReconstructResult:
    """Write ``<image>.<layer>.png`` (the network input beside its projection, each S x S, the
    projection displayed as ``mine render`` does: zero at mid-grey, its own scale) for every image
    and layer, ``.npy`` (3, S, S) with ``save_arrays``, and ``sheet.png`` (rows images, columns
    input then layers, lower to upper) when there is more than one of either."""
    feature, top = opts.feature, opts.top
    prep = preprocessing(net, opts.resize)
    pixels = load_pixels(images, prep)
    net.to(opts.device)
    x = as_input(pixels, prep, net.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = sorted(layers, key=lambda n: net.layers[n].order)
    res = ReconstructResult()
    cells: list[list[np.ndarray]] = [[p] for p in pixels]
    for layer in layers:
        proj = to_rgb(reconstruct(net, layer, x, feature, top, opts.method).cpu().numpy(), prep)
        shown = display(proj)
        for i, name in enumerate(image_stems(images)):
            stem = f"{name}.{safe_name(layer)}"
            png = out / f"{stem}.png"
            save_png(labelled_grid([[pixels[i], shown[i]]], cols=["input", f"{layer}{_what(feature, top)}"]), png)
            res.files.append(png)
            if opts.save_arrays:
                save_array(out / f"{stem}.npy", proj[i].astype(np.float32))
                res.arrays.append(out / f"{stem}.npy")
            cells[i].append(shown[i])
    if opts.sheet if opts.sheet is not None else (len(images) > 1 or len(layers) > 1):
        res.sheet = out / "sheet.png"
        cols = ["input"] + [f"{n}{_what(feature, top)}" for n in layers]
        save_png(labelled_grid(cells, cols=cols, rows=[Path(p).stem for p in images]), res.sheet)
    return res


def _what(feature, top) -> str:
    return f" map {feature}" if feature is not None else f" top {top}" if top is not None else ""
