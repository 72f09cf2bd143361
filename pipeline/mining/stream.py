"""The streaming pass: images -> named-layer maxima -> running top-k per channel.

Everything per batch stays on the model's device; the host only sees the CPU-side
bookkeeping the loader already has (keys, ok flags), so there is no per-batch
device sync. Bad files are skipped and recorded; an image whose content was
already seen (same key) is fed once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..data import normalize
from ..data.preprocess import Preprocessing
from ..models.network import Network
from .pooled import PooledVectors
from .taps import layer_stats
from .topk import RunningTopK


@dataclass
class ImageRecord:
    """What the images table keeps for one file: provenance and whether it was used."""

    index: int
    key: int
    sha256: str
    ok: bool
    reason: str
    width: int
    height: int


@dataclass
class StreamState:
    """Everything a resumable pass needs: per-layer top-k and the records so far.

    ``dirty`` is True only while a batch is being committed (top-k updated, records
    not yet): a checkpoint must never be taken then. ``batches`` counts folded
    batches, for checkpoint scheduling and reports.
    """

    tops: dict[str, RunningTopK]
    records: dict[int, ImageRecord] = field(default_factory=dict)
    seen_keys: set[int] = field(default_factory=set)
    dirty: bool = False
    batches: int = 0
    fed: int = 0  # images run through the network by this process (not restored)
    pooled: dict[str, PooledVectors] = field(default_factory=dict)  # ``--pooled``: one row per image content
    capture: object | None = None  # a ``mining.capture.Capture``: what finalize needs, kept as we go

    def restore(self, records: dict[int, ImageRecord], tops: dict[str, dict], pooled: dict | None = None) -> None:
        """Load a checkpoint: records and top-k states; seen keys follow from the records."""
        if set(tops) != set(self.tops):
            raise ValueError(f"checkpoint layers {sorted(tops)} differ from {sorted(self.tops)}")
        for name, sd in tops.items():
            self.tops[name].load_state_dict(sd)
        for name, sd in (pooled or {}).items():
            self.pooled[name].load_state_dict(sd)
        self.records = dict(records)
        self.seen_keys = {r.key for r in records.values() if r.ok}


def new_state(net: Network, layers: list[str], k: int, device: torch.device, pooled: list[str] = ()) -> StreamState:
    return StreamState({n: RunningTopK(net.layers[n].channels, k, device) for n in layers},
                       pooled={n: PooledVectors(net.layers[n].channels) for n in pooled})


def _as_input(pixels: torch.Tensor, prep: Preprocessing, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 pixels -> normalised float32 on the device (the copy is async from pinned memory)."""
    x = normalize(pixels.to(device, non_blocking=True), prep)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def stream(
    net: Network,
    state: StreamState,
    batches: Iterable[dict],
    prep: Preprocessing,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> StreamState:
    """Fold every batch into ``state``; ``on_batch(n_images, n_bad)`` drives progress/checkpoints.

    ``dtype`` bfloat16/float16 runs the forward under autocast (the ranking error this
    causes is measured by tests/test_speed_options.py); ``channels_last`` is the
    memory format the caller put the network in.

    Each batch is computed first and committed to ``state`` last (top-k, then records
    and seen keys), so an exception in decoding or in the forward pass (out of
    memory, a signal) leaves ``state`` as it was after the previous batch: it can
    still be checkpointed. Only the commit itself runs with ``state.dirty`` set.
    """
    layers = list(state.tops)
    cap = state.capture
    for batch in batches:
        ok = batch["ok"].clone()
        keys = batch["key"]
        records, new_keys = [], set()
        for i in range(len(ok)):
            idx, key = int(batch["index"][i]), int(keys[i])
            good = bool(ok[i])
            reason = batch["reason"][i]
            if good and (key in state.seen_keys or key in new_keys):
                good, reason = False, "duplicate"
                ok[i] = False
            elif good:
                new_keys.add(key)
            records.append(ImageRecord(idx, key, batch["sha256"][i], good, reason,
                                       int(batch["width"][i]), int(batch["height"][i])))
        maxima, vectors, kd, offsets = {}, {}, None, {}
        if ok.any():
            pixels = batch["pixels"] if ok.all() else batch["pixels"][ok]
            x = _as_input(pixels, prep, device, channels_last)
            kd = keys[ok].to(device, non_blocking=True)
            offsets, handles = cap.hooks(net) if cap is not None else ({}, [])
            # bf16/fp16 only rank the candidates; finalize re-runs the kept images in float32.
            try:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    maxima, vectors = layer_stats(net, layers, list(state.pooled), x)
            finally:
                for h in handles:
                    h.remove()
        state.dirty = True
        for name, (values, pos) in maxima.items():
            state.tops[name].add(values.float(), kd, pos)
        for name, rows in vectors.items():
            state.pooled[name].add(kd, rows)
        for r in records:
            state.records[r.index] = r
        state.seen_keys |= new_keys
        state.batches += 1
        state.fed += len(new_keys)
        state.dirty = False
        if cap is not None and maxima:
            cap.add(keys[ok], pixels, offsets, state.tops)
        if on_batch is not None:
            on_batch(len(ok), int((~batch["ok"]).sum()))
    return state
