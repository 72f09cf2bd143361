"""Receptive-field geometry: the published table and the true support of a gradient."""
import copy

import pytest
import torch
from torch import nn

from pipeline.models.network import Network
from pipeline.models.vgg import build_features

PUBLISHED_VGG16 = {"conv3_3": (40, 4, 18), "conv4_3": (92, 8, 42), "conv5_3": (196, 16, 90), "pool5": (212, 32, 90)}


def net(arch, size=224):
    return Network(arch, build_features(arch), "none", "", "torchvision", size)


def test_published_vgg16_values():
    layers = net("vgg16").layers
    for name, rsp in PUBLISHED_VGG16.items():
        li = layers[name]
        assert (li.rf, li.stride, li.padding) == rsp, name


def test_names_and_sizes():
    v19 = net("vgg19").layers
    assert "conv4_4" in v19 and "conv5_4" in v19 and "conv4_4" not in net("vgg16").layers
    assert [n for n in v19 if n.startswith("pool")] == [f"pool{i}" for i in range(1, 6)]
    assert v19["conv4_4"].channels == 512 and v19["conv4_4"].out_size == 28 and v19["pool5"].out_size == 7
    assert sum(n.startswith("conv") for n in v19) == 16


def support_net(arch, size):
    """Positive weights, avg-pools with the max-pools' geometry: every input pixel in the
    receptive field then has a strictly positive path to the unit."""
    f = copy.deepcopy(build_features(arch))
    mods = []
    for m in f:
        if isinstance(m, nn.MaxPool2d):
            m = nn.AvgPool2d(m.kernel_size, m.stride, m.padding)
        if isinstance(m, nn.Conv2d):
            with torch.no_grad():
                m.weight.uniform_(0.01, 1.0)
                m.bias.zero_()
        mods.append(m)
    return nn.Sequential(*mods).double()


@pytest.mark.parametrize("arch,layer,size", [("vgg16", "conv3_3", 64), ("vgg16", "pool3", 64),
                                             ("vgg19", "conv4_4", 96), ("vgg16", "conv5_3", 224)])
def test_gradient_support_equals_box(arch, layer, size):
    n = net(arch, size)
    li = n.layers[layer]
    seq = support_net(arch, size)[: li.end + 1]
    h = li.out_size
    for y, x in [(0, 0), (h // 2, h // 3), (h - 1, h - 1)]:
        inp = torch.rand(1, 3, size, size, dtype=torch.float64) + 0.1
        inp.requires_grad_(True)
        seq(inp)[0, 0, y, x].backward()
        nz = (inp.grad[0].abs().sum(0) > 0).nonzero()
        top, left = y * li.stride - li.padding, x * li.stride - li.padding
        want = (max(top, 0), max(left, 0), min(top + li.rf, size), min(left + li.rf, size))
        got = (int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)
        assert got == want, (layer, y, x)
        # every pixel of the box is reached, none outside it
        assert len(nz) == (want[2] - want[0]) * (want[3] - want[1])


def test_flat_style_names_alexnet_like():
    """Strided convs and overlapping 3x3/2 pools (ZFNet/AlexNet-like) are named and measured generically."""
    f = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
                      nn.Conv2d(8, 8, 5, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    n = Network("zf", f, "none", "", "torchvision", 224, style="flat")
    assert list(n.layers) == ["conv1", "pool1", "conv2", "pool2"]
    assert (n.layers["conv1"].rf, n.layers["conv1"].stride, n.layers["conv1"].padding) == (7, 2, 1)
    assert (n.layers["pool1"].rf, n.layers["pool1"].stride, n.layers["pool1"].padding) == (11, 4, 3)
    assert n.layers["conv2"].rf == 11 + 4 * 4 and n.layers["conv2"].stride == 8
    x = torch.zeros(1, 3, 224, 224)
    assert f[:3](x).shape[-1] == n.layers["pool1"].out_size
    assert f(x).shape[-1] == n.layers["pool2"].out_size
