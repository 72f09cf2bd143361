"""Projections through any graph (residual adds, concatenations, BatchNorm, functional ReLUs).

For an entry (channel c, position (y, x), value v of a layer) the projection is ``v`` times the
gradient of the unit with respect to the input image, computed with the backward rules of
:mod:`.rules` (deconvnet: ReLU of the signal). The forward pass is re-run on the kept image's
stored pixels, so max-pools route the signal through that image's own switches, the same ones
finalize stored. A batch of entries is one forward up to the layer and one backward: entries do
not interact (eval mode), so the gradient of the sum is each entry's projection.

This is the general path: chains of Conv2d/ReLU/MaxPool2d use the windowed walker of
:mod:`.project`, which needs no forward pass and is tested equal to this one.

Shift averaging (``shifts`` = s > 1). A strided first layer (MobileNetV2's and ResNet's stride-2
stems, AlexNet's stride 4) leaves a period-s grid in any backward pass to the pixels (Odena et al.
2016), locked to the network's sampling grid, not to the image. Projecting the same entry on the
image moved by each of the s x s one-pixel offsets and moving each projection back before
averaging keeps what is tied to the image and cancels what is tied to the grid (its period-s
components sum to zero over a full period of phases). The unit is the same (channel, y, x) on
each moved copy; s x s forward and backward passes per entry.
"""
from __future__ import annotations

import torch

from ..models.hooks import hooked, run_to
from ..models.network import Network
from .entries import Entries
from .lrp import LRP_METHODS, lrp_rules
from .rules import rectifier_rules


def project_graph(net: Network, layer: str, x: torch.Tensor, entries: Entries, method: str = "deconvnet",
                  shifts: int = 1) -> torch.Tensor:
    """Full-size projections (B, 3, H, W) of B entries of ``layer`` (:class:`Entries`; entry b on input b);
    ``x`` the normalised inputs (B, 3, H, W).

    ``shifts`` > 1: the mean over the ``shifts`` x ``shifts`` one-pixel moves of the image (module doc).
    """
    e = entries.on(x.device)

    def one_entry(out: torch.Tensor) -> torch.Tensor:
        seed = torch.zeros_like(out)
        seed[torch.arange(len(x), device=x.device), e.channel, e.y, e.x] = e.value.to(out.dtype)
        return seed

    if shifts <= 1:
        return backproject(net, layer, x, one_entry, method)
    total = None
    for dy in range(shifts):
        for dx in range(shifts):
            g = move(backproject(net, layer, move(x, dy, dx, edge=True), one_entry, method), -dy, -dx)
            total = g if total is None else total + g
    return total / (shifts * shifts)


def move(x: torch.Tensor, dy: int, dx: int, edge: bool = False) -> torch.Tensor:
    """``out[..., i, j] = x[..., i + dy, j + dx]``: the picture moved up-left by (dy, dx) pixels.

    What comes in at the border repeats the edge pixel (``edge``: an image, no black band for the
    network to respond to) or is zero (a projection moved back: nothing was projected there).
    """
    h, w = x.shape[-2:]
    iy = torch.arange(h, device=x.device) + dy
    ix = torch.arange(w, device=x.device) + dx
    out = x.index_select(-2, iy.clamp(0, h - 1)).index_select(-1, ix.clamp(0, w - 1))
    if not edge:
        keep = ((iy >= 0) & (iy < h))[:, None] & ((ix >= 0) & (ix < w))[None, :]
        out = out * keep.to(out.dtype)
    return out


def backproject(net: Network, layer: str, x: torch.Tensor, seed_of, method: str = "deconvnet") -> torch.Tensor:
    """The walk down from ``layer`` for any signal: (B, 3, H, W) = d<seed, layer>/dx under ``method``.

    ``seed_of(out)`` gets the layer's output (B, C, h, w) of the forward pass and returns the
    signal to put there (same shape; it is used as a constant). One entry is a one-hot seed
    (:func:`project_graph`); a whole layer is the layer's own detached activations
    (``analyses.reconstruct``).
    """
    x = x.detach().float().requires_grad_(True)  # LRP methods: the walk carries relevance (.lrp)
    captured: dict[str, torch.Tensor] = {}
    rules = lrp_rules(method, x) if method in LRP_METHODS else rectifier_rules(method)
    with torch.enable_grad(), rules, hooked(net, [layer], lambda n, out: captured.setdefault(n, out)):
        run_to(net, x)
    out = captured[layer]
    (grad,) = torch.autograd.grad(out, x, seed_of(out.detach()))
    return grad


def graph_entry_bytes(net: Network, layer: str) -> int:
    """Rough memory of one entry's forward + backward up to ``layer`` (float32 maps, twice)."""
    last = net.layers[layer].order
    return 8 * sum(li.channels * li.out_size ** 2 for li in net.layers.values() if li.order <= last)
