"""Per-unit activation statistics: an exact, mergeable histogram per channel.

One statistic of the protocol of ``statistic.py`` (``add`` / ``merge`` / ``state`` /
``from_state`` / ``result``), as ``topk.RunningTopK``. For every channel of a layer it
counts activations into fixed bins, and the images whose spatial maximum is
positive ("fired"). Counts are int64, so merging is a sum: exact, associative and
commutative. Resume, ``--update``, sharding and ``mine merge`` therefore give
bit-identical statistics, provided each image's activations are the same numbers
wherever it is computed (true for a given device, weights and precision; the top-k
relies on the same).

Which activations (``GRID``, bins version 3): of every (image, channel) map, the
positions of a fixed grid of at most 6 x 6: every s-th row and column from the first,
s = ceil(H / 6) (and ceil(W / 6)); a 7 x 7 map counts 4 x 4 positions, 14 x 14 5 x 5,
maps of up to 6 x 6 count whole. Why: counting is a scatter-add per counted activation,
and MobileNetV2's forward pass is cheap per activation: counting every position
(version 1) cost its streaming pass up to 45 %, a grid of 16 x 16 (version 2) 9-15 % (19
layers, 224 px, without page-fault overhead, see pipeline/allocator.py), this grid about 3 %.
The grid thins out positions that neighbour each other, so over hundreds of images a
unit's quantiles and mean come out the same to well within the bins' own 12.5 %; a
unit's 0.99 quantile over 100 images of 7 x 7 maps still rests on 16 counted positions
above it. The firing counts use the spatial maxima: every position.

Bins (``BINS``, fixed for every layer of every network; the same in bins versions 1 to 3)
    Symmetric in sign, logarithmic in magnitude: 8 bins per octave (the top 3
    mantissa bits of the float32), for magnitudes in [2^-24, 2^24) (6e-8 to 1.7e7),
    which covers activations from 1e-3 (deep BatchNorm nets) to 1e5 (Caffe-scale
    HED weights) with room to spare. In value order::

        0            overflow  x <= -2^24 (also -inf, negative NaN; edge -2^128)
        1 .. 384     negative regular bins, largest magnitude first
        385          negative underflow  -2^-24 < x <= -2^-129
        386          zero      |x| < 2^-129 (0, -0 and the subnormals below 1.5e-39)
        387          positive underflow  2^-129 <= x < 2^-24
        388 .. 771   positive regular bins
        772          overflow  x >= 2^24 (also +inf, NaN; edge 2^128)

    A positive regular bin is [lo, hi) with lo = 2^e (1 + j/8), hi = 2^e (1 + (j+1)/8);
    a negative one is its mirror image (-hi, -lo]: bins are half-open away from
    zero, i.e. a magnitude falls in [lo, hi). ``BINS.edges`` (773 + 1 values) lists
    the boundaries in value order.

Why these bins: they are the top 12 bits of the IEEE-754 float32 pattern (sign,
exponent, 3 mantissa bits), so a bin index is one integer shift of the raw bits:
exact (no ``log`` whose last bit could differ between devices), cheap, and the
same for float32 and bfloat16 (whose 16 bits are the top half of a float32).

Quantile error bound: the exact empirical q-quantile (numpy's ``inverted_cdf``) of the
counted positions lies in the bin that ``quantile`` finds; for magnitudes in [2^-24, 2^24) that bin
is [lo, hi) with hi - lo <= lo / 8, so the interpolated estimate is within 12.5 %
of the exact value (relative). In an underflow bin the error is below 2^-24
(absolute), in the zero bin below 2^-129; in an overflow bin it is unbounded (the
estimate is the bin's finite edge, 2^24 in magnitude).

Mean: from the bins, each count at its bin's midpoint (0 for the zero bin, 2^24
for overflow): error <= mean(|x|) / 16 + 2^-25 when nothing overflowed.

Cost: per counted activation, a few elementwise integer passes (``fold_keys``: raw key to
bin) and one scatter-add (``commit``). Memory: the (channels, 773) int64 counts on the
device, and three reused int32 buffers the size of a layer's counted positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BINS_VERSION = 3  # 1: every position counted; 2: a 16 x 16 grid; 3: the GRID positions (module docstring)
GRID = 6
PER_OCTAVE = 8  # 2^MANTISSA_BITS
MANTISSA_BITS = 3
MIN_EXP, MAX_EXP = -24, 24  # regular bins cover magnitudes [2^MIN_EXP, 2^MAX_EXP)
RAW = 4096  # 12-bit keys: sign, 8 exponent bits, 3 mantissa bits
SHIFT32 = 32 - 12  # float32 bits -> key
SHIFT16 = 16 - 12  # bfloat16 bits -> the same key

_REGULAR = (MAX_EXP - MIN_EXP) * PER_OCTAVE  # 384 per sign
ZERO = _REGULAR + 2  # index of the zero bin: overflow, regular bins, underflow below it
NBINS = 2 * ZERO + 1  # 773


def _magnitude_edges() -> np.ndarray:
    """Lower edges of the regular magnitude bins, then 2^MAX_EXP (length _REGULAR + 1)."""
    j = np.arange(_REGULAR)
    lo = np.ldexp(1.0 + (j % PER_OCTAVE) / PER_OCTAVE, MIN_EXP + j // PER_OCTAVE)
    return np.append(lo, np.ldexp(1.0, MAX_EXP))


@dataclass(frozen=True)
class Bins:
    """The fixed bins (module docstring): ``edges`` in value order."""

    edges: np.ndarray  # (NBINS + 1,) float64

    @property
    def count(self) -> int:
        return len(self.edges) - 1


def _make_bins() -> Bins:
    mag = _magnitude_edges()
    tiny, small = np.ldexp(1.0, -129), np.ldexp(1.0, MIN_EXP)
    # upper edges of zero, underflow, regular bins; overflow up to 2^128, beyond every finite float32
    # (finite, so plots and interpolation need no special case; the overflow bins also count inf and NaN)
    pos = np.concatenate([[tiny], mag, [np.ldexp(1.0, 128)]])
    edges = np.concatenate([-pos[::-1], pos])  # -2^128, -2^24, ..., -2^-24, -2^-129, 2^-129, 2^-24, ..., 2^24, 2^128
    edges[ZERO + 1] = tiny  # (already) zero bin is (-tiny, tiny)
    assert len(edges) == NBINS + 1 and edges[ZERO] == -tiny and edges[ZERO + 2] == small
    return Bins(edges)


BINS = _make_bins()


def _raw(out: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``out``'s bit patterns as signed integers (a view) and the shift that turns one into its
    raw key (the top 12 bits of its float32 pattern, read as a signed integer: -2048..2047)."""
    if out.dtype == torch.bfloat16:
        return out.view(torch.int16), SHIFT16
    if out.dtype != torch.float32:
        out = out.float()
    return out.view(torch.int32), SHIFT32


