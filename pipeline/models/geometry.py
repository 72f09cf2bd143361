"""Receptive-field geometry (R, S, P) computed from the modules.

For a chain of convs/pools with kernel k, stride s, padding p and dilation d, the
unit (y, x) of a layer sees input rows ``[y*S - P, y*S - P + R - 1]`` where, walking
up from the input (R=1, S=1, P=0)::

    R += (d*(k-1)) * S;   P += p * S;   S *= s

Everything that does not move pixels (ReLU, BatchNorm, Dropout) leaves them as is.
The same recurrence, run backwards, gives the window of a unit at every lower level,
which the deconvnet uses to compute only inside the receptive field.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Step:
    """Spatial facts of one module (kernel, stride, padding, dilation, ceil_mode)."""

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


def _pair(v) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"non-square kernel/stride/padding {v} is not supported")
        return int(v[0])
    return int(v)


def step_of(m: nn.Module) -> Step | None:
    """The spatial step of a module, or None when it keeps positions unchanged."""
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str):
            raise ValueError("string padding is not supported")
        return Step(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.dilation))
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        stride = m.stride if m.stride is not None else m.kernel_size
        dil = _pair(getattr(m, "dilation", 1))
        return Step(_pair(m.kernel_size), _pair(stride), _pair(m.padding), dil, bool(m.ceil_mode))
    return None


def receptive_field(modules: list[nn.Module], end: int) -> tuple[int, int, int]:
    """(R, S, P) of the output of ``modules[end]`` with respect to the input."""
    r, s, p = 1, 1, 0
    for m in modules[: end + 1]:
        st = step_of(m)
        if st is None:
            continue
        r += (st.span - 1) * s
        p += st.padding * s
        s *= st.stride
    return r, s, p


def output_size(modules: list[nn.Module], end: int, size: int) -> int:
    """Spatial size of the output of ``modules[end]`` for a ``size`` x ``size`` input."""
    n = size
    for m in modules[: end + 1]:
        st = step_of(m)
        if st is not None:
            n = st.out_size(n)
    return n


def box(y: int, x: int, rf: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """Unclipped input box [top, left, bottom, right) of unit (y, x)."""
    top, left = y * stride - padding, x * stride - padding
    return top, left, top + rf, left + rf


def clipped_box(y: int, x: int, rf: int, stride: int, padding: int, size: int) -> tuple[int, int, int, int]:
    """The box clipped to a ``size`` x ``size`` image (bottom/right exclusive)."""
    t, l, b, r = box(y, x, rf, stride, padding)
    return max(t, 0), max(l, 0), min(b, size), min(r, size)
