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

from dataclasses import dataclass

import numpy as np
import torch

from ..data import make_loader, normalize
from ..data.preprocess import Preprocessing
from ..models.geometry import step_of
from ..models.hooks import hooked, run_to
from ..models.network import Network
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


def finalize(
    net: Network,
    tops: dict[str, RunningTopK],
    key_to_index: dict[int, int],
    dataset_factory,
    prep: Preprocessing,
    device: torch.device,
    precision: str = "fp32",
    workers: int = 0,
    describe=lambda layer, c, rank, key: f"{layer} feature {c} rank {rank} image key {key}",
    name_of=lambda index: f"image {index}",
    dist=None,
    captured: dict | None = None,
) -> Finalized | None:
    """``dataset_factory(indices)`` builds an ``ImageDataset`` over those source indices.

    Every re-run kept image must come back with the key it was mined under (the key is its
    content hash): one that does not raises ``KeptImagesChanged`` naming them all
    (``name_of(index)``) before any value is compared.

    ``captured`` (key -> (pixels, switches), see ``mining.capture``): images whose float32
    streaming pass already gave what finalize computes; they are not re-run (nor checked:
    their pixels are the ones mined).

    ``dist`` (a ``jobs.distributed.Dist``): this process re-runs only its share of the fixed
    batches and rank 0 gathers, checks and returns the result (None on the other ranks); a
    changed kept image on any rank raises ``KeptImagesChanged`` on every rank.
    """
    layers = list(tops)
    res = {n: tops[n].result() for n in layers}
    all_keys = torch.cat([r["keys"].flatten() for r in res.values()])
    kept_keys = torch.unique(all_keys[all_keys != EMPTY_KEY]).numpy()  # sorted
    kept_index = np.array([key_to_index[int(k)] for k in kept_keys], dtype=np.int64)
    pools = net.pools_through(layers)  # a mined pool needs its own switches
    net.model.to(memory_format=torch.contiguous_format)
    size = prep.size
    n = len(kept_keys)
    pixels = np.zeros((n, size, size, 3), np.uint8)
    switches = {p: np.zeros((n, net.layers[p].channels, net.layers[p].out_size, net.layers[p].out_size), np.uint8)
                for p in pools}

    # Entry lookup: kept row of every slot, and its (c, y, x).
    rows, chans, ys, xs, recorded = {}, {}, {}, {}, {}
    for name in layers:
        keys = res[name]["keys"].numpy()
        w = net.layers[name].out_size
        rows[name] = np.where(keys == EMPTY_KEY, -1, np.searchsorted(kept_keys, keys))
        pos = res[name]["pos"].numpy()
        ys[name], xs[name] = pos // w, pos % w
        chans[name] = np.broadcast_to(np.arange(keys.shape[0])[:, None], keys.shape)
        recorded[name] = res[name]["values"].numpy()
    final = {name: np.full(rows[name].shape, np.nan, np.float32) for name in layers}
    maxima = {name: np.full(rows[name].shape, np.nan, np.float32) for name in layers}
    argmax = {name: np.full(rows[name].shape, -1, np.int64) for name in layers}

    # Captured images: the streaming pass's float32 values are the re-run's (batch invariance).
    captured = captured or {}
    cap_rows = [r for r, key in enumerate(kept_keys.tolist()) if key in captured]
    if cap_rows:
        is_cap = np.zeros(n, bool)
        is_cap[cap_rows] = True
        for r in cap_rows:
            px, sw = captured[int(kept_keys[r])]
            pixels[r] = px
            for p in pools:
                switches[p][r] = sw[p]
        for name in layers:
            sel = np.nonzero((rows[name] >= 0) & is_cap[np.maximum(rows[name], 0)])
            final[name][sel] = maxima[name][sel] = recorded[name][sel]
            argmax[name][sel] = res[name]["pos"].numpy()[sel]
    # The others in fixed batches of FINAL_BATCH in key order, whoever runs them: a float32
    # convolution may round differently with other batch companions.
    todo = [r for r in range(n) if not is_cap[r]] if cap_rows else list(range(n))
    n_batches = -(-len(todo) // FINAL_BATCH)
    mine = list(range(n_batches)) if dist is None else dist.share(n_batches)
    my_rows = [todo[i] for j in mine for i in range(j * FINAL_BATCH, min(len(todo), (j + 1) * FINAL_BATCH))]
    loader = make_loader(dataset_factory([int(kept_index[r]) for r in my_rows]), FINAL_BATCH, workers,
                         device.type == "cuda")
    partials, done, err = [], 0, None
    changed: list[tuple[int, str]] = []  # (index, why) of kept images whose file changed
    try:
        for batch in loader:
            b = len(batch["ok"])
            batch_rows = np.array(my_rows[done:done + b], dtype=np.int64)
            done += b
            moved = batch["key"].numpy() != kept_keys[batch_rows]
            if moved.any() or not bool(batch["ok"].all()):
                changed += [(int(i), "changed since it was mined" if m and sha else reason)
                            for i, ok, m, sha, reason in zip(batch["index"], batch["ok"], moved, batch["sha256"],
                                                             batch["reason"]) if m or not ok]
                continue
            if changed:  # the job fails anyway: only the remaining files are still read
                continue
            partials.append(_rerun(net, batch, batch_rows, n, rows, chans, ys, xs, layers, pools, prep, device))
    except ReproduceError as e:
        err = e
    if dist is not None:  # every rank learns of every changed file, and fails alike
        changed = [c for cs in dist.gather_all(changed) for c in cs]
    if changed:
        names = ", ".join(f"{name_of(i)} ({why})" for i, why in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise KeptImagesChanged(f"{len(changed)} kept image(s) no longer hold the content mined: {names}{more}")
    if dist is not None:
        dist.agree(err)
        gathered = dist.gather_to_root(partials)
        if gathered is None:
            dist.agree(None)  # rank 0's check below
            return None
        partials = [p for ps in gathered for p in ps]
    elif err is not None:
        raise err
    for batch_rows, px, sw, found in partials:
        pixels[batch_rows] = px
        for p in pools:
            switches[p][batch_rows] = sw[p]
        for name, (sel, v, m, mp) in found.items():
            final[name][sel] = v
            maxima[name][sel] = m
            argmax[name][sel] = mp

    rtol = RTOL[precision]
    out_layers = {}
    try:
        out_layers = _check(net, layers, res, rows, recorded, final, maxima, argmax, ys, xs, precision, rtol,
                            describe)
    except ReproduceError as e:
        err = e
    if dist is not None:
        dist.agree(err)
    elif err is not None:
        raise err
    return Finalized(kept_keys.astype(np.int64), kept_index, pixels, switches, out_layers)


def _rerun(net, batch, batch_rows, n, rows, chans, ys, xs, layers, pools, prep, device):
    """One fixed batch of kept rows ``batch_rows``: (batch_rows, pixels, switches, found values)."""
    at = np.full(n + 1, -1, np.int64)  # kept row -> place in this batch (last: empty slots)
    at[batch_rows] = np.arange(len(batch_rows))
    if not bool(batch["ok"].all()):
        bad = int(batch["index"][~batch["ok"]][0])
        raise ReproduceError(f"kept image {bad} can no longer be read: {batch['reason']}")
    px = batch["pixels"].numpy()
    x = normalize(batch["pixels"].to(device, non_blocking=True), prep).float()
    captured: dict = {}  # layer -> (slots, values, channel maxima)
    offsets: dict[str, torch.Tensor] = {}  # pool -> switches

    def take(name, out):
        place = at[rows[name]]  # rows -1 (empty) map to the last element, -1
        sel = np.nonzero(place >= 0)
        if sel[0].size:
            i, c, y, xx = (torch.as_tensor(a[sel], device=out.device)
                           for a in (place, chans[name], ys[name], xs[name]))
            vmax, vpos = spatial_max(out)
            captured[name] = (sel, out[i, c, y, xx].float().cpu(), vmax[i, c].float().cpu(), vpos[i, c].cpu())

    def switch_hook(p):
        st = step_of(net.module(p))
        return lambda _m, inp: offsets.__setitem__(p, pool_offsets(inp[0], st))

    pre = [net.module(p).register_forward_pre_hook(switch_hook(p)) for p in pools]
    try:
        with torch.inference_mode(), hooked(net, layers, take):
            run_to(net, x)
    finally:
        for h in pre:
            h.remove()
    return (batch_rows, px, {p: offsets[p].cpu().numpy() for p in pools},
            {name: (sel, v.numpy(), m.numpy(), mp.numpy()) for name, (sel, v, m, mp) in captured.items()})


def _check(net, layers, res, rows, recorded, final, maxima, argmax, ys, xs, precision, rtol, describe):
    """Every recorded value reproduced (else ``ReproduceError``); entries re-sorted."""
    out_layers = {}
    for name in layers:
        filled = rows[name] >= 0
        rec = recorded[name]
        scale = float(np.nanmax(np.where(filled, np.abs(final[name]), np.nan))) if filled.any() else 0.0
        atol = ATOL[precision] * scale
        tol = rtol * np.maximum(np.abs(rec), np.abs(final[name])) + atol
        bad = filled & ~((np.abs(final[name] - rec) <= tol) & (np.abs(maxima[name] - final[name]) <= tol))
        if bad.any():
            c, r = map(int, np.argwhere(bad)[0])
            key = int(res[name]["keys"][c, r])
            raise ReproduceError(
                f"{describe(name, c, r, key)}: mined value {rec[c, r]:.6g} at (y={ys[name][c, r]}, "
                f"x={xs[name][c, r]}) re-ran as {final[name][c, r]:.6g} (channel max {maxima[name][c, r]:.6g}); "
                f"{int(bad.sum())} entries differ beyond the tolerance"
            )
        if precision != "fp32":  # half precision may pick a near-tie position: keep float32's arg-max
            w = net.layers[name].out_size
            final[name] = maxima[name]
            ys[name], xs[name] = np.where(filled, argmax[name] // w, -1), np.where(filled, argmax[name] % w, -1)
        out_layers[name] = _reorder(final[name], res[name]["keys"].numpy(), rows[name], ys[name], xs[name])
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
