"""Every architecture: mining equals brute force, projections equal an independent autograd deconvnet.

References know nothing of ``models.trace`` or ``deconv.rules``:

* top-k: each image alone through the network, the layer's output taken by a plain forward hook
  on the named torchvision module, channel maxima sorted by (value desc, key asc);
* projections: autograd in which every ReLU-family *module* (ReLU, ReLU6) is swapped for one
  whose backward is ReLU of the signal, and the functional ``F.relu`` that GoogLeNet and DenseNet
  call inside ``forward`` is monkeypatched in their torchvision modules to the same function;
  for nets whose only rectifiers are ``nn.ReLU`` modules Captum's ``Deconvolution`` is checked too.
"""
from __future__ import annotations

import copy
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision.models  # noqa: F401 - loads the submodules patched below
from deconv_reference import deconv_copy, deconv_relu
from jobs_util import make_images
from torch import nn

from pipeline import RunConfig, Store, run
from pipeline.data import ImageDataset, Preprocessing, normalize, resolve_images
from pipeline.deconv import Entries, project_graph
from pipeline.models.weights import load_network
from pipeline.render import Renderer, load_store_network

SIZE = 64
CASES = {  # model -> layers (incl. after a residual add / a concatenation), mined and projected
    "alexnet": ["conv2", "pool2", "conv5"],
    "zfnet": ["conv1", "pool1", "conv3"],
    "resnet18": ["maxpool", "layer1.1", "layer2.0", "layer3.1"],
    "mobilenet_v2": ["features.2", "features.3", "features.6"],
    "googlenet": ["maxpool1", "inception3a", "inception3b.branch4"],
    "densenet121": ["features.denseblock1", "features.transition1", "features.denseblock2.denselayer2"],
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("model_imgs"))


@pytest.fixture(scope="module")
def stores(photos, tmp_path_factory):
    out = {}
    tmp = tmp_path_factory.mktemp("model_stores")
    for model, layers in CASES.items():
        cfg = RunConfig(images=str(photos), layer=",".join(layers), model=model, weights="random", size=SIZE,
                        k=4, batch_size=5, workers=0, device="cpu", progress=False, out=str(tmp / f"{model}.h5"))
        out[model] = run(cfg).store
    return out


def brute_force(photos, net, layers, k):
    """layer -> (values, flat positions, keys, top-k order per channel) from plain hooks, all images."""
    prep = Preprocessing("torchvision", SIZE)
    ds = ImageDataset(resolve_images(str(photos)), prep)
    items, seen = [], set()
    for i in range(len(ds)):
        it = ds[i]
        if it["ok"] and it["key"] not in seen:
            seen.add(it["key"])
            items.append(it)
    keys = np.array([it["key"] for it in items])
    got, hooks = {}, []
    for layer in layers:
        module = net.model.get_submodule(net.layers[layer].module)
        hooks.append(module.register_forward_hook(lambda m, inp, o, n=layer: got.setdefault(n, o.detach().clone())))
    with torch.no_grad():
        net.model(normalize(torch.stack([it["pixels"] for it in items]), prep))
    for h in hooks:
        h.remove()
    out = {}
    for layer in layers:
        flat = got[layer].flatten(2)
        vals, poss = flat.max(2).values.numpy(), flat.argmax(2).numpy()
        order = [sorted(range(len(keys)), key=lambda i: (-vals[i, c], keys[i]))[:k] for c in range(vals.shape[1])]
        out[layer] = vals, poss, keys, np.array(order)
    return out


@pytest.mark.parametrize("model", list(CASES))
def test_topk_equals_brute_force(photos, stores, model):
    net = load_network(model, "random", SIZE)
    with Store(stores[model]) as s:
        ref = brute_force(photos, net, CASES[model], s.k)
        for layer in CASES[model]:
            vals, poss, keys, order = ref[layer]
            a = s.arrays(layer)
            w = net.layers[layer].out_size
            assert a["value"].shape[0] == vals.shape[1] == net.layers[layer].channels
            np.testing.assert_array_equal(a["key"], keys[order], err_msg=layer)
            ch = np.arange(vals.shape[1])[:, None]
            np.testing.assert_allclose(a["value"], vals[order, ch], rtol=1e-5, atol=1e-6, err_msg=layer)
            np.testing.assert_array_equal(a["y"] * w + a["x"], poss[order, ch], err_msg=layer)


