"""Receptive-field geometry (R, S, P): the one home of boxes and tiles.

A unit (y, x) of a layer with geometry (R, S, P) sees input rows ``[y*S - P, y*S - P + R)``
(and the same columns). Walking up from the input (R=1, S=1, P=0), a module with kernel k,
stride s, padding p and dilation d gives::

    R += d*(k-1) * S;   P += p * S;   S *= s

Everything that does not move pixels (ReLU, BatchNorm, Dropout) leaves it as is. Where paths
join (a residual add, a concatenation) a unit sees the union of what each path sees: with equal
strides that is again a box, ``P = max P_i`` and ``R = max(R_i - P_i) + max P_i``.

Decoder layers (fractional stride). Below a transposed convolution, an upsampling
(``nn.Upsample`` / ``F.interpolate``, nearest or bilinear) or a ``PixelShuffle`` one unit
moves the box by less than a pixel on average, and neighbouring units see boxes of different
sizes (a 3x3 stride-2 transposed convolution: even outputs read one input, odd ones two). No
single (R, S, P) describes that, but the boxes repeat: after ``period`` units they have moved
``stride`` pixels. Such a geometry keeps, per residue ``r < period``, the box ``[lo_r, hi_r)`` of
unit ``r``; unit ``y = q*period + r`` sees ``[q*stride + lo_r, q*stride + hi_r)``. That is exact
per unit. How the three numbers are reported then:

* **S** is ``stride/period`` input pixels per unit, printed as a fraction (``1/2`` after one 2x
  upsampling of the image, ``4/2`` for a 2x upsampling of a stride-4 map: pairs of units share
  a box); the store records ``stride`` (pixels per period) and ``period``;
* **R** is the largest box side over the residues (the side of every montage tile);
* **P** is minus the top of unit 0's box, as for plain layers.

An ordinary layer is the case ``period == 1``; every geometry is reduced to its shortest period,
so a decoder geometry that happens to be a plain box again (2x upsampling, then a 2x2/2 pool)
comes out as a plain (R, S, P). Composition is :meth:`Geometry.through` with a :class:`Reads`
(which input positions each output position reads); union takes per residue the hull over the
paths, over the least common period.

Boxes are unclipped and then clipped to the image, as for every layer: exact when the edge units
of the maps in between see the image edges (sizes that divide evenly, as in the usual
autoencoders); otherwise a box at the far edge may claim pixels that only a padded position sees.
An output that reads no input at all (a transposed convolution with kernel < stride) has an empty
box (``lo == hi``).

The box is clipped to the image for the store; montage tiles are ``T = min(R, input size)``
square, at the unclipped corner ``(y*S - P, x*S - P)`` (padding where the box leaves the image)
when R fits the input, and the whole input when it does not: never a tile larger than the image.
A decoder box smaller than R sits in the middle of its tile. Mining, the store, the deconvnet and
render all take boxes and tiles from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from torch import nn

MAX_PERIOD = 4096  # beyond this a geometry is refused (an interpolation between awkward sizes)


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
class Reads:
    """Which input positions (along one axis) each output position of a module reads.

    Output ``o = q*period + r`` reads ``q*shift + i`` for every ``i`` in ``offsets[r]``: every
    module here repeats that way (a sliding window every unit, a 2x upsampling every 2 units).
    Positions before 0 or past the end are the module's padding.
    """

    period: int
    shift: int
    offsets: tuple[tuple[int, ...], ...]  # per residue, sorted input positions (may be empty)

    def at(self, o: int) -> tuple[int, ...]:
        q, r = divmod(o, self.period)
        return tuple(q * self.shift + i for i in self.offsets[r])

    @staticmethod
    def window(st: Step) -> "Reads":
        """A convolution or pool: output o reads ``o*s - p + j*d`` for j < k."""
        return Reads(1, st.stride, (tuple(j * st.dilation - st.padding for j in range(st.kernel)),))

    @staticmethod
    def transposed(kernel: int, stride: int, padding: int, dilation: int = 1) -> "Reads":
        """A transposed convolution: input i, tap j feed output ``i*s - p + j*d`` (output_padding
        only appends outputs; groups only pair channels)."""
        offs = []
        for r in range(stride):
            taps = [r + padding - j * dilation for j in range(kernel)]
            offs.append(tuple(sorted(t // stride for t in taps if t % stride == 0)))
        return Reads(stride, 1, tuple(offs))

    @staticmethod
    def resample(scale: Fraction, mode: str, align_corners: bool = False) -> "Reads":
        """``F.interpolate`` (and ``PixelShuffle``: nearest with scale 1/r); ``scale`` = input
        positions per output position (1/2 for a 2x upsampling), the scale PyTorch's kernels use.

        nearest: ``floor(o*scale)``; nearest-exact: ``floor((o + 1/2)*scale)``; bilinear:
        ``src = (o + 1/2)*scale - 1/2`` (``o*scale`` with align_corners) reads ``floor(src)`` and,
        unless src is a whole number (weight 0), ``floor(src) + 1``.
        """
        scale = Fraction(scale)
        a, b = scale.numerator, scale.denominator
        offs = []
        for r in range(b):
            if mode == "nearest":
                offs.append((r * a // b,))
            elif mode == "nearest-exact":
                offs.append(((2 * r + 1) * a // (2 * b),))
            elif mode == "bilinear":
                num, den = ((r * a, b) if align_corners else ((2 * r + 1) * a - b, 2 * b))
                lo, hi = num // den, -(-num // den)
                offs.append((lo,) if lo == hi else (lo, hi))
            else:
                raise ValueError(f"interpolation mode {mode!r} has no box geometry")
        return Reads(b, a, tuple(offs))


Span = tuple[int, int]  # [lo, hi) in input pixels, lo == hi: the unit reads nothing


@dataclass(frozen=True)
class Geometry:
    """Receptive field size R, effective stride S and effective padding P of a layer.

    ``period``/``spans``: the per-unit boxes of a decoder layer (see the module docstring);
    ``stride`` is then the pixels moved per ``period`` units. ``spans == ()`` for a plain layer.
    """

    rf: int = 1
    stride: int = 1
    padding: int = 0
    period: int = 1
    spans: tuple[Span, ...] = ()

    @staticmethod
    def periodic(stride: int, period: int, spans: list[Span]) -> "Geometry":
        """The geometry of boxes ``spans[r]`` repeating every ``period`` units, at its shortest period."""
        for d in range(1, period + 1):
            if period % d or (stride * d) % period:
                continue
            step = stride * d // period
            if all(spans[r + d] == (spans[r][0] + step, spans[r][1] + step) for r in range(period - d)):
                period, stride, spans = d, step, list(spans[:d])
                break
        if period == 1:
            lo, hi = spans[0]
            return Geometry(hi - lo, stride, -lo)
        return Geometry(max(hi - lo for lo, hi in spans), stride, -spans[0][0], period, tuple(spans))

    @staticmethod
    def whole(size: int, n: int) -> "Geometry":
        """Every unit of an ``n`` x ``n`` map sees the whole ``size`` x ``size`` input (a map rebuilt
        from a vector, as after a Linear bottleneck): R = size, S = size/n, P = 0."""
        return Geometry.periodic(size, n, [(0, size)] * n)

    @property
    def table(self) -> tuple[Span, ...]:
        """The box of unit r for r < period."""
        return self.spans or ((-self.padding, self.rf - self.padding),)

    @property
    def pitch(self) -> Fraction:
        """S: input pixels per unit (a fraction below a decoder layer)."""
        return Fraction(self.stride, self.period)

    @property
    def stride_text(self) -> str:
        """S as printed: ``8``, or ``stride/period`` for a decoder layer (``1/2``, ``4/2``)."""
        return str(self.stride) if self.period == 1 else f"{self.stride}/{self.period}"

    def span(self, o: int) -> Span:
        """The unclipped box ``[lo, hi)`` of unit ``o`` along one axis."""
        q, r = divmod(o, self.period)
        lo, hi = self.table[r]
        return q * self.stride + lo, q * self.stride + hi

    def through(self, reads: Reads) -> "Geometry":
        """The geometry of a module that reads this layer as ``reads`` says: the hull, per output
        unit, of the boxes of the positions it reads (empty positions left out)."""
        m = self.period // math.gcd(self.period, reads.shift)
        period = reads.period * m
        stride = self.stride * m * reads.shift // self.period
        _check_period(period)
        spans = []
        for o in range(period):
            pos = reads.at(o)
            spans.append(_hull([self.span(i) for i in pos], self.span(pos[0] if pos else o * reads.shift // reads.period)))
        return Geometry.periodic(stride, period, spans)

    def then(self, st: Step) -> "Geometry":
        """The geometry after a sliding-window step applied on top of this one."""
        if self.period == 1:  # the closed form of through(Reads.window(st))
            return Geometry(self.rf + (st.span - 1) * self.stride, self.stride * st.stride,
                            self.padding + st.padding * self.stride)
        return self.through(Reads.window(st))

    def pooled(self, n: int) -> "Geometry":
        """After pooling all ``n`` x ``n`` positions into one (global pooling)."""
        return self.then(Step(n, n, 0))

    @staticmethod
    def union(parts: list["Geometry"]) -> "Geometry":
        """What a unit sees when paths of equal stride meet (add, concatenation)."""
        pitches = {g.pitch for g in parts}
        if len(pitches) != 1:
            raise ValueError(f"paths of different strides {sorted(map(str, pitches))} meet: no box geometry")
        period = _check_period(math.lcm(*(g.period for g in parts)))
        stride = int(pitches.pop() * period)
        spans = [_hull([g.span(o) for g in parts], parts[0].span(o)) for o in range(period)]
        return Geometry.periodic(stride, period, spans)

    @property
    def rsp(self) -> tuple[int, int, int]:
        return self.rf, self.stride, self.padding

    def attrs(self) -> dict:
        """What a store records of the geometry: rf, stride, padding, and for decoder layers
        ``period`` and the per-residue ``box_lo``/``box_hi`` (see :meth:`from_attrs`)."""
        out = {"rf": self.rf, "stride": self.stride, "padding": self.padding}
        if self.period > 1:
            out.update(period=self.period, box_lo=np.array([s[0] for s in self.spans], np.int64),
                       box_hi=np.array([s[1] for s in self.spans], np.int64))
        return out

    @staticmethod
    def from_attrs(a) -> "Geometry":
        """The geometry recorded by :meth:`attrs` (a mapping such as HDF5 attributes)."""
        if int(a.get("period", 1)) == 1:
            return Geometry(int(a["rf"]), int(a["stride"]), int(a["padding"]))
        spans = tuple((int(lo), int(hi)) for lo, hi in zip(a["box_lo"], a["box_hi"]))
        return Geometry(int(a["rf"]), int(a["stride"]), int(a["padding"]), int(a["period"]), spans)

    # --- boxes and tiles (numpy, any shape of y/x) --------------------------------------------
    def _lo_hi(self, y) -> tuple[np.ndarray, np.ndarray]:
        """Unclipped [lo, hi) of units ``y`` along one axis."""
        q, r = np.divmod(np.asarray(y, np.int64), self.period)
        t = np.asarray(self.table, np.int64)
        return q * self.stride + t[r, 0], q * self.stride + t[r, 1]

    def corner(self, y, x):
        """Unclipped top-left corner (rows, cols) of the boxes of units (y, x)."""
        return self._lo_hi(y)[0], self._lo_hi(x)[0]

    def boxes(self, y, x, size: int) -> np.ndarray:
        """Boxes ``[top, left, bottom, right)`` clipped to a ``size`` image, (..., 4) int32; -1 where y < 0."""
        (top, bottom), (left, right) = self._lo_hi(y), self._lo_hi(x)
        t, l_ = np.clip(top, 0, size), np.clip(left, 0, size)
        b = np.stack([t, l_, np.clip(bottom, t, size), np.clip(right, l_, size)], -1).astype(np.int32)
        return np.where((np.asarray(y) < 0)[..., None], -1, b)

    def tile_size(self, size: int) -> int:
        """Side T of a montage tile: R, but never more than the input."""
        return min(self.rf, size)

    def tile_origin(self, y, x, size: int):
        """Top-left (rows, cols) of the T x T tile of units (y, x) in input pixels.

        The box's corner; a decoder box narrower than R is centred in its tile.
        """
        if self.rf <= size:
            (top, bottom), (left, right) = self._lo_hi(y), self._lo_hi(x)
            return top - (self.rf - (bottom - top)) // 2, left - (self.rf - (right - left)) // 2
        zero = np.zeros(np.shape(y), np.int64)
        return zero, zero.copy()


def _check_period(period: int) -> int:
    if period > MAX_PERIOD:
        raise ValueError(f"boxes repeat only every {period} units: no box geometry")
    return period


def _hull(spans: list[Span], where: Span) -> Span:
    """The smallest box holding every non-empty span; empty at ``where``'s top when all are."""
    live = [s for s in spans if s[1] > s[0]]
    if not live:
        return where[0], where[0]
    return min(s[0] for s in live), max(s[1] for s in live)


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