def fold_keys(keys: torch.Tensor, scratch: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """Bin (0..NBINS-1) of every signed raw key (``_raw``), written ``into`` an int32
    buffer; ``keys`` and ``scratch`` (same shape) are overwritten. A few elementwise integer
    passes: a look-up table (a gather) cost three times as much on CPU. tests/test_unit_stats.py
    checks every key against numpy's binning of its values.

    Magnitude key m = key & 2047 (exponent * 8 + top mantissa bits). Its offset from the
    zero bin is 0 for m = 0, 1 (underflow) below the regular bins, m - lo + 2 inside
    them, 2 + _REGULAR (overflow) above: min(clamp(m - lo + 2, 1, 2 + _REGULAR), m), as
    the clamp is <= m for every m >= 1. A negative float (key < 0) mirrors it below ZERO.
    """
    lo_key = (127 + MIN_EXP) * PER_OCTAVE
    m = torch.bitwise_and(keys, RAW // 2 - 1, out=scratch)
    offset = torch.sub(m, lo_key - 2, out=into).clamp_(1, 2 + _REGULAR)
    torch.minimum(offset, m, out=offset)
    sign = keys.bitwise_right_shift_(31)  # 0 for positive floats, -1 for negative ones
    offset.bitwise_xor_(sign).sub_(sign)  # two's complement: -offset where sign is -1
    return offset.add_(ZERO)


def on_grid(out: torch.Tensor) -> torch.Tensor:
    """The positions of (B, C, H, W) ``out`` that are counted (a view; module docstring)."""
    if out.dim() != 4:
        return out
    sh, sw = -(-out.shape[2] // GRID), -(-out.shape[3] // GRID)
    return out if sh == sw == 1 else out[:, :, ::sh, ::sw]


class UnitStats:
    """Histogram (``BINS``) and firing count per channel of one layer (module docstring).

    A batch is counted in two steps so that a failure mid-forward never leaves half a
    batch counted: ``observe(out)`` computes the bin keys of the layer output (pending),
    ``commit(maxima)`` counts them (and the images whose maximum is positive) to the
    totals, ``discard()`` drops it.
    """

    FIELDS = ("hist", "fired", "images")  # the tensors of ``state()``

    def __init__(self, channels: int, device: torch.device | str = "cpu") -> None:
        self.channels = channels
        dev = torch.device(device)
        self.hist = torch.zeros(channels, NBINS, dtype=torch.int64, device=dev)
        self.fired = torch.zeros(channels, dtype=torch.int64, device=dev)
        self.images = 0
        self._pending: tuple[torch.Tensor, int] | None = None  # (bit patterns of the grid, shift to keys)
        self._scratch: torch.Tensor | None = None
        # bin b of channel c counts at c * NBINS + b (int32: 15k channels x 773 bins fit)
        self._offset = torch.arange(channels, dtype=torch.int32, device=dev) * NBINS

    # --- streaming --------------------------------------------------------------------
    def observe(self, out: torch.Tensor) -> None:
        """Keep the grid positions of ``out`` (B, C, ...) as the pending batch: their bit
        patterns, copied into a reused buffer. Binning waits for ``commit``. Why: this runs in a
        forward hook, right after a convolution has pushed the code of every small tensor
        operation out of the CPU's caches; there each of them costs several times what it costs
        in ``commit``, which runs them for every layer in a row (and the copy is one)."""
        if out.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {tuple(out.shape)}")
        if self._pending is not None:
            raise RuntimeError("observe() twice without commit() or discard()")
        raw, shift = _raw(on_grid(out.detach()))
        keys = self._scratch_for(raw)[0]
        keys.copy_(raw)
        self._pending = (keys, shift)

    def _scratch_for(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Three int32 buffers shaped (and laid out) like ``out``, reused across batches: a fresh
        one per batch costs page faults on CPU as large as the counting itself. Made outside
        inference mode (``observe`` runs in it, ``commit`` need not), so both may write them."""
        fmt = (torch.channels_last if out.dim() == 4 and not out.is_contiguous()
               and out.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        buf = self._scratch
        if buf is None or buf.shape[1] < out.numel() or buf.device != out.device:
            with torch.inference_mode(False):
                buf = self._scratch = torch.empty(3, out.numel(), dtype=torch.int32, device=out.device)
        views = buf[:, :out.numel()]
        if fmt is torch.channels_last:
            n, c, h, w = out.shape
            return tuple(v.view(n, h, w, c).permute(0, 3, 1, 2) for v in views)
        return tuple(v.view(out.shape) for v in views)

    def commit(self, maxima: torch.Tensor) -> None:
        """Count the pending batch; ``maxima`` (B, C) are its images' spatial maxima."""
        if self._pending is not None:
            keys, shift = self._pending
            _, scratch, bins = self._scratch_for(keys)
            fold_keys(keys.bitwise_right_shift_(shift), scratch, bins)
            bins += self._offset.view(1, -1, *([1] * (keys.dim() - 2)))
            flat = bins.reshape(-1)
            ones = torch.ones(1, dtype=torch.int64, device=self.hist.device).expand(flat.numel())
            self.hist.view(-1).index_add_(0, flat, ones)
            self._pending = None
        self.fired += (maxima.detach() > 0).sum(0).to(self.fired.device)
        self.images += int(maxima.shape[0])

    def discard(self) -> None:
        self._pending = None

    def add(self, out: torch.Tensor, maxima: torch.Tensor | None = None) -> None:
        """``observe`` + ``commit`` in one (maxima default to ``out``'s spatial maxima)."""
        self.observe(out)
        self.commit(out.flatten(2).amax(2) if maxima is None else maxima)

    # --- combining --------------------------------------------------------------------
    def counts(self) -> torch.Tensor:
        """(C, NBINS) int64 totals on the device."""
        return self.hist.clone()

    def merge(self, other: "UnitStats", sign: int = 1) -> None:
        """Add (``sign`` -1: subtract) another statistic of the same layer."""
        if other.channels != self.channels:
            raise ValueError("cannot merge statistics of different channel counts")
        dev = self.hist.device
        self.hist += sign * other.hist.to(dev)
        self.fired += sign * other.fired.to(dev)
        self.images += sign * other.images

    def result(self) -> dict:
        """CPU numpy arrays: ``hist`` (C, NBINS), ``fired`` (C,), and ``images``."""
        return {"hist": self.counts().cpu().numpy(), "fired": self.fired.cpu().numpy(), "images": self.images}

    def state(self) -> dict[str, torch.Tensor]:
        """CPU copies of ``FIELDS``: ``hist`` (C, NBINS), ``fired`` (C,) int64, ``images`` (a 0-d tensor)."""
        return {"hist": self.counts().cpu(), "fired": self.fired.cpu(), "images": torch.tensor(self.images)}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str = "cpu") -> "UnitStats":
        """The statistic ``state`` describes (tensors or arrays); ``ValueError`` on a histogram of
        other bins."""
        hist = torch.as_tensor(state["hist"])
        if hist.dim() != 2 or hist.shape[1] != NBINS:
            raise ValueError(f"statistics of shape {tuple(hist.shape)}, expected (channels, {NBINS})")
        s = cls(hist.shape[0], device)
        s.hist = hist.to(s.hist.device, torch.int64).clone()
        s.fired = torch.as_tensor(state["fired"]).to(s.hist.device, torch.int64).clone()
        s.images = int(state["images"])
        return s


# --- reading: numpy functions of the stored counts ----------------------------------------

def quantile(hist: np.ndarray, q: float) -> dict[str, np.ndarray]:
    """The q-quantile of every channel of ``hist`` (C, NBINS), with its bracket.

    Returns ``value`` (estimate: linear interpolation by rank inside the bin), ``lo``
    and ``hi`` (the bin's edges: the exact empirical quantile, numpy's
    ``inverted_cdf``, lies between them; see the module docstring for the bound).
    Channels with no counts give NaN.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside [0, 1]")
    hist = np.asarray(hist, dtype=np.int64)
    n = hist.sum(1)
    rank = np.maximum(np.ceil(q * n).astype(np.int64), 1)  # 1-based rank of the quantile element
    cum = np.cumsum(hist, 1)
    b = np.minimum((cum < rank[:, None]).sum(1), NBINS - 1)
    before = np.where(b > 0, np.take_along_axis(cum, np.maximum(b - 1, 0)[:, None], 1)[:, 0], 0)
    inbin = np.take_along_axis(hist, b[:, None], 1)[:, 0]
    t = (rank - before) / np.maximum(inbin, 1)
    lo, hi = BINS.edges[b], BINS.edges[b + 1]
    with np.errstate(invalid="ignore"):  # inf - inf in the overflow bins, replaced below
        est = lo + t * (hi - lo)
    est = np.where(b == ZERO, 0.0, np.where(b == NBINS - 1, lo, np.where(b == 0, hi, est)))
    empty = n == 0
    return {k: np.where(empty, np.nan, v) for k, v in (("value", est), ("lo", lo), ("hi", hi))}


def bin_centres() -> np.ndarray:
    """Each bin's representative value: midpoint; 0 for zero, the finite edge for overflow."""
    e = BINS.edges
    mid = (e[:-1] + e[1:]) / 2
    mid[ZERO] = 0.0
    mid[0], mid[-1] = e[1], e[-2]
    return mid


def mean(hist: np.ndarray) -> np.ndarray:
    """Per-channel mean from the bins (error bound in the module docstring); NaN if empty."""
    hist = np.asarray(hist, dtype=np.int64)
    n = hist.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (hist * bin_centres()).sum(1) / n, np.nan)
