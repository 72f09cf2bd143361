"""The deconvnet rectifier as an autograd function: the independent reference that the projection
tests (test_deconv, test_models, test_reconstruct) differentiate through.

Forward: the network's own ReLU (``hi``: ReLU6's cap). Backward: ReLU of the incoming signal,
whatever the forward input was (Zeiler & Fergus's rule), instead of the gradient's mask.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, hi=None):
        return x.clamp(0, hi)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0), None


def deconv_relu(x: torch.Tensor, hi: float | None = None) -> torch.Tensor:
    return DeconvReLU.apply(x, hi)


class DeconvAct(nn.Module):
    """A ReLU / ReLU6 module with the deconvnet backward."""

    def __init__(self, hi: float | None = None) -> None:
        super().__init__()
        self.hi = hi

    def forward(self, x):
        return deconv_relu(x, self.hi)


def deconv_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ReLU / ReLU6 modules have the deconvnet backward."""
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, DeconvAct(6.0))
            elif isinstance(child, nn.ReLU):
                setattr(parent, name, DeconvAct())
    return m
