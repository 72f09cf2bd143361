"""Forward hooks that reduce named layers as the forward pass goes by.

A hook on the module whose output is a layer (the ReLU after a conv, a pool, a
residual block) sees the layer's map. It is reduced at once to a per-channel spatial maximum and
arg-max, so (a) no feature map is kept and (b) an in-place ReLU further down the
network cannot overwrite what we read. The hooks themselves (``hooked``, ``run_to``: stop the pass
after the deepest requested layer) are ``models.hooks``, which every stage that runs a network uses.
"""
from __future__ import annotations

import torch

from ..models.hooks import hooked, run_to
from ..models.network import Network


def spatial_max(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (image, channel) max over positions and the flat index of its first occurrence.

    ``torch.max`` along a dim returns the first maximal index, which is the smallest
    flat position y*W + x: the tie-break DESIGN.md asks for.
    """
    values, pos = out.flatten(2).max(dim=2)
    return values, pos


def spatial_max_above(out: torch.Tensor, needed) -> tuple[torch.Tensor, torch.Tensor]:
    """``spatial_max`` where only the maps ``needed(values)`` marks (a (B, C) bool of the maxima)
    get a position.

    Why: the arg-max is most of the ranking's cost on CPU (``max(dim)`` takes 7-15x as long as
    ``amax`` over a 112 x 112 map), and once the top-k are full few maps can enter them
    (``RunningTopK.may_enter``): only those get a position (the same first maximal index
    ``spatial_max`` gives); the others get 0, which no top-k will ever keep. While many maps are
    needed (the top-k still filling up) every map gets its position in one pass: ``max(dim)``, or
    on large maps ``first_max_by_rows``. It reads how many maps are needed on the host, a sync, so
    the streaming pass uses it on CPU only.
    """
    flat = out.flatten(2)
    values = flat.amax(dim=2)
    b, c = needed(values).nonzero(as_tuple=True)  # how many is known on the host without a sum
    if 4 * len(b) > values.numel():
        if out.dim() == 4 and out.shape[2] * out.shape[3] >= ROW_SEARCH:
            return values, first_max_by_rows(out, values)
        return flat.max(dim=2)
    pos = torch.zeros(values.shape, dtype=torch.int64, device=out.device)
    if len(b):  # (indexing, not a reshape: a channels-last map would be copied whole)
        pos[b, c] = flat[b, c].argmax(dim=1)
    return values, pos


ROW_SEARCH = 64 * 64  # maps this large find their every arg-max row by row (``first_max_by_rows``)


def first_max_by_rows(out: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(B, C) flat index of the first occurrence of each map's maximum ``values`` in ``out``
    (B, C, H, W), as ``max(dim)`` finds it (a NaN counts as the maximum, the first one wins).

    Why: ``max(dim)`` walks a map element by element, ``amax`` is vectorised; over a 112 x 112 map
    the maximum of each row (``amax``), the first row holding ``values``, and the first position in
    that row take a third of ``max(dim)``'s time. For maps below ``ROW_SEARCH`` positions the
    short rows make it slower than ``max(dim)``.
    """
    b, c, h, w = out.shape
    rows = out.amax(dim=3)
    y = _first(rows, values)
    row = out.gather(2, y.view(b, c, 1, 1).expand(b, c, 1, w)).view(b, c, w)
    return y * w + _first(row, values)


def _first(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index along the last dim of the first element of ``x`` equal to ``values`` (or NaN)."""
    hit = (x == values.unsqueeze(-1)) | x.isnan()
    return hit.view(torch.uint8).argmax(dim=-1)


def layer_maxima(net: Network, layers: list[str], x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each layer: (values, flat positions), both (B, C), on x's device."""
    return layer_stats(net, layers, [], x)[0]


def layer_stats(net: Network, layers: list[str], pooled: list[str], x: torch.Tensor, observe=None,
                needed: dict | None = None):
    """One forward for both: maxima of ``layers`` (as :func:`layer_maxima`) and pooled vectors
    (B, 2, C) of ``pooled`` (``mining.pooled.pool``). ``observe(name, output)``, if given, also
    sees each full output of ``layers`` while it exists (for the unit statistics). ``needed``:
    layer -> function of the (B, C) maxima marking the maps that need a position (see
    :func:`spatial_max_above`)."""
    from .pooled import pool

    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    vectors: dict[str, torch.Tensor] = {}
    want, pools = set(layers), set(pooled)

    def take(name, out):
        if name in want:
            found[name] = spatial_max(out) if not needed else spatial_max_above(out, needed[name])
            if observe is not None:
                observe(name, out)
        if name in pools:
            vectors[name] = pool(out)

    with torch.inference_mode(), hooked(net, list(dict.fromkeys([*layers, *pooled])), take):
        run_to(net, x)
    return found, vectors
