"""Receptive-field geometry (R, S, P): the one home of boxes and tiles.

A unit (y, x) of a layer with geometry (R, S, P) sees input rows ``[y*S - P, y*S - P + R)``
(and the same columns). Walking up from the input (R=1, S=1, P=0), a module with kernel k,
stride s, padding p and dilation d gives::

    R += d*(k-1) * S;   P += p * S;   S *= s

Everything that does not move pixels (ReLU, BatchNorm, Dropout) leaves it as is. Where paths
join (a residual add, a concatenation) a unit sees the union of what each path sees: with equal
strides that is again a box, ``P = max P_i`` and ``R = max(R_i - P_i) + max P_i``.

The box is clipped to the image for the store; montage tiles are ``T = min(R, input size)``
square, at the unclipped corner ``(y*S - P, x*S - P)`` (padding where the box leaves the image)
when R fits the input, and the whole input when it does not: never a tile larger than the image.
Mining, the store, the deconvnet and render all take boxes and tiles from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn


@dataclass(frozen=True)
class Step:
    """Spatial facts of one sliding-window module (kernel, stride, padding, dilation, ceil_mode)."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    ceil_mode: bool = False

    @property
    def span(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    def out_size(self, n: int) -> int:
        num = n + 2 * self.padding - self.span
        q = -(-num // self.stride) if self.ceil_mode else num // self.stride
        return q + 1


def square(v, what: str = "kernel/stride/padding") -> int:
    """One int from an int or a square tuple; a non-square value is refused."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"non-square {what} {tuple(v)} is not supported")
        return int(v[0])
    return int(v)


def step_of(m: nn.Module) -> Step | None:
    """The spatial step of a conv/pool module, or None when it keeps positions unchanged."""
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str):
            pad = 0 if m.padding == "valid" else square(m.dilation) * (square(m.kernel_size) - 1) // 2
            return Step(square(m.kernel_size), square(m.stride), pad, square(m.dilation))
        return Step(square(m.kernel_size), square(m.stride), square(m.padding), square(m.dilation))
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        stride = m.stride if m.stride is not None else m.kernel_size
        dil = square(getattr(m, "dilation", 1))
        return Step(square(m.kernel_size), square(stride), square(m.padding), dil, bool(m.ceil_mode))
    return None


@dataclass(frozen=True)
class Geometry:
    """Receptive field size R, effective stride S and effective padding P of a layer."""

    rf: int = 1
    stride: int = 1
    padding: int = 0

    def then(self, st: Step) -> "Geometry":
        """The geometry after a sliding-window step applied on top of this one."""
        return Geometry(self.rf + (st.span - 1) * self.stride, self.stride * st.stride,
                        self.padding + st.padding * self.stride)

    def pooled(self, n: int) -> "Geometry":
        """After pooling all ``n`` x ``n`` positions into one (global pooling)."""
        return Geometry(self.rf + (n - 1) * self.stride, self.stride * n, self.padding)

    @staticmethod
    def union(parts: list["Geometry"]) -> "Geometry":
        """What a unit sees when paths of equal stride meet (add, concatenation)."""
        strides = {g.stride for g in parts}
        if len(strides) != 1:
            raise ValueError(f"paths of different strides {sorted(strides)} meet: no box geometry")
        p = max(g.padding for g in parts)
        return Geometry(max(g.rf - g.padding for g in parts) + p, parts[0].stride, p)

    @property
    def rsp(self) -> tuple[int, int, int]:
        return self.rf, self.stride, self.padding

    # --- boxes and tiles (numpy, any shape of y/x) --------------------------------------------
    def corner(self, y, x):
        """Unclipped top-left corner (rows, cols) of the boxes of units (y, x)."""
        y, x = np.asarray(y, np.int64), np.asarray(x, np.int64)
        return y * self.stride - self.padding, x * self.stride - self.padding

    def boxes(self, y, x, size: int) -> np.ndarray:
        """Boxes ``[top, left, bottom, right)`` clipped to a ``size`` image, (..., 4) int32; -1 where y < 0."""
        top, left = self.corner(y, x)
        b = np.stack([np.maximum(top, 0), np.maximum(left, 0),
                      np.minimum(top + self.rf, size), np.minimum(left + self.rf, size)], -1).astype(np.int32)
        return np.where((np.asarray(y) < 0)[..., None], -1, b)

    def tile_size(self, size: int) -> int:
        """Side T of a montage tile: R, but never more than the input."""
        return min(self.rf, size)

    def tile_origin(self, y, x, size: int):
        """Top-left (rows, cols) of the T x T tile of units (y, x) in input pixels."""
        if self.rf <= size:
            return self.corner(y, x)
        zero = np.zeros(np.shape(y), np.int64)
        return zero, zero.copy()


def output_size(steps: list[Step], size: int) -> int:
    """Spatial size after a chain of steps for a ``size`` x ``size`` input."""
    for st in steps:
        size = st.out_size(size)
    return size


def pad_crop(image: np.ndarray, top: int, left: int, size: int, fill=0) -> np.ndarray:
    """The ``size`` x ``size`` window of ``image`` (H, W, ...) at (top, left), ``fill`` outside.

    Negative starts never reach numpy slicing (which would wrap around).
    """
    h, w = image.shape[:2]
    out = np.full((size, size, *image.shape[2:]), fill, dtype=image.dtype)
    t, l = max(top, 0), max(left, 0)
    b, r = min(top + size, h), min(left + size, w)
    if b > t and r > l:
        out[t - top:b - top, l - left:r - left] = image[t:b, l:r]
    return out


def crop_tiles(images: np.ndarray, which, tops, lefts, size: int) -> np.ndarray:
    """Crops of many tiles: ``images`` (M, H, W, C), ``which`` (N,) rows -> (N, size, size, C)."""
    out = np.zeros((len(which), size, size, *images.shape[3:]), images.dtype)
    for i, (m, t, l) in enumerate(zip(which, tops, lefts)):
        out[i] = pad_crop(images[int(m)], int(t), int(l), size)
    return out
