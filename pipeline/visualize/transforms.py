"""Small random transformations at every step, so the image works whatever its exact placement.

Each unit draws its own jitter (up to ``jitter`` pixels), scale (``scales``) and rotation
(``degrees``) from its own generator, and the whole batch is warped by one ``grid_sample`` with a
per-row affine matrix: a unit's image does not depend on which other units share its batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

JITTER, SCALES, DEGREES = 8, (0.9, 1.1), 10.0


def random_affine(generators: list[torch.Generator], size: int) -> torch.Tensor:
    """(B, 2, 3) affine matrices in normalised coordinates, one draw per generator."""
    rows = []
    for g in generators:
        u = torch.rand(4, generator=g, dtype=torch.float64)
        s = SCALES[0] + (SCALES[1] - SCALES[0]) * float(u[0])
        a = math.radians(DEGREES * (2 * float(u[1]) - 1))
        tx, ty = ((2 * u[2:] - 1) * JITTER * 2 / size).tolist()
        rows.append([[math.cos(a) / s, -math.sin(a) / s, tx], [math.sin(a) / s, math.cos(a) / s, ty]])
    return torch.tensor(rows, dtype=torch.float32)


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply per-row affine ``theta`` (reflecting at the border, so no black corners enter)."""
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="reflection", align_corners=False)
