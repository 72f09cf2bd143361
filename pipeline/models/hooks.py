"""Forward hooks on named layers, and a forward pass that stops after the deepest one.

``hooked(net, layers, fn)`` calls ``fn(name, output)`` at each named layer of a ``Network``; after
the deepest requested layer the hook raises ``_Stop`` and ``run_to`` swallows it, so no compute is
spent above it. Hooks are attached to modules by their qualified path, so any net whose layers are
named by ``Network`` works. Every stage that runs a network uses them: the mining pass and
finalize (``mining/``), projections (``deconv/``, ``render/``), feature visualisation and the
analyses; so they live here, below all of them.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .network import Network


class _Stop(Exception):
    """Raised by the deepest layer's hook: the rest of the forward pass is not needed."""


@contextmanager
def hooked(net: Network, layers: list[str], fn):
    """Call ``fn(name, output)`` at each named layer; stop the forward after the deepest.

    Each layer is the output of one module that runs once per forward (see ``models.trace``),
    so one forward hook per layer module sees it; the module that completes last stops the pass.
    """
    deepest = max(net.layers[n].order for n in layers)
    by_module: dict[str, list[str]] = {}
    for n in layers:
        by_module.setdefault(net.layers[n].module, []).append(n)
    handles = []
    for path, names in by_module.items():
        last = net.layers[names[0]].order == deepest

        def hook(_m, _inp, out, names=names, last=last):
            for n in names:
                fn(n, out)
            if last:
                raise _Stop
        handles.append(net.model.get_submodule(path).register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_to(net: Network, x: torch.Tensor) -> None:
    """Run the forward pass; a hook raises ``_Stop`` once it has what it needs."""
    try:
        net.model(x)
    except _Stop:
        pass
