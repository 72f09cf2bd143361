"""Deconvnet projection (Zeiler & Fergus 2014) of kept activations down to pixel space.

For one entry (channel c, position (y, x), value v of some layer) the deconvnet puts v at
(c, y, x), zeros everywhere else in the layer, and walks the module list backwards:

* ``ReLU``    -> ReLU of the signal,
* ``Conv2d``  -> ``F.conv_transpose2d`` with the forward weight exactly as it is (no bias, no
  flipped or permuted kernel: the transposed-convolution operator *is* the transpose),
* ``MaxPool2d`` -> unpooling: each pooled value goes back to the position its window's maximum
  came from (the stored switches); overlapping windows (3x3/2) add up (scatter-add),
* ``Dropout``/``Identity`` -> unchanged.

This is exactly the gradient of the unit with respect to the input in which every ReLU's
backward is replaced by ReLU of the incoming gradient, times v (tests check that against
autograd and Captum's ``Deconvolution``).

Windowed computation. The projection is zero outside the unit's receptive field, so each level
is only computed on the window that can still reach the unit: 1 x 1 at the top, and below a
module with kernel span K, stride s and padding p an output window of n positions starting at
``a`` needs the input window of ``(n - 1) * s + K`` positions starting at ``a * s - p``. At the
pixels this is the R x R tile whose origin is the unclipped box corner ``(y*S - P, x*S - P)``.
Window positions outside the real map (past the border, in the padding) are zeroed at every
level, so the tile equals the full-image projection cropped to the box (zeros where the box
leaves the image). Every entry of one layer has windows of the same size, so a batch of entries
(each with its own image's switches) is one tensor per level and one kernel launch per module:
no per-entry work and no host synchronisation inside :meth:`Deconvnet.project`.

The module list is walked generically (any stack of Conv2d / ReLU / MaxPool2d, any stride,
kernel, padding, dilation, groups): nothing here knows VGG's indices. This is the fast path for
chains (VGG, AlexNet); :mod:`.graph` projects through any network and is tested equal to it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.geometry import Geometry, Step, step_of
from .entries import Entries
from .tiles import shift_crop

__all__ = ["Deconvnet", "Level", "PackedMask", "switches_by_module"]

PASS_THROUGH = (nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class Level:
    """One module on the way down: its index, kind and sizes.

    ``in_size``/``out_size`` are the full map sizes of the module's input/output;
    ``win_in``/``win_out`` the window sizes the projection of a unit of the top layer needs.
    """

    index: int
    kind: str  # "conv", "pool", "relu", "pass"
    step: Step | None
    in_size: int
    out_size: int
    win_in: int
    win_out: int


class PackedMask:
    """A ReLU's forward mask on M images, bit-packed along its last axis as ``np.packbits`` packs it
    (the first column in the high bit): uint8 ``(M, C, H, ceil(W / 8))`` and the width W.

    The windowed walker reads only each entry's window of it (:meth:`window`, the bits of
    ``_gather_window``), so a batch never unpacks the M whole maps (VGG16 at 224 px: 12 M booleans
    per image up to conv3_3, 30 M up to conv5_3)."""

    def __init__(self, packed: torch.Tensor, width: int) -> None:
        self.packed, self.width = packed, int(width)

    def to(self, device) -> "PackedMask":
        return PackedMask(self.packed.to(device), self.width)

    def _bits(self, byte: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return (byte >> (7 - col % 8).to(torch.uint8)) & 1 == 1

    def rows(self, img: torch.Tensor) -> torch.Tensor:
        """The whole masks of the rows ``img`` (B,): bool ``(B, C, H, W)``."""
        col = torch.arange(self.width, device=self.packed.device)
        return self._bits(self.packed[img][..., col // 8], col)

    def window(self, img: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, n: int) -> torch.Tensor:
        """Each entry's n x n window, bool ``(B, C, n, n)``: ``_gather_window`` of the unpacked masks."""
        _, _, h, _ = self.packed.shape
        r = torch.arange(n, device=self.packed.device)
        ry = (oy[:, None] + r).clamp_(0, h - 1)
        rx = (ox[:, None] + r).clamp_(0, self.width - 1)
        nhwc = self.packed[img[:, None, None], :, ry[:, :, None], (rx // 8)[:, None, :]]  # (B, n, n, C)
        return self._bits(nhwc, rx[:, None, :, None]).permute(0, 3, 1, 2)


def _mask_at(m, img: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, n: int | None) -> torch.Tensor:
    """The mask ``m`` (bool (M, C, H, W) tensor or :class:`PackedMask`) of each entry: its n x n window
    at (oy, ox), or its whole map when ``n`` is None."""
    if isinstance(m, PackedMask):
        return m.rows(img) if n is None else m.window(img, oy, ox, n)
    m = m.to(img.device)
    return m[img] if n is None else _gather_window(m, img, oy, ox, n)


class Deconvnet:
    """Projects entries of any layer of a Conv2d/ReLU/MaxPool2d stack down to the input.

    ``modules`` is the forward module list (e.g. ``Network.modules``), ``input_size`` the square
    input the entries were mined at. Work happens on the device of the weights.
    """

    def __init__(self, modules: Sequence[nn.Module], input_size: int, channels_last: bool = True) -> None:
        self.modules = list(modules)
        self.channels_last = bool(channels_last)
        self.input_size = int(input_size)
        self.sizes = [self.input_size]  # sizes[i] = input size of module i; sizes[i+1] its output
        for i, m in enumerate(self.modules):
            st = self._step(i, m)
            self.sizes.append(st.out_size(self.sizes[-1]) if st is not None else self.sizes[-1])

    @property
    def device(self) -> torch.device:
        """Where the weights are: projections run there."""
        for m in self.modules:
            for p in m.parameters():
                return p.device
        return torch.device("cpu")

    @classmethod
    def from_network(cls, net, input_size: int | None = None, channels_last: bool = True) -> "Deconvnet":
        return cls(net.chain_modules(), input_size or net.input_size, channels_last)

    def _weight(self, i: int) -> torch.Tensor:
        """The forward weight of conv ``i``, exactly as it is."""
        return self.modules[i].weight

    def _layout(self, z: torch.Tensor) -> torch.Tensor:
        return z.contiguous(memory_format=torch.channels_last) if self.channels_last else z.contiguous()

    @staticmethod
    def _step(i: int, m: nn.Module) -> Step | None:
        if isinstance(m, nn.Conv2d):
            return step_of(m)
        if isinstance(m, nn.MaxPool2d):
            st = step_of(m)
            if st.dilation != 1 and st.kernel * st.kernel > 256:
                raise ValueError(f"module {i}: pooling window too large for uint8 switches")
            return st
        if isinstance(m, (nn.ReLU, *PASS_THROUGH)):
            return None
        raise NotImplementedError(
            f"module {i} ({type(m).__name__}) has no deconvnet rule; supported: Conv2d, ReLU, MaxPool2d, Dropout"
        )

    # --- geometry -------------------------------------------------------------------------
    def levels(self, end: int) -> list[Level]:
        """The modules from ``end`` down to 0 with full and window sizes, top first."""
        out: list[Level] = []
        win = 1
        for i in range(end, -1, -1):
            m = self.modules[i]
            st = self._step(i, m)
            if st is None:
                kind = "relu" if isinstance(m, nn.ReLU) else "pass"
                out.append(Level(i, kind, None, self.sizes[i], self.sizes[i + 1], win, win))
                continue
            win_in = (win - 1) * st.stride + st.span
            kind = "conv" if isinstance(m, nn.Conv2d) else "pool"
            out.append(Level(i, kind, st, self.sizes[i], self.sizes[i + 1], win_in, win))
            win = win_in
        return out

    def geometry(self, end: int) -> tuple[int, int, int]:
        """(R, S, P) of the output of module ``end``: the tile is R x R at (y*S - P, x*S - P)."""
        g = Geometry()
        for lv in reversed(self.levels(end)):
            if lv.step is not None:
                g = g.then(lv.step)
        return g.rsp

    def entry_bytes(self, end: int) -> int:
        """Rough peak memory of one entry in a windowed batch (largest level, with temporaries)."""
        ch = self._out_channels(end)
        peak = ch * 4
        for lv in self.levels(end):
            if lv.kind == "conv":
                ch = self.modules[lv.index].in_channels
            n = min(lv.win_in, lv.in_size)
            peak = max(peak, ch * n * n * 4)
        return 4 * peak

    def pool_indices(self, end: int) -> list[int]:
        """Indices of the max-pools at or below ``end`` (their switches are needed)."""
        return [i for i in range(end + 1) if isinstance(self.modules[i], nn.MaxPool2d)]

    # --- projection -----------------------------------------------------------------------
    @torch.no_grad()
    def project(self, end: int, entries: Entries, switches: Mapping[int, torch.Tensor], window: bool = True,
                masks: Mapping[int, torch.Tensor | PackedMask] | None = None) -> torch.Tensor:
        """Project a batch of B entries of the output of module ``end`` to the input.

        ``entries``: B entries (:class:`Entries`: channel, y, x, value and the image row of each).
        ``switches[i]`` for every max-pool ``i <= end``: uint8 ``(M, C, Ho, Wo)`` winner offsets
        ``dy * kernel + dx`` (see ``mining.switches.pool_offsets``) of M images; ``entries.image`` (B,)
        says which of the M rows belongs to each entry (default: entry b uses row b).

        ``masks`` (guided backpropagation): for every ReLU ``i <= end`` a bool ``(M, C, H, W)`` map
        of where it was active in the forward pass of the M images (:meth:`relu_masks`), or the same
        bit-packed (:class:`PackedMask`); the signal is then rectified *and* kept only there
        (``deconv.rules``' guided rule).

        Returns float32 ``(B, C_in, R, R)`` tiles at the unclipped boxes when ``window`` is
        true, else the full ``(B, C_in, H, W)`` input-sized projections. Channels are in the
        network's input order (BGR for caffe weights; render turns them into RGB).
        """
        e = entries.on(self.device)
        sw = {i: switches[i] for i in self.pool_indices(end) if i in switches}
        missing = [i for i in self.pool_indices(end) if i not in sw]
        if missing:
            raise ValueError(f"switches of max-pool module(s) {missing} are needed to project module {end}")
        if window:
            return self._walk_window(end, e, sw, masks)
        levels = self.levels(end)
        z = torch.zeros(len(e), self._out_channels(end), levels[0].out_size, levels[0].out_size, device=self.device)
        z[torch.arange(len(e), device=self.device), e.channel, e.y, e.x] = e.value
        for lv in levels:
            if lv.kind == "relu":
                z = z.relu_()
                if masks is not None:
                    z = z * _mask_at(masks[lv.index], e.image, e.y, e.x, None)
            elif lv.kind != "pass":
                z = self._full_step(lv, z, sw, e.image)
        return z.contiguous()

    def _walk_window(self, end: int, e: Entries, sw: Mapping[int, torch.Tensor], masks) -> torch.Tensor:
        """The windowed walk (module doc): each level only on the window that can still reach the unit."""
        dev, img, levels = self.device, e.image, self.levels(end)
        z = torch.zeros(len(e), self._out_channels(end), 1, 1, device=dev)
        z[torch.arange(len(e), device=dev), e.channel, 0, 0] = e.value
        oy, ox = e.y, e.x  # origin of the receptive-field window at the current level
        full = False  # once a window covers its whole map, continue on full maps
        for lv in levels:
            if lv.kind == "relu":
                z = z.relu_()
                if masks is not None:
                    z = z * _mask_at(masks[lv.index], img, oy, ox, None if full else lv.win_out)
            elif lv.kind == "pass":
                continue
            elif full:
                z = self._full_step(lv, z, sw, img)
                oy, ox = oy * lv.step.stride - lv.step.padding, ox * lv.step.stride - lv.step.padding
            else:
                st = lv.step
                if lv.kind == "conv":
                    m = self.modules[lv.index]
                    z = F.conv_transpose2d(self._layout(z), self._weight(lv.index), None, stride=st.stride,
                                           padding=0, groups=m.groups, dilation=st.dilation)
                else:
                    off = _gather_window(sw[lv.index].to(dev), img, oy, ox, lv.win_out)
                    z = _unpool(z, off, st, lv.win_in, shift=0)
                oy, ox = oy * st.stride - st.padding, ox * st.stride - st.padding
                if lv.win_in >= lv.in_size:
                    z = shift_crop(z, -oy, -ox, lv.in_size)  # the map inside the window
                    full = True
                elif lv.kind == "conv":
                    z = z.mul_(_valid(oy, ox, lv.win_in, lv.in_size))  # drop what fell off the map
        if full:  # the R x R tile at the unclipped box corner, zeros off the image
            z = shift_crop(z, oy, ox, levels[-1].win_in)
        return z.contiguous()

    @torch.no_grad()
    def relu_masks(self, x: torch.Tensor, end: int) -> dict[int, torch.Tensor]:
        """Where each ReLU up to module ``end`` was active (output > 0) on inputs ``x`` (M, C, H, W):
        the forward masks guided backpropagation needs, one forward pass per image whatever the
        number of entries."""
        out: dict[int, torch.Tensor] = {}
        for i, m in enumerate(self.modules[:end + 1]):
            x = m(x)
            if isinstance(m, nn.ReLU):
                out[i] = x > 0
        return out

    def _full_step(self, lv: Level, z: torch.Tensor, sw: Mapping[int, torch.Tensor], img: torch.Tensor) -> torch.Tensor:
        """One conv/pool step on whole maps: output map (lv.out_size) -> input map (lv.in_size)."""
        st = lv.step
        if lv.kind == "conv":
            m = self.modules[lv.index]
            natural = (lv.out_size - 1) * st.stride - 2 * st.padding + st.span
            return F.conv_transpose2d(self._layout(z), self._weight(lv.index), None, stride=st.stride,
                                      padding=st.padding,
                                      output_padding=lv.in_size - natural, groups=m.groups, dilation=st.dilation)
        off = sw[lv.index].to(self.device)[img]
        return _unpool(z, off, st, lv.in_size, shift=-st.padding)

    def _out_channels(self, end: int) -> int:
        for i in range(end, -1, -1):
            if isinstance(self.modules[i], nn.Conv2d):
                return self.modules[i].out_channels
        for m in self.modules:
            if isinstance(m, nn.Conv2d):
                return m.in_channels
        raise ValueError("no Conv2d in the module list: cannot tell the channel count")


def _valid(oy: torch.Tensor, ox: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """(B, 1, n, n) mask of the window positions that lie on a ``size`` x ``size`` map."""
    r = torch.arange(n, device=oy.device)
    vy = ((oy[:, None] + r) >= 0) & ((oy[:, None] + r) < size)
    vx = ((ox[:, None] + r) >= 0) & ((ox[:, None] + r) < size)
    return (vy[:, None, :, None] & vx[:, None, None, :]).to(torch.float32)


def _gather_window(sw: torch.Tensor, img: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, n: int) -> torch.Tensor:
    """Switches of each entry's n x n window (origin oy/ox in pooled coordinates), (B, C, n, n).

    Returned as a channels-last view (only B*n*n indices are built, the channels come along as
    a slice). Positions outside the map are clamped to the border: their offsets are meaningless,
    but the signal there is zero, so they only ever move zeros around inside the window.
    """
    _, _, ho, wo = sw.shape
    r = torch.arange(n, device=sw.device)
    ry = (oy[:, None] + r).clamp_(0, ho - 1)
    rx = (ox[:, None] + r).clamp_(0, wo - 1)
    nhwc = sw[img[:, None, None], :, ry[:, :, None], rx[:, None, :]]  # (B, n, n, C)
    return nhwc.permute(0, 3, 1, 2)


def _unpool(z: torch.Tensor, off: torch.Tensor, st: Step, n_in: int, shift: int) -> torch.Tensor:
    """Send each pooled value to its switch: output (B, C, n_in, n_in).

    Pooled position o goes to input row ``o * stride + dy * dilation + shift`` (``shift`` = 0
    for a window whose origin already includes the padding, ``-padding`` for full maps).
    Overlapping windows that picked the same input position add up.
    """
    b, ch, n, _ = z.shape
    k, s, d = st.kernel, st.stride, st.dilation
    if s == k and d == 1 and shift == 0 and n * k <= n_in:
        # Non-overlapping windows: compare the offsets with every (dy, dx) straight into the
        # layout of the unpooled map; no index tensor, one pass over the output. Computed in
        # (B, H, W, C) order, so the result is channels-last, like the convolutions want it.
        zh, oh = z.permute(0, 2, 3, 1), off.permute(0, 2, 3, 1)
        ar = torch.arange(k * k, device=z.device, dtype=off.dtype).view(1, 1, k, 1, k, 1)
        hit = oh[:, :, None, :, None, :] == ar
        out = z.new_empty(b, n, k, n, k, ch)
        torch.where(hit, zh[:, :, None, :, None, :], z.new_zeros(()), out=out)
        out = out.view(b, n * k, n * k, ch).permute(0, 3, 1, 2)
        pad = n_in - n * k
        return F.pad(out, (0, pad, 0, pad)) if pad else out
    o = torch.arange(n, device=z.device)
    offl = off.long()
    row = o.view(1, 1, n, 1) * s + (offl // k) * d + shift
    col = o.view(1, 1, 1, n) * s + (offl % k) * d + shift
    idx = (row * n_in + col).reshape(b, ch, n * n)
    out = torch.zeros(b, ch, n_in * n_in, device=z.device, dtype=z.dtype)
    out.scatter_add_(2, idx, z.reshape(b, ch, n * n))  # overlapping windows add up
    return out.reshape(b, ch, n_in, n_in)


def switches_by_module(net, switches: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Re-key switches from pool layer names (as in a store) to indices in the network's chain."""
    return {net.chain_index(name): t for name, t in switches.items()}
