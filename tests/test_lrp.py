"""LRP methods (``deconv.lrp``) equal LRP written out as explicit sums over (input, output) pairs.

The reference is a plain-Python loop on a small block shaped like MobileNetV2's (stride-2 first
convolution + BatchNorm + ReLU6, a second convolution + BatchNorm, a residual add, a ReLU): it
merges each BatchNorm into its convolution by hand, splits the add's relevance in proportion to
its two terms, passes relevance through the rectifiers, and applies z+ (every convolution) or
flat (the first one, for ``epsilon_plus_flat``) contribution by contribution. Nothing of
``deconv.lrp`` is used on the reference side.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.deconv.lrp import lrp_rules

EPS = 1e-6


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(4)
        with torch.no_grad():
            for m in (self.conv1, self.conv2):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
            self.conv2.bias.copy_(torch.randn(4, generator=g) * 0.1)
            for bn in (self.bn1, self.bn2):
                bn.weight.copy_(torch.rand(4, generator=g) + 0.5)
                bn.weight[0] = -bn.weight[0]  # a negative scale: merging flips that channel's weights' signs
                bn.bias.copy_(torch.randn(4, generator=g) * 0.1)
                bn.running_mean.copy_(torch.randn(4, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        self.act = nn.ReLU6()
        self.eval()

    def forward(self, x):
        h1 = self.act(self.bn1(self.conv1(x)))
        h2 = self.bn2(self.conv2(h1))
        return F.relu(h1 + h2)


def merged(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    w = conv.weight.detach().double().numpy() * a[:, None, None, None]
    b = conv.bias.detach().double().numpy() if conv.bias is not None else np.zeros(len(a))
    return w, (b - bn.running_mean.detach().double().numpy()) * a + bn.bias.detach().double().numpy()


def pairs(cin, cout, n_in, n_out, stride, pad):
    """(o, i, k): output index (co, oy, ox), in-image input index (ci, iy, ix), kernel index."""
    for co, oy, ox in itertools.product(range(cout), range(n_out), range(n_out)):
        for ci, ky, kx in itertools.product(range(cin), range(3), range(3)):
            iy, ix = oy * stride - pad + ky, ox * stride - pad + kx
            if 0 <= iy < n_in and 0 <= ix < n_in:
                yield (co, oy, ox), (ci, iy, ix), (co, ci, ky, kx)


def stab(z: float) -> float:
    return z + (EPS if z >= 0 else -EPS)


def ref_conv(x, w, b, r_out, stride, rule):
    """Relevance of the inputs of one merged convolution, contribution by contribution."""
    cin, n_in = x.shape[0], x.shape[1]
    cout, n_out = r_out.shape[0], r_out.shape[1]
    ps = list(pairs(cin, cout, n_in, n_out, stride, 1))
    z = np.zeros(r_out.shape)
    for o, i, k in ps:
        if rule == "flat":
            z[o] += 1.0
        else:
            xi, wk = x[i], w[k]
            z[o] += max(xi, 0) * max(wk, 0) + min(xi, 0) * min(wk, 0)
    if rule == "zplus":
        z += np.maximum(b, 0)[:, None, None]
    r_in = np.zeros(x.shape)
    for o, i, k in ps:
        if rule == "flat":
            share = 1.0
        else:
            xi, wk = x[i], w[k]
            share = max(xi, 0) * max(wk, 0) + min(xi, 0) * min(wk, 0)
        r_in[i] += share * r_out[o] / stab(z[o])
    return r_in


def reference(block: Block, x: torch.Tensor, unit, first_rule: str) -> np.ndarray:
    w1, b1 = merged(block.conv1, block.bn1)
    w2, b2 = merged(block.conv2, block.bn2)
    xn = x[0].double().numpy()
    h1 = block.act(block.bn1(block.conv1(x)))[0].detach().double().numpy()
    h2 = block.bn2(block.conv2(block.act(block.bn1(block.conv1(x)))))[0].detach().double().numpy()
    out = np.maximum(h1 + h2, 0)
    r = np.zeros(out.shape)
    r[unit] = out[unit]  # the entry's value at the unit; relu passes it
    s = np.vectorize(stab)(h1 + h2)
    r_h1, r_h2 = h1 * r / s, h2 * r / s  # the add, in proportion to its terms
    r_h1 = r_h1 + ref_conv(h1, w2, b2, r_h2, 1, "zplus")  # conv2 + bn2 merged; relu6 passes
    return ref_conv(xn, w1, b1, r_h1, 2, first_rule)


@pytest.mark.parametrize("method,first", [("epsilon_plus_flat", "flat"), ("excitation_backprop", "zplus")])
def test_lrp_equals_explicit_sums(method, first):
    block = Block()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        out = block(x)
    # a unit that fires, away from the border
    c = int(out[0, :, 1:3, 1:3].flatten(1).amax(1).argmax())
    yx = divmod(int(out[0, c, 1:3, 1:3].argmax()), 2)
    unit = (c, yx[0] + 1, yx[1] + 1)
    assert out[0][unit] > 0
    xx = x.clone().requires_grad_(True)
    with torch.enable_grad(), lrp_rules(method, xx):
        y = block(xx)
    seed = torch.zeros_like(y)
    seed[(0, *unit)] = y[(0, *unit)].detach()
    (got,) = torch.autograd.grad(y, xx, seed)
    want = reference(block, x, unit, first)
    np.testing.assert_allclose(got[0].double().numpy(), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert np.all(want >= -1e-12)  # z+ and flat never change the sign of relevance
    assert torch.allclose(y, block(x), atol=1e-5)  # the forward is unchanged (BatchNorm merged)


def test_lrp_conserves_relevance_without_biases():
    """With no bias anywhere the pixels' relevance sums to the unit's value (up to stabilisers)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False), nn.ReLU6(),
                        nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.ReLU(),
                        nn.Conv2d(6, 5, 1, bias=False), nn.MaxPool2d(2)).eval()
    x = torch.randn(1, 3, 16, 16).requires_grad_(True)
    for method in ("epsilon_plus_flat", "excitation_backprop"):
        with torch.enable_grad(), lrp_rules(method, x):
            y = net(x)
        seed = torch.zeros_like(y)
        idx = (0, *np.unravel_index(int(y[0].detach().abs().argmax()), y.shape[1:]))
        seed[idx] = 1.0
        (g,) = torch.autograd.grad(y, x, seed)
        assert g.sum().item() == pytest.approx(1.0, rel=1e-3), method


