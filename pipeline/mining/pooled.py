"""Pooled vectors per image (``mine run --pooled L``): global average and max of a layer.

One small running statistic in the style of ``topk.RunningTopK`` (``add`` / ``result`` /
``state_dict`` / ``load_state_dict`` / ``merge``), but it keeps one row per image, not a top-k:
``(2, C)`` float16 per image, [0] the spatial mean, [1] the spatial max of the map (not
rectified: for a layer after its ReLU both are >= 0 anyway). Rows are keyed by image key, so
an image whose content was already seen is not stored twice, and a duplicate file, an
``--update`` and a ``mine merge`` find its vector by content. float16 halves the store and is
ample for embeddings and nearest neighbours (relative error 5e-4).

Rows are kept on the device as the batches go (no host synchronisation per batch) and brought
to the host only for a checkpoint or the store.
"""
from __future__ import annotations

import numpy as np
import torch


def pool(out: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, 2, C) float16: spatial mean and max."""
    f = out.float().flatten(2)
    return torch.stack([f.mean(2), f.amax(2)], 1).to(torch.float16)


class PooledVectors:
    def __init__(self, channels: int) -> None:
        self.channels = channels
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
        return keys, rows[first]

    def as_dict(self) -> dict[int, np.ndarray]:
        keys, rows = self.result()
        return dict(zip(keys.tolist(), rows))

    def state_dict(self) -> dict[str, torch.Tensor]:
        keys, rows = self.result()
        return {"keys": torch.from_numpy(keys), "rows": torch.from_numpy(rows)}

    def load_state_dict(self, sd: dict) -> None:
        self._keys = [torch.as_tensor(sd["keys"])]
        self._rows = [torch.as_tensor(sd["rows"])]
