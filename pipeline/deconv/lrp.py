"""Layer-wise relevance propagation (LRP) as backward rules: ``epsilon_plus_flat`` and ``excitation_backprop``.

The walk down from a unit is the same autograd walk as the other methods (:mod:`.graph`); what
flows down is *relevance* instead of a gradient, and each linear layer hands the relevance ``R`` of
its outputs to its inputs in proportion to their contributions (Bach et al. 2015, Montavon et al.
2017). Names and rules as zennit's composite registry has them (the rules of zennit-crp's reference
images):

* ``epsilon_plus_flat``: z+ (alpha1-beta0) at every convolution, epsilon at dense layers, the flat
  rule at the first layer (the one that reads the image);
* ``excitation_backprop`` (Zhang et al. 2016): z+ at every convolution and dense layer, the first
  included.

The rules, for a layer ``z_j = sum_i x_i w_ij + b_j`` and ``s_j = R_j / stab(z'_j)``:

* z+: ``z'_j = sum_i x_i^+ w_ij^+ + x_i^- w_ij^- + b_j^+`` and ``R_i = x_i^+ (W^+ s)_i + x_i^- (W^- s)_i``:
  only the contributions that push the unit up carry relevance (negative inputs through negative
  weights included, as zennit's ZPlus has it), so relevance never changes sign;
* flat: every weight 1, every input 1, no bias: ``R_i = (1 s)_i`` with ``z'_j`` the number of
  inputs in the window: the relevance of a first-layer unit spread evenly over its window;
* epsilon (dense layers, eval-mode BatchNorm not after a convolution, average pools: "Norm"):
  ``z'_j = z_j`` and ``R_i = x_i (W s)_i``;
* residual adds ``a + b`` split ``R`` in proportion to ``a`` and ``b`` (zennit's Norm on a Sum);
* rectifiers (ReLU, ReLU6) pass relevance unchanged; max-pools send it to the winner (their
  gradient); concatenations split it (their gradient).

``stab(z) = z + 1e-6 sign(z)`` (sign(0) = 1). Canonisation: an eval-mode BatchNorm applied to a
convolution's output is merged into that convolution (``w' = a w``, ``b' = a (b - mean) + beta``,
``a = gamma / sqrt(var + eps)``) before the rule sees it, as zennit's ``MergeBatchNorm`` does: the
BatchNorm call returns the merged convolution of the convolution's input, so the unmerged one drops
out of the walk.

Like :mod:`.rules` this is a ``TorchFunctionMode``: it sees ``F.conv2d``, ``F.linear``,
``F.batch_norm``, pools, rectifiers and tensor additions whether a module or a ``forward`` makes
them. Relevance of an entry ``(c, y, x, v)`` starts as ``v`` at the unit and is conserved down to
the pixels up to what biases and stabilisers absorb. It is an attribution heatmap (where the
unit's evidence is, how much), not a reconstruction of the pattern: with the flat first layer the
three colour channels are equal.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input
from torch.overrides import TorchFunctionMode

from .rules import rectifier_bounds  # the same rectifiers the other methods rewrite

LRP_METHODS = ("epsilon_plus_flat", "excitation_backprop")
EPS = 1e-6

_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__,
        torch.Tensor.add_}
_AVG = {F.avg_pool2d, F.adaptive_avg_pool2d, torch._C._nn.avg_pool2d, torch._C._nn.adaptive_avg_pool2d}


def stab(z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``z + eps * sign(z)`` with sign(0) = 1: a denominator that is never zero."""
    return z + torch.where(z >= 0, eps, -eps)


def _conv(x, w, b, p):
    return F.conv2d(x, w, b, p["stride"], p["padding"], p["dilation"], p["groups"])


def _conv_t(shape, w, s, p):
    """The transpose of the convolution (input gradient) applied to ``s``."""
    return conv2d_input(shape, w, s, p["stride"], p["padding"], p["dilation"], p["groups"])


def zplus_conv(x, w, b, p, r):
    """z+ (alpha1-beta0) relevance of the inputs of a convolution; ``r`` the outputs' relevance."""
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    z = _conv(xp, wp, None if b is None else b.clamp(min=0), p) + _conv(xn, wn, None, p)
    s = r / stab(z)
    return xp * _conv_t(x.shape, wp, s, p) + xn * _conv_t(x.shape, wn, s, p)


def flat_conv(x, w, b, p, r):
    """Flat relevance: each output's relevance spread evenly over the inputs of its window."""
    ones = torch.ones_like(w)
    z = _conv(torch.ones_like(x), ones, None, p)
    return _conv_t(x.shape, ones, r / stab(z), p)


