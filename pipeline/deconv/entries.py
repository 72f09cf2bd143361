"""The entries a projection walks down from: which unit (channel, position), its value, and which image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Entries:
    """B entries of one layer: ``channel``, position ``y``, ``x`` and ``value`` of each (sequences, numpy
    arrays or tensors), and ``image``: the row of the images' switches, masks or inputs each entry uses
    (None: entry b uses row b)."""

    channel: object
    y: object
    x: object
    value: object
    image: object = None

    def on(self, device: torch.device | str) -> "Entries":
        """The same entries as flat tensors on ``device``: long coordinates and rows, float32 values."""
        def as_long(v) -> torch.Tensor:
            t = v if torch.is_tensor(v) else torch.as_tensor(np.asarray(v))
            return t.to(device, torch.long).reshape(-1)

        c, yy, xx = as_long(self.channel), as_long(self.y), as_long(self.x)
        v = self.value if torch.is_tensor(self.value) else torch.as_tensor(np.asarray(self.value, dtype=np.float32))
        v = v.to(device, torch.float32).reshape(-1)
        b = c.numel()
        img = torch.arange(b, device=device) if self.image is None else as_long(self.image)
        if not (yy.numel() == xx.numel() == v.numel() == img.numel() == b):
            raise ValueError("channel, y, x, value and image must have one element per entry")
        return Entries(c, yy, xx, v, img)

    def __len__(self) -> int:
        return int(np.size(self.channel)) if not torch.is_tensor(self.channel) else self.channel.numel()