# --- projections -------------------------------------------------------------------------------
def reference(model, module_path, x, c, y, xx, value, monkeypatch):
    """Deconvnet projections by autograd through a rewritten copy; functional F.relu patched."""
    fn = lambda t, inplace=False: deconv_relu(t)
    for mod in ("torchvision.models.googlenet", "torchvision.models.densenet"):  # they call F.relu in forward
        monkeypatch.setattr(sys.modules[mod].F, "relu", fn)
    m = deconv_copy(model)
    out = {}
    h = m.get_submodule(module_path).register_forward_hook(lambda mod, i, o: out.setdefault("o", o))
    x = x.clone().requires_grad_(True)
    m(x)
    h.remove()
    # The unit's value is put at its place and walked down (not the gradient times the value: with a
    # rectified backward the two differ for negative values, which non-rectified layers can have).
    u = out["o"][torch.arange(len(c)), c, y, xx]
    (g,) = torch.autograd.grad(u, x, value.to(u.dtype))
    monkeypatch.undo()
    return g


def entries(net, layer, x, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    h = net.model.get_submodule(net.layers[layer].module).register_forward_hook(
        lambda m, i, o: out.setdefault("o", o.detach().clone()))
    with torch.no_grad():
        net.model(x)
    h.remove()
    o = out["o"]
    b, ch, n, _ = o.shape
    c = torch.randint(0, ch, (b,), generator=g)
    pos = o[torch.arange(b), c].flatten(1).argmax(1)
    y, xx = pos // n, pos % n
    y[0], xx[0] = 0, n - 1  # a corner too
    return c, y, xx, o[torch.arange(b), c, y, xx]


def close(a, b, rtol=1e-4):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) <= rtol


@pytest.mark.parametrize("model", list(CASES))
def test_projections_equal_autograd_reference(model, monkeypatch):
    net = load_network(model, "random", SIZE)
    torch.manual_seed(1)
    x = torch.randn(4, 3, SIZE, SIZE)
    for i, layer in enumerate(CASES[model]):
        c, y, xx, v = entries(net, layer, x, i)
        ref = reference(net.model, net.layers[layer].module, x, c, y, xx, v, monkeypatch)
        batched = project_graph(net, layer, x, Entries(c, y, xx, v))
        one = torch.cat([project_graph(net, layer, x[j:j + 1], Entries(c[j:j + 1], y[j:j + 1], xx[j:j + 1], v[j:j + 1]))
                         for j in range(len(c))])
        assert ref.abs().max() > 0, (model, layer)
        assert close(batched, ref), (model, layer, "batched")
        assert close(one, ref), (model, layer, "one at a time")


