"""Finalize: re-run the kept images in float32 and collect what render needs.

The streaming pass only remembers (value, image key, position) per slot. Here the
distinct kept images are run again, in a fixed order (by key) and fixed batch size
so the result does not depend on how mining was batched. For every entry we check
that the recorded value is reproduced at the recorded position and is still the
channel's spatial maximum; a mismatch is an error naming the entry. We keep the
re-run float32 values (so a bf16 mining pass still yields float32 stores), the
max-pool switches of every pool below the deepest mined layer, and the uint8 input
pixels of each kept image (crops are cut from those by geometry).

Tolerance: ``|re-run - recorded| <= rtol * max(|recorded|, |re-run|) + atol`` with
rtol = 1e-4 and atol = 1e-6 x (largest value of the layer) for float32 mining, and
rtol = 5e-2, atol = 1e-2 x (largest value of the layer) for bf16/fp16 mining: a
half-precision forward errs in proportion to the layer's typical magnitude, so a
small entry can be off by more than its own few percent. Float32 convolutions differ
between batch sizes and devices by ~1e-6 relative, far inside 1e-4.

The re-run uses the contiguous (NCHW) memory format whatever the streaming pass
used: a last-bit difference can flip a near-tie inside a pooling window, and the
stored switches must not depend on a speed option.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..data import make_loader, normalize
from ..data.preprocess import Preprocessing
from ..devices import pin_memory
from ..models.geometry import step_of
from ..models.hooks import hooked, run_to
from ..models.network import Network
from .peers import ALONE
from .switches import pool_offsets
from .taps import spatial_max
from .topk import EMPTY_KEY, RunningTopK

FINAL_BATCH = 8
RTOL = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-2}
ATOL = {"fp32": 1e-6, "bf16": 1e-2, "fp16": 1e-2}  # x the layer's largest value


class ReproduceError(Exception):
    """A recorded activation was not reproduced by the float32 re-run."""


class KeptImagesChanged(Exception):
    """Kept images whose source no longer holds the content mined (edited, deleted or
    unreadable files). Not a computation error: the mined state describes files that are
    gone, so the caller must mine again."""


@dataclass
class LayerEntries:
    """Entries of one layer, (channels, k) each; ``kept`` indexes the kept images (-1 empty)."""

    values: np.ndarray  # float32, NaN where empty
    keys: np.ndarray  # int64, -1 where empty
    kept: np.ndarray  # int64 row into the kept-image arrays, -1 where empty
    y: np.ndarray  # int32, -1 where empty
    x: np.ndarray  # int32


@dataclass
class Finalized:
    kept_keys: np.ndarray  # (n_kept,) int64, sorted
    kept_index: np.ndarray  # (n_kept,) int64 index into the source paths
    pixels: np.ndarray  # (n_kept, H, W, 3) uint8
    switches: dict[str, np.ndarray]  # pool name -> (n_kept, C, Ho, Wo) uint8
    layers: dict[str, LayerEntries]


def _describe(layer: str, c: int, rank: int, key: int) -> str:
    return f"{layer} feature {c} rank {rank} image key {key}"


def _name_of(index: int) -> str:
    return f"image {index}"


@dataclass(frozen=True)
class FinalizeOptions:
    """How finalize runs: ``prep`` and ``device`` of the re-run, the streaming ``precision``
    (the tolerance), loader ``workers``, ``describe(layer, c, rank, key)`` and ``name_of(index)``
    for messages, and ``dist``: the processes that share the re-run (``mining.peers``: ``ALONE``, or a
    ``jobs.distributed.Dist``)."""

    prep: Preprocessing
    device: torch.device
    precision: str = "fp32"
    workers: int = 0
    describe: Callable[[str, int, int, int], str] = _describe
    name_of: Callable[[int], str] = _name_of
    dist: object = ALONE


def finalize(net: Network, tops: dict[str, RunningTopK], key_to_index: dict[int, int], dataset_factory,
             options: FinalizeOptions, captured: dict | None = None) -> Finalized | None:
    """``dataset_factory(indices)`` builds an ``ImageDataset`` over those source indices.

    Every re-run kept image must come back with the key it was mined under (the key is its
    content hash): one that does not raises ``KeptImagesChanged`` naming them all
    (``options.name_of(index)``) before any value is compared.

    ``captured`` (key -> (pixels, switches), see ``mining.capture``): images whose float32
    streaming pass already gave what finalize computes; they are not re-run (nor checked:
    their pixels are the ones mined).

    ``options.dist`` (a ``jobs.distributed.Dist``): this process re-runs only its share of the
    fixed batches and rank 0 gathers, checks and returns the result (None on the other ranks); a
    changed kept image on any rank raises ``KeptImagesChanged`` on every rank.
    """
    plan = _Plan.of(net, tops, key_to_index, options.prep.size)
    net.model.to(memory_format=torch.contiguous_format)
    todo = plan.take_captured(captured or {})
    partials = _rerun_share(net, plan, todo, dataset_factory, options)
    if partials is None:
        return None
    plan.fill(partials)
    err, out_layers = None, {}
    try:
        out_layers = _check(net, plan, options.precision, options.describe)
    except ReproduceError as e:
        err = e
    options.dist.agree(err)
    return Finalized(plan.kept_keys.astype(np.int64), plan.kept_index, plan.pixels, plan.switches, out_layers)


@dataclass
class _Plan:
    """Finalize's working arrays: the kept images (sorted keys, source indices), the pools whose
    switches are stored, per layer the top-k ``res``ult and each slot's kept row, channel, (y, x)
    and recorded value; filled in as batches come back: pixels, switches, and per slot the re-run
    value, its channel's maximum and arg-max."""

    layers: list[str]
    res: dict[str, dict]
    kept_keys: np.ndarray
    kept_index: np.ndarray
    pools: list[str]
    pixels: np.ndarray
    switches: dict[str, np.ndarray]
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    chans: dict[str, np.ndarray] = field(default_factory=dict)
    ys: dict[str, np.ndarray] = field(default_factory=dict)
    xs: dict[str, np.ndarray] = field(default_factory=dict)
    recorded: dict[str, np.ndarray] = field(default_factory=dict)
    final: dict[str, np.ndarray] = field(default_factory=dict)
    maxima: dict[str, np.ndarray] = field(default_factory=dict)
    argmax: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, net: Network, tops: dict[str, RunningTopK], key_to_index: dict[int, int], size: int) -> "_Plan":
        layers = list(tops)
        res = {n: tops[n].result() for n in layers}
        all_keys = torch.cat([r["keys"].flatten() for r in res.values()])
        kept_keys = torch.unique(all_keys[all_keys != EMPTY_KEY]).numpy()  # sorted
        kept_index = np.array([key_to_index[int(k)] for k in kept_keys], dtype=np.int64)
        pools = net.pools_through(layers)  # a mined pool needs its own switches
        n = len(kept_keys)
        plan = cls(layers, res, kept_keys, kept_index, pools, np.zeros((n, size, size, 3), np.uint8),
                   {p: np.zeros((n, net.layers[p].channels, net.layers[p].out_size, net.layers[p].out_size),
                                np.uint8) for p in pools})
        for name in layers:  # entry lookup: kept row of every slot, and its (c, y, x)
            keys = res[name]["keys"].numpy()
            w = net.layers[name].out_size
            plan.rows[name] = np.where(keys == EMPTY_KEY, -1, np.searchsorted(kept_keys, keys))
            pos = res[name]["pos"].numpy()
            plan.ys[name], plan.xs[name] = pos // w, pos % w
            plan.chans[name] = np.broadcast_to(np.arange(keys.shape[0])[:, None], keys.shape)
            plan.recorded[name] = res[name]["values"].numpy()
            plan.final[name] = np.full(keys.shape, np.nan, np.float32)
            plan.maxima[name] = np.full(keys.shape, np.nan, np.float32)
            plan.argmax[name] = np.full(keys.shape, -1, np.int64)
        return plan

    def take_captured(self, captured: dict) -> list[int]:
        """Take the captured images as they are (the streaming pass's float32 values are the
        re-run's, by batch invariance); the kept rows still to re-run."""
        n = len(self.kept_keys)
        cap_rows = [r for r, key in enumerate(self.kept_keys.tolist()) if key in captured]
        if not cap_rows:
            return list(range(n))
        is_cap = np.zeros(n, bool)
        is_cap[cap_rows] = True
        for r in cap_rows:
            px, sw = captured[int(self.kept_keys[r])]
            self.pixels[r] = px
            for p in self.pools:
                self.switches[p][r] = sw[p]
        for name in self.layers:
            rows = self.rows[name]
            sel = np.nonzero((rows >= 0) & is_cap[np.maximum(rows, 0)])
            self.final[name][sel] = self.maxima[name][sel] = self.recorded[name][sel]
            self.argmax[name][sel] = self.res[name]["pos"].numpy()[sel]
        return [r for r in range(n) if not is_cap[r]]

    def fill(self, partials: list) -> None:
        """Put the re-run batches' results (``_rerun``'s) in place."""
        for batch_rows, px, sw, found in partials:
            self.pixels[batch_rows] = px
            for p in self.pools:
                self.switches[p][batch_rows] = sw[p]
            for name, (sel, v, m, mp) in found.items():
                self.final[name][sel] = v
                self.maxima[name][sel] = m
                self.argmax[name][sel] = mp


