"""Guided backprop and gradient projections equal Captum's GuidedBackprop / Saliency, times the value.

Captum is the independent reference: its module hooks on ``nn.ReLU`` (made out of place in a copy
of the model) against our ``TorchFunctionMode`` rules. Checked on VGG16 and ResNet-18 layers,
batched and one entry at a time through ``deconv.graph``, and through the ``Renderer``'s tiles
(the receptive-field window cut from the full projection) of stores mined here.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path

import captum.attr as captum  # a test dependency (pyproject [test])
import numpy as np
import pytest
import torch
from torch import nn

from pipeline import RunConfig, Store, run
from pipeline.deconv import METHODS, Entries, auto_method, project_graph
from pipeline.models.geometry import pad_crop
from pipeline.models.weights import load_network
from pipeline.render import Renderer, load_store_network

SIZE = 64
CAPTUM = {"guided": "GuidedBackprop", "gradient": "Saliency"}


class UpTo(nn.Module):
    """The network up to ``layer`` (out-of-place ReLUs), flattened: Captum's target is one unit."""

    def __init__(self, net, layer: str) -> None:
        super().__init__()
        self.model = copy.deepcopy(net.model).eval()
        for m in self.model.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.module = self.model.get_submodule(net.layers[layer].module)

    def forward(self, x):
        got = []

        def stop(_m, _i, out):
            got.append(out)
            raise StopIteration  # nothing above the layer is needed

        h = self.module.register_forward_hook(stop)
        try:
            self.model(x)
        except StopIteration:
            pass
        finally:
            h.remove()
        return got[0].flatten(1)


_UP_TO: dict = {}


def up_to(net, layer: str) -> UpTo:
    key = (id(net), layer)
    if key not in _UP_TO:
        _UP_TO[key] = UpTo(net, layer)
    return _UP_TO[key]


