"""Pooled vectors per image (``mine run --pooled L``): global average and max of a layer.

One statistic of the protocol of ``statistic.py`` (``add`` / ``merge`` / ``state`` /
``from_state`` / ``result``), as ``topk.RunningTopK``, but it keeps one row per image, not a top-k:
``(2, C)`` float16 per image, [0] the spatial mean, [1] the spatial max of the map (not
rectified: for a layer after its ReLU both are >= 0 anyway). Rows are keyed by image key, so
an image whose content was already seen is not stored twice (the first row added or merged of a
key is the one kept), and a duplicate file, an
``--update`` and a ``mine merge`` find its vector by content. float16 halves the store and is
ample for embeddings and nearest neighbours (relative error 5e-4). Its range is not: a value
beyond +-65504 would become ``inf`` (a model with activations near 1e10 stored ``inf`` in most
values, silently). Values are therefore **clipped** to +-65504 before the conversion, and the
first result of a statistic holding clipped values logs one warning naming the layer, the count
and what to do (rescale the model's input or weights). We chose clipping over float32 storage
so that the store's dtype, the device memory (N x 2 x C x 2 bytes) and older stores stay as
they are; the warning makes the distortion visible instead of silent.

Rows are kept on the device as the batches go (no host synchronisation per batch) and brought
to the host only for a checkpoint or the store.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger("pipeline")

F16_MAX = float(np.finfo(np.float16).max)  # 65504


def pool(out: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, 2, C) float16: spatial mean and max."""
    f = out.float().flatten(2)
    return torch.stack([f.mean(2), f.amax(2)], 1).clamp(-F16_MAX, F16_MAX).to(torch.float16)


class PooledVectors:
    FIELDS = ("keys", "rows")  # the tensors of ``state()``

    def __init__(self, channels: int, name: str = "", warn: bool = True) -> None:
        """``warn`` False: never warn of clipped values (rows that were warned of where they were computed)."""
        self.channels, self.name = channels, name
        self._warned = not warn
        self._keys: list[torch.Tensor] = []
        self._rows: list[torch.Tensor] = []

    def add(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """``keys`` (B,) image keys (distinct, not seen before), ``rows`` (B, 2, C) from :func:`pool`."""
        if len(keys):
            self._keys.append(keys.detach())
            self._rows.append(rows.detach())

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys (n,) int64 sorted, rows (n, 2, C) float16)."""
        if not self._keys:
            return np.zeros(0, np.int64), np.zeros((0, 2, self.channels), np.float16)
        keys = torch.cat([k.cpu() for k in self._keys]).numpy().astype(np.int64)
        rows = torch.cat([r.cpu() for r in self._rows]).numpy()
        keys, first = np.unique(keys, return_index=True)
        rows = rows[first]
        self._warn_clipped(rows)
        return keys, rows

    def _warn_clipped(self, rows: np.ndarray) -> None:
        clipped = int((np.abs(rows) >= F16_MAX).sum())
        if clipped and not self._warned:
            self._warned = True
            log.warning(f"pooled vectors of {self.name or 'a layer'}: {clipped} of {rows.size} values are beyond "
                        f"float16's range and were clipped to +-{F16_MAX:.0f}, which distorts `mine embed` of this "
                        f"layer; rescale the model's inputs or weights so its activations stay below that")

    def merge(self, other: "PooledVectors") -> None:
        """Fold in the rows of another statistic of the same layer (a key both hold: this one's row)."""
        if other.channels != self.channels:
            raise ValueError("cannot merge pooled vectors of different channel counts")
        self._keys += other._keys
        self._rows += other._rows

    def state(self) -> dict[str, torch.Tensor]:
        """``FIELDS`` as CPU tensors: ``result()``'s keys and rows."""
        keys, rows = self.result()
        return {"keys": torch.from_numpy(keys), "rows": torch.from_numpy(rows)}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str = "cpu", name: str = "",
                   warn: bool = True) -> "PooledVectors":
        """The statistic ``state`` describes (tensors or arrays; rows (n, 2, C)), on the CPU
        whatever ``device`` (rows are brought to the host for every result anyway)."""
        rows = torch.as_tensor(state["rows"])
        p = cls(int(rows.shape[-1]), name, warn)
        p.add(torch.as_tensor(state["keys"]), rows)
        return p
