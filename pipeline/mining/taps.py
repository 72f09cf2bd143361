"""Forward hooks that reduce named layers as the forward pass goes by.

A hook on the module that *ends* a layer (the ReLU after a conv, or the pool)
sees the rectified map. It is reduced at once to a per-channel spatial maximum and
arg-max, so (a) no feature map is kept and (b) an in-place ReLU further down the
network cannot overwrite what we read. After the deepest requested layer the hook
raises ``_Stop`` so no compute is spent above it. Hooks are attached to modules,
not to VGG indices, so any net whose layers are named by ``Network`` works.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..models.network import Network


class _Stop(Exception):
    pass


def spatial_max(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (image, channel) max over positions and the flat index of its first occurrence.

    ``torch.max`` along a dim returns the first maximal index, which is the smallest
    flat position y*W + x: the tie-break DESIGN.md asks for.
    """
    values, pos = out.flatten(2).max(dim=2)
    return values, pos


@contextmanager
def hooked(net: Network, layers: list[str], fn):
    """Call ``fn(name, output)`` at each named layer; stop the forward after the deepest."""
    mods = net.modules
    deepest = max(net.layers[n].end for n in layers)
    by_end: dict[int, list[str]] = {}
    for n in layers:
        by_end.setdefault(net.layers[n].end, []).append(n)
    handles = []
    for end, names in by_end.items():
        def hook(_m, _inp, out, names=names, end=end):
            for n in names:
                fn(n, out)
            if end == deepest:
                raise _Stop
        handles.append(mods[end].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_to(net: Network, x: torch.Tensor) -> None:
    """Run the forward pass; a hook raises ``_Stop`` once it has what it needs."""
    try:
        net.features(x)
    except _Stop:
        pass


def layer_maxima(net: Network, layers: list[str], x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each layer: (values, flat positions), both (B, C), on x's device."""
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def take(name, out):
        found[name] = spatial_max(out)

    with torch.inference_mode(), hooked(net, layers, take):
        run_to(net, x)
    return found