def reference(net, layer: str, method: str, x, c, y, xx, value, batched: bool = True) -> torch.Tensor:
    """Captum's attribution of each entry's unit, times its value: all entries in one batch (one
    target per row), or one entry at a time.

    Both sides are compared at the same batch size: a convolution over a batch may round
    differently from the same convolution over one image, and where a pre-activation is within
    rounding of zero that flips a ReLU's forward mask, which the gradient and guided rules use.
    """
    n = net.layers[layer].out_size
    algo = getattr(captum, CAPTUM[method])(up_to(net, layer))
    kw = {"abs": False} if method == "gradient" else {}
    targets = [int(c[i] * n * n + y[i] * n + xx[i]) for i in range(len(c))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if batched:
            out = algo.attribute(x.clone().requires_grad_(True), target=targets, **kw)
        else:
            out = torch.cat([algo.attribute(x[i:i + 1].clone().requires_grad_(True), target=t, **kw)
                             for i, t in enumerate(targets)])
    return out.detach() * torch.as_tensor(value, dtype=torch.float32).view(-1, 1, 1, 1)


def units(net, layer: str, x: torch.Tensor, seed: int):
    """(channel, y, x, value) per image: a random channel at its arg-max, the first entry at a corner."""
    g = torch.Generator().manual_seed(seed)
    got = up_to(net, layer)(x).detach().view(len(x), net.layers[layer].channels, -1)
    c = torch.randint(0, got.shape[1], (len(x),), generator=g)
    pos = got[torch.arange(len(x)), c].argmax(1)
    pos[0] = 0
    n = net.layers[layer].out_size
    y, xx = pos // n, pos % n
    return c, y, xx, got[torch.arange(len(x)), c, pos]


def close(a, b, rtol=2e-5) -> bool:
    scale = b.abs().max().clamp_min(1e-30)
    return float((a - b).abs().max() / scale) <= rtol


@pytest.fixture(scope="module")
def nets():
    return {"vgg16": load_network("vgg16", "random", SIZE), "resnet18": load_network("resnet18", "random", SIZE)}


@pytest.mark.parametrize("method", ["guided", "gradient"])
@pytest.mark.parametrize("arch,layer", [("vgg16", "conv2_2"), ("vgg16", "conv4_1"), ("resnet18", "layer1.1"),
                                        ("resnet18", "layer2.1")])
def test_graph_projection_equals_captum(nets, arch, layer, method):
    net = nets[arch]
    torch.manual_seed(len(layer))
    x = torch.randn(3, 3, SIZE, SIZE)
    c, y, xx, v = units(net, layer, x, seed=len(arch))
    assert (v > 0).any()
    ref = reference(net, layer, method, x, c, y, xx, v)
    ref_one = reference(net, layer, method, x, c, y, xx, v, batched=False)
    batched = project_graph(net, layer, x, Entries(c, y, xx, v), method)
    one = torch.cat([project_graph(net, layer, x[i:i + 1], Entries(c[i:i + 1], y[i:i + 1], xx[i:i + 1], v[i:i + 1]),
                                   method)
                     for i in range(len(c))])
    assert ref.abs().max() > 0
    assert close(batched, ref), f"{arch} {layer} {method}: batched projection != Captum"
    assert close(one, ref_one), f"{arch} {layer} {method}: one-at-a-time projection != Captum"


def test_methods_differ(nets):
    """The three rules are not the same function (guards against a rule that is silently ignored)."""
    net = nets["vgg16"]
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    c, y, xx, v = units(net, "conv3_1", x, 0)
    got = {m: project_graph(net, "conv3_1", x, Entries(c, y, xx, v), m) for m in METHODS}
    for a, b in itertools.combinations(METHODS, 2):
        assert not torch.allclose(got[a], got[b]), (a, b)


def test_auto_method_follows_the_first_layers_stride():
    """``--method auto``: guided on a stride-1 first layer (VGG), excitation backprop on a strided stem."""
    assert auto_method(1) == "guided" and auto_method(2) == auto_method(4) == "excitation_backprop"
    first = {a: min(load_network(a, "random", 32).layers.values(), key=lambda li: li.order).geometry.stride
             for a in ("vgg16", "mobilenet_v2")}
    assert first == {"vgg16": 1, "mobilenet_v2": 2}


def mine(tmp: Path, model: str, layer: str) -> Path:
    folder = tmp / "images"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    from PIL import Image

    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (SIZE + 8, SIZE, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = RunConfig(images=str(folder), layer=layer, model=model, weights="random", size=SIZE, workers=0, k=3,
                    batch_size=4, out=str(tmp / f"{model}.h5"), progress=False, device="cpu")
    return Path(run(cfg).store)


@pytest.mark.parametrize("method", ["guided", "gradient"])
@pytest.mark.parametrize("model,layer", [("vgg16", "conv3_2"), ("resnet18", "layer2.1")])
def test_renderer_tiles_equal_captum_cropped(tmp_path, model, layer, method):
    from pipeline.data import normalize
    from pipeline.data.preprocess import Preprocessing

    path = mine(tmp_path, model, layer)
    with Store(path) as s:
        net = load_store_network(s)
        rnd = Renderer(s, net, "cpu", batch_size=5, method=method)  # one batch, in this order
        a = s.arrays(layer)
        ci, ri = np.nonzero(a["kept"] >= 0)
        pick = np.random.default_rng(0).choice(len(ci), 5, replace=False)
        pick = pick[np.argsort(a["kept"][ci[pick], ri[pick]], kind="stable")]  # the Renderer's batch order
        ci, ri = ci[pick], ri[pick]
        kept, y, x, v = a["kept"][ci, ri], a["y"][ci, ri], a["x"][ci, ri], a["value"][ci, ri]
        tiles, _ = rnd.project(layer, ci, kept, y, x, v)
        pix = s.pixels(np.sort(np.unique(kept)))
        rows = np.searchsorted(np.unique(kept), kept)
        prep = Preprocessing.from_dict(s.attrs["preprocessing"])
        geo = s.geometry(layer)
        t = geo.tile_size(s.size)
    inputs = normalize(torch.from_numpy(np.ascontiguousarray(pix[rows])), prep)
    full = reference(net, layer, method, inputs, ci, y, x, v).numpy()
    tops, lefts = geo.tile_origin(y, x, SIZE)
    want = np.stack([pad_crop(full[i].transpose(1, 2, 0), int(tops[i]), int(lefts[i]), t).transpose(2, 0, 1)
                     for i in range(len(ci))])
    assert tiles.shape == want.shape and np.abs(want).max() > 0
    assert close(torch.from_numpy(tiles), torch.from_numpy(want)), "Renderer tiles != Captum cropped to the window"


@pytest.mark.parametrize("layer", ["conv2_2", "conv4_1", "conv5_1"])  # window inside; over whole maps; R > image
def test_windowed_guided_equals_the_autograd_walk(tmp_path, layer):
    """Guided on a chain takes the windowed walker with forward ReLU masks: every entry's tile equals
    the guided autograd walk over the whole image (``project_graph``), cropped to the same tile."""
    from pipeline.data import normalize
    from pipeline.data.preprocess import Preprocessing

    path = mine(tmp_path, "vgg16", layer)
    with Store(path) as s:
        net = load_store_network(s)
        rnd = Renderer(s, net, "cpu", batch_size=7, method="guided")
        assert rnd.windowed(layer) is not None
        a = s.arrays(layer)
        ci, ri = np.nonzero(a["kept"] >= 0)
        ci, ri = ci[:40], ri[:40]
        kept, y, x, v = a["kept"][ci, ri], a["y"][ci, ri], a["x"][ci, ri], a["value"][ci, ri]
        tiles, _ = rnd.project(layer, ci, kept, y, x, v)
        prep = Preprocessing.from_dict(s.attrs["preprocessing"])
        inputs = normalize(torch.from_numpy(np.ascontiguousarray(rnd.pixels(kept))), prep)
        geo = s.geometry(layer)
        t = geo.tile_size(s.size)
    t_ = lambda q: torch.as_tensor(np.asarray(q))
    full = project_graph(net, layer, inputs, Entries(t_(ci), t_(y), t_(x), t_(v)), "guided").numpy()
    tops, lefts = geo.tile_origin(y, x, SIZE)
    want = np.stack([pad_crop(full[i].transpose(1, 2, 0), int(tops[i]), int(lefts[i]), t).transpose(2, 0, 1)
                     for i in range(len(ci))])
    assert np.abs(want).max() > 0
    assert close(torch.from_numpy(tiles), torch.from_numpy(want))