def test_lrp_through_mobilenet_v2():
    """On torchvision's MobileNetV2 (BatchNorm after every convolution, ReLU6, residual adds) the
    walk keeps the forward values, merges every BatchNorm, splits the adds, and gives non-negative
    relevance, the same batched as one entry at a time."""
    from pipeline.deconv import Entries, project_graph
    from pipeline.deconv.lrp import lrp_rules as rules
    from pipeline.models.hooks import hooked, run_to
    from pipeline.models.weights import load_network

    net = load_network("mobilenet_v2", "random", 32)
    for m in net.model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
    net.model.eval()
    layer = "features.4"  # inside a residual block
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    seen = {"add": 0, "bn": 0}

    class Count(rules):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.batch_norm:
                seen["bn"] += self.convs.get(id(args[0]), (None,))[0] is args[0]
            if func in (torch.Tensor.__add__, torch.add, torch.Tensor.add):
                seen["add"] += 1
            return super().__torch_function__(func, types, args, kwargs)

    got = {}
    with torch.enable_grad(), Count("epsilon_plus_flat", x.requires_grad_(True)), \
            hooked(net, [layer], lambda n, o: got.setdefault(n, o)):
        run_to(net, x)
    plain = {}
    with torch.no_grad(), hooked(net, [layer], lambda n, o: plain.setdefault(n, o)):
        run_to(net, x.detach())
    assert torch.allclose(got[layer], plain[layer], atol=1e-4)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.model.features[:5].modules())
    assert seen["bn"] == n_bn and seen["add"] >= 1
    out = plain[layer]
    c = out[:, :, 2, 2].argmax(1)
    v = out[torch.arange(2), c, 2, 2]
    y = torch.full((2,), 2)
    for method in ("epsilon_plus_flat", "excitation_backprop"):
        both = project_graph(net, layer, x.detach(), Entries(c, y, y, v), method)
        one = torch.cat([project_graph(net, layer, x.detach()[i:i + 1], Entries(c[i:i + 1], y[:1], y[:1], v[i:i + 1]), method)
                         for i in range(2)])
        assert both.min() >= -1e-9 and both.sum() > 0, method
        assert torch.allclose(both, one, rtol=1e-4, atol=1e-9), method
