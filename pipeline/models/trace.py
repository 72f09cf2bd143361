"""Find the layers of any ``nn.Module`` and their geometry by running it once on meta tensors.

A layer is the output of a named module (``layer3.1``, ``features.16``, ``inception4c``), as
torchvision's feature_extraction names it. Which modules qualify, and their geometry, comes from
one forward pass of a 1 x 3 x size x size tensor on the *meta* device (shapes only: no memory,
no arithmetic, well under a second even for ResNet-152):

* forward hooks on every module record how often it ran, the shape of its output, and the
  order in which outputs completed (mining stops after the deepest requested one);
* a ``TorchFunctionMode`` sees every torch function the forward calls (module or functional:
  ``F.relu`` inside GoogLeNet counts like ``nn.ReLU``) and carries a :class:`Geometry` along
  with each 4-D tensor: convolutions and pools apply their step, global pooling covers its
  input, decoder ops (transposed convolutions, ``F.interpolate`` nearest/bilinear as
  ``nn.Upsample`` calls it, ``PixelShuffle``/``PixelUnshuffle``) apply their :class:`Reads`
  (fractional strides: see ``models.geometry``), and any other op producing a map of its
  inputs' size gets the union of their boxes (residual adds, concatenations). Inputs of
  spatial size 1 x 1 that broadcast over a larger map (squeeze-and-excitation gates) are left
  out: counting them would make every box the whole image. 3-D maps (``x[:, 0]``) carry a
  geometry like 4-D ones; a map rebuilt from vectors alone (the decoder after a Linear
  bottleneck: flatten, Linear, unflatten) sees the whole input (:meth:`Geometry.whole`).

Only modules that run exactly once and return one (N, C, H, W) tensor with a known geometry are
layers: a module called several times (torchvision's Bottleneck reuses one ``relu``) has no
single output to rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .geometry import Geometry, Reads, Step, square


@dataclass(frozen=True)
class Traced:
    """One module output seen during the probe."""

    module: str
    kind: str  # module class name, e.g. "Conv2d", "ReLU", "BasicBlock"
    channels: int
    out_size: int  # output height (= width for square inputs)
    geometry: Geometry
    order: int  # completion order in the forward pass


_CONV = {F.conv2d, torch.conv2d}
_POOL = {F.max_pool2d, torch.max_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d, F.lp_pool2d}
_ADAPTIVE = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch._C._nn.adaptive_avg_pool2d}
_TRANSPOSED = {F.conv_transpose2d, torch.conv_transpose2d}
_SHUFFLE = {torch.pixel_shuffle, torch.pixel_unshuffle}
_ARGS = {  # positional parameter names after the input
    "conv": ("weight", "bias", "stride", "padding", "dilation", "groups"),
    "pool": ("kernel_size", "stride", "padding"),
    "transposed": ("weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
    "interpolate": ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"),
}


def _arg(args, kwargs, names, name, default):
    i = names.index(name) + 1
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _step(func, args, kwargs) -> Step:
    if func in _CONV:
        names = _ARGS["conv"]
        k = square(args[1].shape[-1] if len(args) > 1 else kwargs["weight"].shape[-1])
        dil = square(_arg(args, kwargs, names, "dilation", 1))
        pad = _arg(args, kwargs, names, "padding", 0)
        if isinstance(pad, str):
            pad = 0 if pad == "valid" else dil * (k - 1) // 2
        return Step(k, square(_arg(args, kwargs, names, "stride", 1)), square(pad), dil)
    if func is F.lp_pool2d:  # lp_pool2d(input, norm_type, kernel_size, stride)
        k = square(args[2] if len(args) > 2 else kwargs["kernel_size"])
        s = args[3] if len(args) > 3 else kwargs.get("stride")
        return Step(k, square(s) if s is not None else k, 0)
    names = _ARGS["pool"]
    k = square(_arg(args, kwargs, names, "kernel_size", None))
    s = _arg(args, kwargs, names, "stride", None)
    s = k if s is None or s == [] or s == () else square(s)
    dil = square(kwargs.get("dilation", args[4] if len(args) > 4 and func in (F.max_pool2d, torch.max_pool2d) else 1))
    return Step(k, s, square(_arg(args, kwargs, names, "padding", 0)), dil)


def _reads(func, args, kwargs, n_in: int, n_out: int) -> Reads:
    """How a decoder op's outputs read its input positions (``n_in`` -> ``n_out`` per side)."""
    if func in _TRANSPOSED:
        names = _ARGS["transposed"]
        k = square(args[1].shape[-1] if len(args) > 1 else kwargs["weight"].shape[-1])
        return Reads.transposed(k, square(_arg(args, kwargs, names, "stride", 1)),
                                square(_arg(args, kwargs, names, "padding", 0)), square(_arg(args, kwargs, names, "dilation", 1)))
    if func in _SHUFFLE:
        r = int(args[1] if len(args) > 1 else kwargs.get("upscale_factor", kwargs.get("downscale_factor")))
        if func is torch.pixel_unshuffle:
            return Reads.window(Step(r, r, 0))
        return Reads.resample(Fraction(1, r), "nearest")
    names = _ARGS["interpolate"]
    mode = _arg(args, kwargs, names, "mode", "nearest")
    if _arg(args, kwargs, names, "antialias", False):
        raise ValueError("antialiased interpolation has no box geometry")
    factor = _arg(args, kwargs, names, "scale_factor", None)
    if factor is not None and not _arg(args, kwargs, names, "recompute_scale_factor", None):
        if isinstance(factor, (tuple, list)):
            if len(set(factor)) != 1:
                raise ValueError(f"non-square scale factor {tuple(factor)} is not supported")
            factor = factor[0]
        scale = 1 / Fraction(factor)
    else:
        scale = Fraction(n_in, n_out)
    align = bool(_arg(args, kwargs, names, "align_corners", False))
    if align and mode == "bilinear":
        scale = Fraction(n_in - 1, n_out - 1) if n_out > 1 else Fraction(0)
    return Reads.resample(scale, mode, align)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class _GeometryMode(TorchFunctionMode):
    """Carries a Geometry with every 4-D tensor the forward pass creates, and 3-D ones (a map
    indexed by channel or image: GoogLeNet's ``transform_input`` rebuilds its input from
    ``x[:, 0]``, ``x[:, 1]``, ``x[:, 2]``)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.geo: dict[int, Geometry | None] = {}
        self.mixed: set[int] = set()  # other tensors computed from the input (vectors: every pixel mixed in)
        self.alive: list[torch.Tensor] = []  # keep ids unique while the probe runs

    def of(self, t: torch.Tensor) -> Geometry | None:
        return self.geo.get(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = list(_tensors((args, kwargs)))
        ins = [t for t in given if id(t) in self.geo]
        if not ins and not any(id(t) in self.mixed for t in given):
            return out  # weights, constants: nothing computed from the input
        outs = [t for t in _tensors(out) if t.dim() in (3, 4)]
        self.mixed.update(id(t) for t in _tensors(out) if t.dim() not in (3, 4))
        self.alive.extend(_tensors(out))
        if outs:
            # a map made from vectors alone (a Linear bottleneck unflattened): every unit sees every pixel
            g = self._rule(func, args, kwargs, ins, outs[0]) if ins else Geometry.whole(self.size, outs[0].shape[-1])
            for t in outs:
                self.geo[id(t)] = g
        return out

    def _rule(self, func, args, kwargs, ins, out) -> Geometry | None:
        first = self.of(ins[0])
        try:
            if func in _CONV or func in _POOL:
                return None if first is None else first.then(_step(func, args, kwargs))
            if func in _TRANSPOSED or func in _SHUFFLE or func is F.interpolate:
                if first is None or ins[0].shape[-2] != ins[0].shape[-1] or out.shape[-2] != out.shape[-1]:
                    return None
                g = first.through(_reads(func, args, kwargs, ins[0].shape[-1], out.shape[-1]))
                return g if g.rf >= 1 else None
            if func in _ADAPTIVE:
                h_in, h_out = ins[0].shape[-1], out.shape[-1]
                if first is None or ins[0].shape[-2] != ins[0].shape[-1]:
                    return None
                if h_out == h_in:
                    return first
                if h_out == 1:
                    return first.pooled(h_in)
                if h_in % h_out == 0:
                    return first.then(Step(h_in // h_out, h_in // h_out, 0))
                return None
            size = out.shape[-2:]
            same = [self.of(t) for t in ins if t.shape[-2:] == size]
            gates = [t for t in ins if t.shape[-2:] != size and t.shape[-2:] == (1, 1)]
            if not same or None in same or len(same) + len(gates) != len(ins):
                return None
            return Geometry.union(same)
        except (ValueError, TypeError, KeyError, IndexError):
            return None


def trace(model: nn.Module, size: int, channels: int = 3) -> dict[str, Traced]:
    """Qualified module path -> Traced, for every module whose output is a layer (see module doc)."""
    calls: dict[str, int] = {}
    seen: dict[str, tuple] = {}
    order = [0]
    mode = _GeometryMode(size)
    handles = []

    def hook(name):
        def record(m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                seen[name] = (type(m).__name__, out.shape, mode.of(out), order[0])
                order[0] += 1
        return record

    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_hook(hook(name)))
    meta = {k: torch.empty_like(v, device="meta")
            for k, v in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.empty(1, channels, size, size, device="meta")
    try:
        with torch.no_grad(), mode:
            mode.geo[id(x)] = Geometry()
            torch.func.functional_call(model, meta, (x,))
    except RuntimeError as e:
        raise ValueError(f"a {size} px input does not fit this network: {str(e).splitlines()[0]}") from None
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (kind, shape, geo, i) in seen.items():
        if calls[name] == 1 and geo is not None and shape[-1] == shape[-2]:
            out[name] = Traced(name, kind, int(shape[1]), int(shape[-1]), geo, i)
    return dict(sorted(out.items(), key=lambda kv: kv[1].order))