def epsilon(fn, x, r):
    """Epsilon rule of any linear (affine) map ``fn``: ``R_i = x_i (J^T (r / stab(fn(x))))_i``."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        z = fn(xx)
        (g,) = torch.autograd.grad(z, xx, r / stab(z.detach()))
    return x * g


class _Relevance(torch.autograd.Function):
    """``compute()`` forward (the layer's ordinary output); backward: ``rule(r)``, the relevance of ``x``."""

    @staticmethod
    def forward(ctx, x, compute, rule):
        ctx.rule = rule
        return compute()

    @staticmethod
    def backward(ctx, r):
        return ctx.rule(r), None, None


class _Pass(torch.autograd.Function):
    """clamp(x, lo, hi) forward; backward: relevance passes unchanged."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        return x.clamp(lo, None if math.isinf(hi) else hi)

    @staticmethod
    def backward(ctx, r):
        return r, None, None


class _Sum(torch.autograd.Function):
    """a + b forward; backward: r split in proportion to a and b."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx, r):
        a, b = ctx.saved_tensors
        s = r / stab(a + b)
        return a * s, b * s


def _conv_params(args, kwargs) -> dict:
    names = ("stride", "padding", "dilation", "groups")
    defaults = (1, 0, 1, 1)
    return {n: (args[3 + i] if len(args) > 3 + i else kwargs.get(n, d)) for i, (n, d) in enumerate(zip(names, defaults))}


class lrp_rules(TorchFunctionMode):
    """Within ``with lrp_rules(method, image):`` the forward builds the LRP walk of ``method``;
    ``image`` is the input tensor (the first layer is the convolution that reads it)."""

    def __init__(self, method: str, image: torch.Tensor) -> None:
        if method not in LRP_METHODS:
            raise ValueError(f"unknown LRP method {method!r}; use one of: {', '.join(LRP_METHODS)}")
        super().__init__()
        self.method, self.image = method, image
        self.convs: dict[int, tuple] = {}  # id(output) -> (output, x, w, b, params): for merging a BatchNorm

    def _conv_rule(self, x, w, b, p, first):
        if first and self.method == "epsilon_plus_flat":
            return lambda r: flat_conv(x, w, b, p, r)
        return lambda r: zplus_conv(x, w, b, p, r)

    def _conv_node(self, x, w, b, p):
        xd, wd, bd = x.detach(), w.detach(), None if b is None else b.detach()
        y = _Relevance.apply(x, lambda: _conv(xd, wd, bd, p), self._conv_rule(xd, wd, bd, p, x is self.image))
        self.convs[id(y)] = (y, x, wd, bd, p)
        return y

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, torch.conv2d) and args[0].dim() == 4:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            p = _conv_params(args, kwargs)
            if isinstance(p["padding"], str):
                return func(*args, **kwargs)  # 'same'/'valid' padding: not rewritten (gradient)
            return self._conv_node(x, w, b, p)
        if func in (F.batch_norm, torch.batch_norm):
            return self._batch_norm(func, args, kwargs)
        if func is F.linear:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            xd, wd, bd = x.detach(), w.detach(), None if b is None else b.detach()
            if self.method == "excitation_backprop":
                rule = lambda r: _zplus_linear(xd, wd, bd, r)
            else:
                rule = lambda r: epsilon(lambda t: F.linear(t, wd, bd), xd, r)
            return _Relevance.apply(x, lambda: F.linear(xd, wd, bd), rule)
        if func in _AVG:
            x = args[0]
            rest = args[1:]
            xd = x.detach()
            pool = lambda t: func(t, *rest, **kwargs)
            return _Relevance.apply(x, lambda: pool(xd), lambda r: epsilon(pool, xd, r))
        if func in _ADD and len(args) == 2 and not kwargs and all(torch.is_tensor(a) for a in args) \
                and args[0].shape == args[1].shape and args[0].is_floating_point():
            return _Sum.apply(args[0], args[1])
        bnd = rectifier_bounds(func, args, kwargs)
        if bnd is not None:
            return _Pass.apply(args[0], bnd[0], bnd[1])
        return func(*args, **kwargs)

    def _batch_norm(self, func, args, kwargs):
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        a = dict(zip(names, args))
        a.update(kwargs)
        x = a["input"]
        if a.get("training") or a["running_mean"] is None:
            return func(*args, **kwargs)
        scale = torch.rsqrt(a["running_var"].detach() + a.get("eps", 1e-5))
        if a.get("weight") is not None:
            scale = scale * a["weight"].detach()
        shift = -a["running_mean"].detach() * scale
        if a.get("bias") is not None:
            shift = shift + a["bias"].detach()
        conv = self.convs.pop(id(x), None)
        if conv is not None and conv[0] is x:  # canonise: merge into the convolution that made x
            _, cx, w, b, p = conv
            merged_w = w * scale.view(-1, *[1] * (w.dim() - 1))
            merged_b = shift if b is None else b * scale + shift
            return self._conv_node(cx, merged_w, merged_b, p)
        view = (1, -1) + (1,) * (x.dim() - 2)
        xd = x.detach()
        affine = lambda t: t * scale.view(view) + shift.view(view)
        return _Relevance.apply(x, lambda: affine(xd), lambda r: epsilon(affine, xd, r))


def _zplus_linear(x, w, b, r):
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    z = F.linear(xp, wp, None if b is None else b.clamp(min=0)) + F.linear(xn, wn)
    s = r / stab(z)
    return xp * (s @ wp) + xn * (s @ wn)