@pytest.mark.parametrize("model", ["alexnet", "resnet18"])
def test_captum_deconvolution_agrees_where_it_applies(model):
    """Captum hooks ReLU modules only: AlexNet and ResNet have no other rectifiers."""
    import captum.attr as captum  # a test dependency (pyproject [test])
    net = load_network(model, "random", SIZE)
    layer = CASES[model][-1]
    torch.manual_seed(2)
    x = torch.randn(3, 3, SIZE, SIZE)
    c, y, xx, v = entries(net, layer, x, 5)
    n = net.layers[layer].out_size
    path = net.layers[layer].module
    body = copy.deepcopy(net.model)
    for m in body.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False

    class Unit(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, inp):
            out = {}
            h = self.body.get_submodule(path).register_forward_hook(lambda m, i, o: out.setdefault("o", o))
            self.body(inp)
            h.remove()
            return out["o"].flatten(1)

    dec = captum.Deconvolution(Unit().eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.cat([dec.attribute(x[i:i + 1].clone().requires_grad_(True),
                                       target=int(c[i] * n * n + y[i] * n + xx[i])) for i in range(len(c))])
    ours = project_graph(net, layer, x, Entries(c, y, xx, v))
    assert close(ours, got * v.view(-1, 1, 1, 1))


def test_windowed_chain_path_equals_general_path(images, tmp_path):
    """VGG's fast windowed walker over the stored switches == autograd on the stored pixels."""
    cfg = RunConfig(images=str(images), layer="conv2_2,pool2,conv3_3,conv4_1", model="vgg16", weights="random",
                    size=48, k=3, workers=0, device="cpu", progress=False, out=str(tmp_path / "v.h5"))
    with Store(run(cfg).store) as s:
        net = load_store_network(s)
        fast, general = Renderer(s, net, "cpu"), Renderer(s, net, "cpu")
        general.chain = None
        for layer in ("conv2_2", "pool2", "conv3_3", "conv4_1"):
            assert fast.windowed(layer) is not None and general.windowed(layer) is None
            a = s.arrays(layer)
            sel = tuple(i[::17][:24] for i in np.nonzero(a["kept"] >= 0))  # 24 entries across the channels
            args = (sel[0], a["kept"][sel], a["y"][sel], a["x"][sel], a["value"][sel])
            t1, p1 = fast.project(layer, *args)
            t2, p2 = general.project(layer, *args)
            assert t1.shape == t2.shape and np.abs(t2).max() > 0
            np.testing.assert_allclose(t1, t2, rtol=0, atol=1e-4 * np.abs(t2).max())
            np.testing.assert_array_equal(p1, p2)


def test_render_tiles_of_a_residual_net_match_reference_crops(stores, monkeypatch):
    """Renderer tiles (T x T crops of the general path) == the reference cropped by geometry."""
    with Store(stores["resnet18"]) as s:
        net = load_store_network(s)
        rnd = Renderer(s, net, "cpu")
        prep = Preprocessing.from_dict(s.attrs["preprocessing"])
        for layer in ("layer1.1", "layer3.1"):
            a = s.arrays(layer)
            sel = np.nonzero(a["kept"] >= 0)
            ch, kept, ys, xs, vs = sel[0][:6], a["kept"][sel][:6], a["y"][sel][:6], a["x"][sel][:6], a["value"][sel][:6]
            tiles, _ = rnd.project(layer, ch, kept, ys, xs, vs)
            x = normalize(torch.from_numpy(s.pixels(np.sort(np.unique(kept)))), prep)
            rows = np.searchsorted(np.unique(kept), kept)
            ref = reference(net.model, net.layers[layer].module, x[rows], torch.as_tensor(ch), torch.as_tensor(ys),
                            torch.as_tensor(xs), torch.as_tensor(vs), monkeypatch).numpy()
            geo = net.layers[layer].geometry
            t = geo.tile_size(SIZE)
            oy, ox = geo.tile_origin(ys, xs, SIZE)
            for i in range(len(ch)):
                want = np.zeros((3, t, t), np.float32)
                pad = np.pad(ref[i], ((0, 0), (t, t), (t, t)))
                want[:] = pad[:, oy[i] + t:oy[i] + 2 * t, ox[i] + t:ox[i] + 2 * t]
                np.testing.assert_allclose(tiles[i], want, rtol=0, atol=1e-4 * np.abs(want).max())


CUSTOM = '''
import torch
import torch.nn.functional as F
from torch import nn


class Tiny(nn.Module):
    """A user net: functional ReLUs, a residual add, a concatenation and a max-pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 5, padding=2)
        self.head = nn.Conv2d(12, 6, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.pool(F.relu(self.stem(x)))
        x = torch.relu(self.a(x)) + x
        x = torch.cat([x, F.relu(self.b(x))], 1)
        return self.head(x).relu()


def build():
    return Tiny()
'''


def test_custom_model_by_factory(tmp_path, monkeypatch, images):
    """`package.module:factory` with --weights PATH: layers, geometry, mining and render work."""
    (tmp_path / "usernet.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = load_network("usernet:build", "random", 32)
    assert net.select("all") == ["stem", "pool", "a", "b", "head"]
    # by hand: stem 3/1/1, pool 4/2/1, a 8/2/3, the add takes the union 8/2/3, b adds 4 x 2: 16/2/7,
    # the cat the union of 8/2/3 and 16/2/7, then 3x3/2: 20/4/9
    assert net.layers["b"].geometry.rsp == (16, 2, 7)
    assert net.layers["head"].geometry.rsp == (20, 4, 9)
    state = tmp_path / "w.pt"
    torch.save({k: v + 0.01 for k, v in net.model.state_dict().items()}, state)
    cfg = RunConfig(images=str(images), layer="all", model="usernet:build", weights=str(state), size=32, k=3,
                    workers=0, device="cpu", progress=False, out=str(tmp_path / "u.h5"))
    with Store(run(cfg).store) as s:
        assert s.attrs["model"] == "usernet:build" and list(s.layers) == ["stem", "pool", "a", "b", "head"]
        rnd = Renderer(s, load_store_network(s), "cpu")
        tiles, crops, filled = rnd.feature("head", 0)
        assert filled.any() and np.abs(tiles[filled]).max() > 0 and tiles.shape[-1] == 20
    with pytest.raises(ValueError, match="cannot import"):
        load_network("nosuchpackage.mod:build", "random", 32)
