"""Backward rules of ReLU-family activations: deconvnet, guided backprop, plain gradient.

The three methods are the same backward walk through a network and differ only in what a
rectifier does to the signal coming down (Springenberg et al. 2015, Fig. 1):

* ``deconvnet`` (Zeiler & Fergus): ReLU of the signal, whatever the forward input was;
* ``guided``: ReLU of the signal *and* the forward mask (only where the unit was active);
* ``gradient``: the forward mask only (ordinary backprop; a saliency map).

Everything else keeps its ordinary backward: convolutions (any stride, groups, dilation) and
the linear parts (eval-mode BatchNorm, average pools) pass the signal through their transpose
without bias, max-pools route it to their switches, adds and concatenations split it. Decoder
layers need no rule either: a transposed convolution's transpose is the convolution with the same
weights, an upsampling's (nearest, bilinear) sums what each input position fed, a PixelShuffle's
is the inverse permutation; autograd's backward of each is exactly that (tests/test_decoder.py).
Activations with no deconvnet rule (SiLU, Hardswish, GELU, sigmoid gates) use their local
derivative.

:func:`rectifier_rules` installs the rule as a ``TorchFunctionMode``: it sees every call of
``F.relu``, ``torch.relu``, ``Tensor.relu`` (and their in-place forms), ``F.relu6`` and
``F.hardtanh`` with a lower bound of 0 (``nn.ReLU6``), whether made by a module or inside a
``forward`` (torchvision's GoogLeNet and DenseNet call ``F.relu``), which module hooks such as
Captum's miss. Rectifiers are computed out of place under the rule, so nothing a backward needs
is overwritten by an in-place ReLU.

One more rule serves optimisation rather than projection (``mine visualize``): ``redirected``
(Lucid's redirected ReLU gradient) is the ordinary gradient, except in a batch row where that is
zero everywhere (a unit silent on the whole image); there the signal passes wherever a descent step
would not push the input further outside the rectifier's range, so a silent unit can start to fire.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

METHODS = ("deconvnet", "guided", "gradient", "epsilon_plus_flat", "excitation_backprop")  # the last two: .lrp
DEFAULT_METHOD = "auto"  # what `mine render` shows unless told otherwise (docs/rendering.md: "Which projection")
AUTO_STRIDED = "excitation_backprop"  # "auto" where the first layer is strided (see auto_method)


def auto_method(first_stride: int) -> str:
    """What ``auto`` means for a model whose first layer has stride ``first_stride``: guided
    backpropagation where it is 1 (VGG: edges with colour fringes, high-frequency share 0.25-0.33),
    excitation backprop (``.lrp``) where the stem is strided (MobileNetV2, ResNet, AlexNet), where
    every gradient-based rule stays broadband noise even shift-averaged (MobileNetV2 features.11:
    guided 0.83, gradient 0.71; excitation backprop 0.13; docs/rendering.md)."""
    return "guided" if first_stride <= 1 else AUTO_STRIDED
OPTIMISATION_RULES = ("redirected",)  # not a projection method: for optimising an input (visualize)

_RELU = {F.relu, torch.relu, torch.relu_, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_HARDTANH = {F.hardtanh, F.hardtanh_, torch._C._nn.hardtanh, torch._C._nn.hardtanh_}


class _Rectify(torch.autograd.Function):
    """clamp(x, lo, hi) forward; backward by ``method`` (deconvnet or guided)."""

    @staticmethod
    def forward(ctx, x, lo, hi, guided):
        ctx.lo, ctx.hi, ctx.guided = lo, hi, guided
        if guided:
            ctx.save_for_backward(x)
        return x.clamp(lo, None if math.isinf(hi) else hi)

    @staticmethod
    def backward(ctx, g):
        out = g.clamp(min=0)
        if ctx.guided:
            (x,) = ctx.saved_tensors
            out = out * ((x > ctx.lo) & (x < ctx.hi))
        return out, None, None, None


class _Redirect(torch.autograd.Function):
    """clamp(x, lo, hi) forward; backward: the ordinary gradient, or, in a batch row where it is zero
    everywhere, the signal ``g`` except where a descent step (x moves by -g) would push x further out."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, None if math.isinf(hi) else hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        plain = g * ((x > ctx.lo) & (x < ctx.hi))
        redirected = g * ~(((x <= ctx.lo) & (g > 0)) | ((x >= ctx.hi) & (g < 0)))
        silent = plain.eq(0).all() if g.dim() < 2 else plain.flatten(1).eq(0).all(1).view(-1, *[1] * (g.dim() - 1))
        return torch.where(silent, redirected, plain), None, None


def rectifier_bounds(func, args, kwargs) -> tuple[float, float] | None:
    """(lo, hi) of a ReLU-family call, None for anything else."""
    if func in _RELU:
        return 0.0, math.inf
    if func is F.relu6:
        return 0.0, 6.0
    if func in _HARDTANH:
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return (float(lo), float(hi)) if lo == 0 else None
    return None


class rectifier_rules(TorchFunctionMode):
    """Within ``with rectifier_rules(method):`` every ReLU-family call follows ``method``."""

    def __init__(self, method: str = "deconvnet") -> None:
        if method not in METHODS[:3] + OPTIMISATION_RULES:
            raise ValueError(f"unknown method {method!r}; use one of: {', '.join(METHODS)}")
        super().__init__()
        self.method = method

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.method != "gradient":
            b = rectifier_bounds(func, args, kwargs)
            if b is not None and self.method in OPTIMISATION_RULES:
                return _Redirect.apply(args[0], b[0], b[1])
            if b is not None:
                return _Rectify.apply(args[0], b[0], b[1], self.method == "guided")
        return func(*args, **kwargs)
