"""Max-pool switches as compact per-window offsets.

The deconvnet unpools through the positions the forward max-pool picked. We
store, for every pooled output (c, oy, ox), the offset ``dy * kernel + dx`` of the
winner inside its window, as uint8: a quarter of an int32 flat index, and
independent of the image size, so it compresses well and crops cleanly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.geometry import Step


def pool_offsets(x: torch.Tensor, st: Step) -> torch.Tensor:
    """uint8 (B, C, Ho, Wo) offsets of the max inside each pooling window of ``x``."""
    if st.kernel * st.kernel > 256:
        raise ValueError("pooling windows larger than 16x16 do not fit uint8 switches")
    _, idx = F.max_pool2d(
        x, st.kernel, st.stride, st.padding, st.dilation, ceil_mode=st.ceil_mode, return_indices=True
    )
    w = x.shape[-1]
    ho, wo = idx.shape[-2:]
    idx = idx.to(torch.int32)  # int32 arithmetic: the maps are far below 2^31 elements, and it is faster
    oy = torch.arange(ho, dtype=torch.int32, device=x.device).view(ho, 1) * st.stride - st.padding
    ox = torch.arange(wo, dtype=torch.int32, device=x.device).view(1, wo) * st.stride - st.padding
    row = torch.div(idx, w, rounding_mode="floor")
    dx = idx - row * w - ox
    dy = row - oy
    if st.dilation != 1:
        dy, dx = dy // st.dilation, dx // st.dilation
    return (dy * st.kernel + dx).to(torch.uint8)


def offsets_to_input(offsets: torch.Tensor, st: Step, oy0: int = 0, ox0: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute input rows/cols picked by each switch; (oy0, ox0) is the window origin."""
    ho, wo = offsets.shape[-2:]
    off = offsets.to(torch.int64)
    oy = (torch.arange(ho, device=off.device).view(ho, 1) + oy0) * st.stride - st.padding
    ox = (torch.arange(wo, device=off.device).view(1, wo) + ox0) * st.stride - st.padding
    return oy + (off // st.kernel) * st.dilation, ox + (off % st.kernel) * st.dilation
