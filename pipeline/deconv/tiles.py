"""Per-entry crops of batched maps on the device (one gather, no host synchronisation)."""
from __future__ import annotations

import torch


def shift_crop(z: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, n: int) -> torch.Tensor:
    """Per-entry crop: ``out[b, :, i, j] = z[b, :, i + dy[b], j + dx[b]]``, zero outside z.

    One gather for the whole batch (shifts stay on the device: no host synchronisation).
    """
    b, ch, m, _ = z.shape
    r = torch.arange(n, device=z.device)
    ry, rx = dy[:, None] + r, dx[:, None] + r
    vy, vx = (ry >= 0) & (ry < m), (rx >= 0) & (rx < m)
    flat = ry.clamp(0, m - 1)[:, :, None] * m + rx.clamp(0, m - 1)[:, None, :]
    out = torch.gather(z.reshape(b, ch, m * m), 2, flat.reshape(b, 1, n * n).expand(-1, ch, -1))
    keep = (vy[:, :, None] & vx[:, None, :]).reshape(b, 1, n * n).to(z.dtype)
    return (out * keep).reshape(b, ch, n, n)
