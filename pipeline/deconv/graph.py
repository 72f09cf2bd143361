"""Projections through any graph (residual adds, concatenations, BatchNorm, functional ReLUs).

For an entry (channel c, position (y, x), value v of a layer) the projection is ``v`` times the
gradient of the unit with respect to the input image, computed with the backward rules of
:mod:`.rules` (deconvnet: ReLU of the signal). The forward pass is re-run on the kept image's
stored pixels, so max-pools route the signal through that image's own switches, the same ones
finalize stored. A batch of entries is one forward up to the layer and one backward: entries do
not interact (eval mode), so the gradient of the sum is each entry's projection.

This is the general path: chains of Conv2d/ReLU/MaxPool2d use the windowed walker of
:mod:`.project`, which needs no forward pass and is tested equal to this one.
"""
from __future__ import annotations

import torch

from ..mining.taps import hooked, run_to
from ..models.network import Network
from .rules import rectifier_rules


def project_graph(net: Network, layer: str, x: torch.Tensor, channel: torch.Tensor, y: torch.Tensor,
                  xx: torch.Tensor, value: torch.Tensor, method: str = "deconvnet") -> torch.Tensor:
    """Full-size projections (B, 3, H, W) of B entries of ``layer``; ``x`` the normalised inputs (B, 3, H, W)."""
    def one_entry(out: torch.Tensor) -> torch.Tensor:
        seed = torch.zeros_like(out)
        seed[torch.arange(len(x), device=x.device), channel, y, xx] = value.to(out.dtype)
        return seed

    return backproject(net, layer, x, one_entry, method)


def backproject(net: Network, layer: str, x: torch.Tensor, seed_of, method: str = "deconvnet") -> torch.Tensor:
    """The walk down from ``layer`` for any signal: (B, 3, H, W) = d<seed, layer>/dx under ``method``.

    ``seed_of(out)`` gets the layer's output (B, C, h, w) of the forward pass and returns the
    signal to put there (same shape; it is used as a constant). One entry is a one-hot seed
    (:func:`project_graph`); a whole layer is the layer's own detached activations
    (``analyses.reconstruct``).
    """
    x = x.detach().float().requires_grad_(True)
    captured: dict[str, torch.Tensor] = {}
    with torch.enable_grad(), rectifier_rules(method), hooked(net, [layer], lambda n, out: captured.setdefault(n, out)):
        run_to(net, x)
    out = captured[layer]
    (grad,) = torch.autograd.grad(out, x, seed_of(out.detach()))
    return grad


def graph_entry_bytes(net: Network, layer: str) -> int:
    """Rough memory of one entry's forward + backward up to ``layer`` (float32 maps, twice)."""
    last = net.layers[layer].order
    return 8 * sum(li.channels * li.out_size ** 2 for li in net.layers.values() if li.order <= last)
