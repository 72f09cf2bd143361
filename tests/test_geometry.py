"""Receptive-field geometry: the published table and the true support of a one-unit gradient.

The reference knows nothing of our tracer: the network is made "all positive" (positive conv
weights scaled by 1/fan-in, BatchNorm as identity, max-pools replaced by average pools of the
same geometry, positive input), so every input pixel that can reach a unit has a strictly
positive path to it, and the support of the unit's gradient (float64 autograd, output taken by a
plain forward hook) is exactly its receptive field clipped to the image. Layers after residual
adds (ResNet, MobileNetV2) and after concatenations (GoogLeNet, DenseNet) are included.
"""
import pytest
import torch
from torch import nn

from pipeline.models.weights import build_network, load_network

PUBLISHED_VGG16 = {"conv3_3": (40, 4, 18), "conv4_3": (92, 8, 42), "conv5_3": (196, 16, 90), "pool5": (212, 32, 90)}


def test_published_vgg16_values():
    layers = build_network("vgg16").layers
    for name, rsp in PUBLISHED_VGG16.items():
        assert layers[name].geometry.rsp == rsp, name
    assert build_network("resnet18").layers["layer2.1"].geometry.rsp == (99, 8, 49)  # DESIGN.md's check


def test_names_and_sizes():
    v19 = build_network("vgg19").layers
    assert "conv4_4" in v19 and "conv5_4" in v19 and "conv4_4" not in build_network("vgg16").layers
    assert [n for n in v19 if n.startswith("pool")] == [f"pool{i}" for i in range(1, 6)]
    assert v19["conv4_4"].channels == 512 and v19["conv4_4"].out_size == 28 and v19["pool5"].out_size == 7
    assert v19["conv4_4"].module == "features.26" and v19["pool5"].module == "features.36"
    assert sum(n.startswith("conv") for n in v19) == 16
    zf = build_network("zfnet").layers
    assert [zf[f"conv{i}"].out_size for i in range(1, 6)] == [110, 26, 13, 13, 13]  # Zeiler & Fergus Fig. 3
    assert zf["pool1"].out_size == 55 and zf["pool5"].out_size == 6
    assert build_network("alexnet").layers["conv1"].geometry.rsp == (11, 4, 2)


def positive(model: nn.Module) -> nn.Module:
    """Every path positive, geometry unchanged (see module docstring)."""
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(m, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                    ceil_mode=child.ceil_mode))
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            with torch.no_grad():
                fan_in = m.weight[0].numel()
                m.weight.uniform_(0.01, 1.0).div_(fan_in / 2)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.zero_()
                m.running_var.fill_(1 - m.eps)
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model.double().eval()


def unit_supports(model, path, size, units):
    """Per unit (y, x): (support box, pixel count) of the gradient of the sum over channels (None, 0 if empty).

    Summing the channels takes the union over them: after a concatenation each channel comes
    from one branch, and the layer's box is the union of the branches' boxes.
    """
    out = {}

    def stop(m, i, o):
        out["o"] = o
        raise StopIteration  # nothing above the layer is needed

    h = model.get_submodule(path).register_forward_hook(stop)
    inp = (torch.rand(1, 3, size, size, dtype=torch.float64) + 0.1).requires_grad_(True)
    try:
        model(inp)
    except StopIteration:
        pass
    finally:
        h.remove()
    found = []
    for y, x in units:
        (g,) = torch.autograd.grad(out["o"][0, :, y, x].sum(), inp, retain_graph=True)
        nz = (g[0].abs().sum(0) > 0).nonzero()
        if not len(nz):  # the unit reads no pixel (a transposed conv's kernel can skip outputs)
            found.append((None, 0))
            continue
        found.append(((int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1),
                      len(nz)))
    return found


CASES = [
    ("vgg16", 64, ["conv3_3", "pool3"]), ("vgg19", 96, ["conv4_4"]), ("vgg16", 224, ["conv5_3"]),
    ("alexnet", 127, ["conv1", "pool1", "conv2", "conv5"]),
    ("zfnet", 128, ["conv1", "pool1", "conv2", "conv5"]),
    ("resnet18", 96, ["maxpool", "layer1.0", "layer2.0", "layer2.1", "layer3.0.bn2"]),
    ("mobilenet_v2", 96, ["features.1", "features.3", "features.5", "features.7"]),  # 3 and 5 end in a residual add
    ("googlenet", 96, ["conv2", "maxpool2", "inception3a", "inception3b", "inception4a.branch3"]),
    ("densenet121", 64, ["features.pool0", "features.denseblock1", "features.transition1",
                         "features.denseblock2.denselayer3"]),
]


@pytest.mark.parametrize("arch,size,layers", CASES, ids=[c[0] + "-" + str(c[1]) for c in CASES])
def test_gradient_support_equals_box(arch, size, layers):
    net = load_network(arch, "random", size)
    model = positive(net.model)
    for layer in layers:
        li = net.layers[layer]
        h = li.out_size
        units = [(0, 0), (h // 2, h // 3), (h - 1, h - 1)]
        for (y, x), (got, count) in zip(units, unit_supports(model, li.module, size, units)):
            want = tuple(int(v) for v in li.geometry.boxes(y, x, size))
            assert got == want, (arch, layer, y, x, li.geometry)
            assert count == (want[2] - want[0]) * (want[3] - want[1]), "every box pixel reached, none outside"


def test_tiles_never_exceed_the_input():
    geo = build_network("resnet50").layers["layer4.2"].geometry
    assert geo.rf > 224 and geo.tile_size(224) == 224
    oy, ox = geo.tile_origin([0, 6], [3, 6], 224)
    assert oy.tolist() == [0, 0] and ox.tolist() == [0, 0]
    small = build_network("vgg16").layers["conv3_3"].geometry
    assert small.tile_size(224) == 40 and [int(v) for v in small.tile_origin(2, 5, 224)] == [2 * 4 - 18, 5 * 4 - 18]


def test_size_too_small_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        load_network("vgg16", "random", 8).select("conv5_3")


def test_googlenet_transform_input_keeps_its_layers():
    """ImageNet GoogLeNet rebuilds its input from x[:, 0], x[:, 1], x[:, 2] (3-D maps): the same layers
    and geometry as without (the tracer once lost every layer there)."""
    from torchvision.models import googlenet

    from pipeline.models.trace import trace

    plain, imagenet = (trace(googlenet(aux_logits=False, init_weights=False, transform_input=t).eval(), 96)
                       for t in (False, True))
    assert len(plain) > 100 and {n: t.geometry for n, t in imagenet.items()} == {n: t.geometry for n, t in plain.items()}
