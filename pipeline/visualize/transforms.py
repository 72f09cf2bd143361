"""Small random transformations at every step, so the image works whatever its exact placement.

Each unit draws its own jitter (up to ``jitter`` pixels), scale (``scales``) and rotation
(``degrees``) from its own generator, and the whole batch is warped by one ``grid_sample`` with a
per-row affine matrix: a unit's image does not depend on which other units share its batch.

Then the whole batch is resized to a random input size (:func:`random_input_size`, bilinear), so
the image must drive its unit when the network sees it larger than it was drawn: without this the
optimum is a texture tuned to one scale, which loses half its objective when the same picture is
shown 1.75 times larger (MobileNetV2 features.11, 128 px; see scripts/bench_visualize.py). The size
is drawn from the run's own generator, the same for every unit, so batches stay independent.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

JITTER, SCALES, DEGREES = 8, (0.9, 1.1), 10.0
ZOOM = (1.0, 2.0)  # network input size / image size, log-uniform: up to twice as large


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


def random_input_size(generator: torch.Generator, size: int, zoom: tuple[float, float] = ZOOM) -> int:
    """``size`` times a log-uniform factor in ``zoom``, rounded: the network's input size for one step."""
    lo, hi = math.log(zoom[0]), math.log(zoom[1])
    return max(1, round(size * math.exp(lo + (hi - lo) * float(torch.rand(1, generator=generator, dtype=torch.float64)))))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size); antialiased when shrinking."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1])