def _rerun_share(net: Network, plan: _Plan, todo: list[int], dataset_factory, options: FinalizeOptions):
    """Re-run the kept rows ``todo`` in fixed batches of FINAL_BATCH in key order, whoever runs them (a
    float32 convolution may round differently with other batch companions): this process's share
    of the batches. Returns every batch's result (on rank 0 of a torchrun job: every rank's; on the
    other ranks None); raises ``KeptImagesChanged`` if any kept image changed, on every rank."""
    dist = options.dist
    n_batches = -(-len(todo) // FINAL_BATCH)
    mine = dist.share(n_batches)
    my_rows = [todo[i] for j in mine for i in range(j * FINAL_BATCH, min(len(todo), (j + 1) * FINAL_BATCH))]
    loader = make_loader(dataset_factory([int(plan.kept_index[r]) for r in my_rows]), FINAL_BATCH,
                         options.workers, pin_memory(options.device))
    partials, done, err = [], 0, None
    changed: list[tuple[int, str]] = []  # (index, why) of kept images whose file changed
    try:
        for batch in loader:
            b = len(batch["ok"])
            batch_rows = np.array(my_rows[done:done + b], dtype=np.int64)
            done += b
            changed += _changed(batch, plan.kept_keys[batch_rows])
            if changed:  # the job fails anyway: only the remaining files are still read
                continue
            partials.append(_rerun(net, batch, batch_rows, plan, options.prep, options.device))
    except ReproduceError as e:
        err = e
    changed = [c for cs in dist.gather_all(changed) for c in cs]  # every rank learns of every changed file
    if changed:
        names = ", ".join(f"{options.name_of(i)} ({why})" for i, why in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise KeptImagesChanged(f"{len(changed)} kept image(s) no longer hold the content mined: {names}{more}")
    dist.agree(err)
    gathered = dist.gather_to_root(partials)
    if gathered is None:
        dist.agree(None)  # rank 0's check
        return None
    return [p for ps in gathered for p in ps]


def _changed(batch: dict, keys: np.ndarray) -> list[tuple[int, str]]:
    """(index, why) of the batch's images that are not the content mined (``keys``) or unreadable."""
    moved = batch["key"].numpy() != keys
    if not moved.any() and bool(batch["ok"].all()):
        return []
    return [(int(i), "changed since it was mined" if m and sha else reason)
            for i, ok, m, sha, reason in zip(batch["index"], batch["ok"], moved, batch["sha256"], batch["reason"])
            if m or not ok]


def _rerun(net: Network, batch: dict, batch_rows: np.ndarray, plan: _Plan, prep: Preprocessing,
           device: torch.device):
    """One fixed batch of kept rows ``batch_rows``: (batch_rows, pixels, switches, found values)."""
    at = np.full(len(plan.kept_keys) + 1, -1, np.int64)  # kept row -> place in this batch (last: empty slots)
    at[batch_rows] = np.arange(len(batch_rows))
    if not bool(batch["ok"].all()):
        bad = int(batch["index"][~batch["ok"]][0])
        raise ReproduceError(f"kept image {bad} can no longer be read: {batch['reason']}")
    px = batch["pixels"].numpy()
    x = normalize(batch["pixels"].to(device, non_blocking=True), prep).float()
    captured: dict = {}  # layer -> (slots, values, channel maxima)
    offsets: dict[str, torch.Tensor] = {}  # pool -> switches

    def take(name, out):
        place = at[plan.rows[name]]  # rows -1 (empty) map to the last element, -1
        sel = np.nonzero(place >= 0)
        if sel[0].size:
            i, c, y, xx = (torch.as_tensor(a[sel], device=out.device)
                           for a in (place, plan.chans[name], plan.ys[name], plan.xs[name]))
            vmax, vpos = spatial_max(out)
            captured[name] = (sel, out[i, c, y, xx].float().cpu(), vmax[i, c].float().cpu(), vpos[i, c].cpu())

    def switch_hook(p):
        st = step_of(net.module(p))
        return lambda _m, inp: offsets.__setitem__(p, pool_offsets(inp[0], st))

    pre = [net.module(p).register_forward_pre_hook(switch_hook(p)) for p in plan.pools]
    try:
        with torch.inference_mode(), hooked(net, plan.layers, take):
            run_to(net, x)
    finally:
        for h in pre:
            h.remove()
    return (batch_rows, px, {p: offsets[p].cpu().numpy() for p in plan.pools},
            {name: (sel, v.numpy(), m.numpy(), mp.numpy()) for name, (sel, v, m, mp) in captured.items()})


def _check(net: Network, plan: _Plan, precision: str, describe) -> dict[str, LayerEntries]:
    """Every recorded value reproduced (else ``ReproduceError``); entries re-sorted."""
    out_layers = {}
    rtol = RTOL[precision]
    final, maxima, ys, xs = plan.final, plan.maxima, plan.ys, plan.xs
    for name in plan.layers:
        filled = plan.rows[name] >= 0
        rec = plan.recorded[name]
        scale = float(np.nanmax(np.where(filled, np.abs(final[name]), np.nan))) if filled.any() else 0.0
        atol = ATOL[precision] * scale
        tol = rtol * np.maximum(np.abs(rec), np.abs(final[name])) + atol
        bad = filled & ~((np.abs(final[name] - rec) <= tol) & (np.abs(maxima[name] - final[name]) <= tol))
        if bad.any():
            c, r = map(int, np.argwhere(bad)[0])
            key = int(plan.res[name]["keys"][c, r])
            raise ReproduceError(
                f"{describe(name, c, r, key)}: mined value {rec[c, r]:.6g} at (y={ys[name][c, r]}, "
                f"x={xs[name][c, r]}) re-ran as {final[name][c, r]:.6g} (channel max {maxima[name][c, r]:.6g}); "
                f"{int(bad.sum())} entries differ beyond the tolerance"
            )
        if precision != "fp32":  # half precision may pick a near-tie position: keep float32's arg-max
            w = net.layers[name].out_size
            final[name] = maxima[name]
            ys[name] = np.where(filled, plan.argmax[name] // w, -1)
            xs[name] = np.where(filled, plan.argmax[name] % w, -1)
        out_layers[name] = _reorder(final[name], plan.res[name]["keys"].numpy(), plan.rows[name], ys[name],
                                    xs[name])
    return out_layers


def _reorder(values, keys, rows, ys, xs) -> LayerEntries:
    """Sort each channel by the float32 re-run (value desc, key asc); empties last."""
    v = np.where(rows >= 0, values, -np.inf)
    kk = np.where(rows >= 0, keys, np.iinfo(np.int64).max)
    order = np.lexsort((kk, -v), axis=-1)
    take = lambda a: np.take_along_axis(a, order, 1)
    empty = take(rows) < 0
    return LayerEntries(
        values=np.where(empty, np.nan, take(values)).astype(np.float32),
        keys=np.where(empty, EMPTY_KEY, take(keys)).astype(np.int64),
        kept=take(rows).astype(np.int64),
        y=np.where(empty, -1, take(ys)).astype(np.int32),
        x=np.where(empty, -1, take(xs)).astype(np.int32),
    )
