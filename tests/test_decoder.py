"""Decoder layers (transposed convolutions, upsampling, PixelShuffle): geometry, projections, mining.

Every check has an independent reference: boxes against the support of a one-unit gradient of an
all-positive copy (``test_geometry.positive``), projections against autograd through a copy whose
ReLUs have the deconvnet backward (``deconv_reference``), top-k against brute force over plain
forward hooks.
"""
from fractions import Fraction

import numpy as np
import pytest
import torch
from autoencoders import UPS, Functional, make, make_linear
from deconv_reference import deconv_copy
from test_geometry import positive, unit_supports
from test_models import close, entries, reference
from torch import nn
from typer.testing import CliRunner

from pipeline import RunConfig, Store, run
from pipeline.analyses.occlude import OccludeOptions, occlude_pixels, occlusion_map, unit_score
from pipeline.analyses.reconstruct import reconstruct
from pipeline.cli import app
from pipeline.data import ImageDataset, Preprocessing, normalize, resolve_images
from pipeline.deconv import Entries, project_graph
from pipeline.models.geometry import Geometry, Reads, Step, pad_crop
from pipeline.models.network import Network
from pipeline.models.weights import load_network
from pipeline.render import Renderer, load_store_network

SIZE = 28


def network(model: nn.Module, size: int = SIZE) -> Network:
    return Network("ae", model, "random", "-", "torchvision", size)


def all_units(h: int) -> list[tuple[int, int]]:
    """Every row and every column (each residue of any period), both corners."""
    return sorted({(y, (3 * y + 1) % h) for y in range(h)} | {(0, 0), (h - 1, h - 1), (0, h - 1), (h - 1, 0)})


def check_boxes(net: Network, layers: list[str], size: int, dense: bool = True) -> None:
    """Every unit's box equals its gradient's support; ``dense``: every box pixel is reached."""
    model = positive(net.model)
    for layer in layers:
        li = net.layers[layer]
        units = all_units(li.out_size)
        for (y, x), (got, count) in zip(units, unit_supports(model, li.module, size, units)):
            want = tuple(int(v) for v in li.geometry.boxes(y, x, size))
            if got is None:  # reads nothing: an empty box
                assert want[2] == want[0] or want[3] == want[1], (layer, y, x, want)
                continue
            assert got == want, (layer, y, x, li.geometry)
            if dense:
                assert count == (want[2] - want[0]) * (want[3] - want[1]), (layer, y, x)


@pytest.mark.parametrize("up", UPS)
def test_autoencoder_boxes_equal_gradient_support(up):
    net = network(make(up))
    decoder = [n for n, li in net.layers.items() if li.geometry.period > 1]
    assert len(decoder) >= 6, list(net.layers)  # the upsamplings, the convolutions after them, the output
    check_boxes(net, ["5", "7", *decoder], SIZE)


def test_functional_interpolate_layers():
    for mode in ("bilinear", "nearest"):
        net = network(Functional(mode=mode))
        assert list(net.layers) == ["enc", "code", "dec1", "dec2"]
        assert net.layers["dec2"].out_size == SIZE and net.layers["dec2"].geometry.stride_text == "4/4"
        check_boxes(net, ["dec1", "dec2"], SIZE)


def test_linear_bottleneck_decoder_sees_the_whole_image():
    net = network(make_linear())
    assert [n for n in net.layers if int(n) >= 4] == ["9", "10", "11", "12"]  # the code (a vector) is no map
    assert net.layers["9"].geometry == Geometry.whole(SIZE, 7) and net.layers["12"].rf == 2 * SIZE
    check_boxes(net, ["9", "10", "12"], SIZE)


class Decoder(nn.Sequential):
    """An upsampling applied straight to the image, then a 3x3 conv and a strided 3x3 conv."""

    def __init__(self, up: nn.Module, c: int = 6) -> None:
        torch.manual_seed(0)
        first = up if not isinstance(up, nn.PixelShuffle) else nn.Sequential(nn.Conv2d(3, 3 * 9, 1), up)
        out = c if isinstance(up, nn.ConvTranspose2d) else 3
        super().__init__(first, nn.ReLU(), nn.Conv2d(out, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1))


UPSAMPLERS = {
    "convT k3 s2 p1 op1": (nn.ConvTranspose2d(3, 6, 3, stride=2, padding=1, output_padding=1), True),
    "convT k4 s2 p1": (nn.ConvTranspose2d(3, 6, 4, stride=2, padding=1), True),
    "convT k2 s2": (nn.ConvTranspose2d(3, 6, 2, stride=2), True),
    "convT k5 s3 p2 op2 groups 3": (nn.ConvTranspose2d(3, 6, 5, stride=3, padding=2, output_padding=2, groups=3), True),
    "convT k3 s2 d2 op1": (nn.ConvTranspose2d(3, 6, 3, stride=2, dilation=2, output_padding=1), False),
    "convT k3 s1 p2 (crops)": (nn.ConvTranspose2d(3, 6, 3, padding=2), True),
    "nearest x2": (nn.Upsample(scale_factor=2), True),
    "nearest x3": (nn.Upsample(scale_factor=3), True),
    "nearest-exact x2": (nn.Upsample(scale_factor=2, mode="nearest-exact"), True),
    "bilinear x2": (nn.Upsample(scale_factor=2, mode="bilinear"), True),
    "bilinear x2 align_corners": (nn.UpsamplingBilinear2d(scale_factor=2), True),
    "bilinear to size 20": (nn.Upsample(size=20, mode="bilinear"), True),
    "pixel shuffle 3": (nn.PixelShuffle(3), True),
}


@pytest.mark.parametrize("name", list(UPSAMPLERS))
def test_upsampling_on_the_image(name):
    up, dense = UPSAMPLERS[name]
    size = 12
    net = network(Decoder(up), size)
    assert {"0", "1", "2", "3"} <= set(net.layers)
    check_boxes(net, ["0", "2", "3"], size, dense)  # dilation leaves holes: the box is their hull


def test_reported_numbers():
    """By hand: a 3x3/2 transposed conv (padding 1, output_padding 1) on the image: even outputs
    read input o/2, odd ones (o-1)/2 and (o+1)/2, so the boxes repeat every 2 units, 1 pixel on."""
    g = network(Decoder(nn.ConvTranspose2d(3, 6, 3, stride=2, padding=1, output_padding=1)), 12).layers["0"].geometry
    assert (g.rf, g.stride, g.period, g.padding, g.spans, g.stride_text) == (2, 1, 2, 0, ((0, 1), (0, 2)), "1/2")
    assert g.boxes([0, 1, 2, 23], [3, 3, 3, 3], 12).tolist() == [[0, 1, 1, 3], [0, 1, 2, 3], [1, 1, 2, 3], [11, 1, 12, 3]]
    # a 2x upsampling then a 2x2/2 pool is a plain box again: reduced to period 1
    assert Geometry().through(Reads.resample(Fraction(1, 2), "nearest")).then(Step(2, 2, 0)) == Geometry(1, 1, 0)
    assert Geometry.from_attrs(g.attrs()) == g and Geometry.from_attrs(Geometry(40, 4, 18).attrs()) == Geometry(40, 4, 18)


# --- end to end: mining, pooled vectors, render, reconstruct, occlude on the 3-channel autoencoder -----
MINED = ["7", "10", "12", "14", "16"]  # the code, both transposed convs, the convs after them


@pytest.fixture(scope="module")
def ae_store(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "ae.h5"
    cfg = RunConfig(images=str(images), layer=",".join(MINED), model="autoencoders:make", weights="random", size=SIZE,
                    k=4, batch_size=5, workers=0, device="cpu", progress=False, out=str(out), pooled="7,12")
    return run(cfg).store


@pytest.fixture(scope="module")
def ae_net():
    return load_network("autoencoders:make", "random", SIZE)


def hooked_maps(net: Network, layers: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's whole output by plain forward hooks and one plain forward pass."""
    got = {}
    hs = [net.model.get_submodule(net.layers[n].module).register_forward_hook(
        lambda m, i, o, n=n: got.__setitem__(n, o.detach().clone())) for n in layers]
    try:
        with torch.no_grad():
            net.model(x)
    finally:
        for h in hs:
            h.remove()
    return got


def good_items(images):
    prep = Preprocessing("torchvision", SIZE)
    ds = ImageDataset(resolve_images(str(images)), prep)
    seen, good = set(), []
    for it in (ds[i] for i in range(len(ds))):
        if it["ok"] and it["key"] not in seen:
            seen.add(it["key"])
            good.append(it)
    return good, prep


def test_topk_and_pooled_of_decoder_layers_equal_brute_force(ae_store, ae_net, images):
    good, prep = good_items(images)
    keys = np.array([it["key"] for it in good])
    maps = [hooked_maps(ae_net, MINED, normalize(it["pixels"][None], prep)) for it in good]
    with Store(ae_store) as s:
        for name in MINED:
            li = ae_net.layers[name]
            assert s.geometry(name) == li.geometry  # the store keeps the per-unit boxes
            flat = np.stack([m[name][0].flatten(1).numpy() for m in maps])  # (images, C, h*w)
            vals, pos = flat.max(2), flat.argmax(2)
            a = s.arrays(name)
            for c in range(li.channels):
                order = sorted(range(len(good)), key=lambda i: (-vals[i, c], keys[i]))[:4]
                assert a["key"][c].tolist() == keys[order].tolist(), (name, c)
                assert a["y"][c].tolist() == (pos[order, c] // li.out_size).tolist(), (name, c)
                assert a["x"][c].tolist() == (pos[order, c] % li.out_size).tolist(), (name, c)
                np.testing.assert_allclose(a["value"][c], vals[order, c], rtol=1e-5, atol=1e-6)
                np.testing.assert_array_equal(a["box"][c], li.geometry.boxes(a["y"][c], a["x"][c], SIZE))
        for name in ("7", "12"):  # --pooled: per image, the mean and max of each map
            v = s.pooled(name).astype(np.float32)
            for it, m in zip(good, maps):
                o = m[name][0].flatten(1)
                np.testing.assert_allclose(v[it["index"]], np.stack([o.mean(1).numpy(), o.amax(1).numpy()]),
                                           rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("up", UPS)
def test_projections_equal_autograd_deconvnet(up, monkeypatch):
    """Through transposed convs (backward: a convolution), upsamplings (backward: sums) and shuffles."""
    net = network(make(up))
    torch.manual_seed(1)
    x = torch.randn(4, 3, SIZE, SIZE)
    for i, layer in enumerate(["7", *[n for n, li in net.layers.items() if li.geometry.period > 1][::3]]):
        c, y, xx, v = entries(net, layer, x, i)
        ref = reference(net.model, net.layers[layer].module, x, c, y, xx, v, monkeypatch)
        got = project_graph(net, layer, x, Entries(c, y, xx, v))
        assert ref.abs().max() > 0 and close(got, ref), (up, layer)


def test_functional_projections_equal_autograd_deconvnet(monkeypatch):
    net = network(Functional())
    torch.manual_seed(2)
    x = torch.randn(3, 3, SIZE, SIZE)
    for i, layer in enumerate(["dec1", "dec2"]):
        c, y, xx, v = entries(net, layer, x, i)
        ref = reference(net.model, layer, x, c, y, xx, v, monkeypatch)  # F.relu (in forward) patched too
        assert close(project_graph(net, layer, x, Entries(c, y, xx, v)), ref), layer


def test_render_tiles_equal_reference_crops(ae_store, monkeypatch):
    """The tiles `mine render` draws: the reference projection of the kept pixels, cut at the tile."""
    with Store(ae_store) as s:
        net = load_store_network(s)
        rnd = Renderer(s, net, "cpu")
        prep = Preprocessing.from_dict(s.attrs["preprocessing"])
        for layer in ("10", "14"):
            geo, a = net.layers[layer].geometry, s.arrays(layer)
            c = int(np.nanargmax(a["value"][:, 0]))
            tiles, crops, filled = rnd.feature(layer, c)
            assert tiles.shape[-1] == geo.rf and filled.all()
            kept = a["kept"][c]
            x = normalize(torch.from_numpy(np.stack([s.pixels(int(k)) for k in kept])), prep)
            y, xx = torch.as_tensor(a["y"][c]).long(), torch.as_tensor(a["x"][c]).long()
            ref = reference(net.model, net.layers[layer].module, x, torch.full((len(kept),), c), y, xx,
                            torch.as_tensor(a["value"][c]), monkeypatch).numpy()
            for j in range(len(kept)):
                top, left = (int(t) for t in geo.tile_origin(a["y"][c, j], a["x"][c, j], SIZE))
                want = pad_crop(ref[j].transpose(1, 2, 0), top, left, geo.rf).transpose(2, 0, 1)
                np.testing.assert_allclose(tiles[j], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
                np.testing.assert_array_equal(crops[j], s.crop(s.entries(layer, c)[j]))
                b = a["box"][c, j]  # the projection lives inside the box
                outside = ref[j].copy()
                outside[:, b[0]:b[2], b[1]:b[3]] = 0
                assert np.abs(outside).max() == 0


def test_reconstruct_from_decoder_layers_equals_reference(ae_net):
    torch.manual_seed(3)
    x = torch.randn(2, 3, SIZE, SIZE)
    ref_model = deconv_copy(ae_net.model)
    for layer in ("12", "16"):
        out = {}
        h = ref_model.get_submodule(ae_net.layers[layer].module).register_forward_hook(
            lambda m, i, o, out=out: out.setdefault("o", o))
        xr = x.clone().requires_grad_(True)
        ref_model(xr)
        h.remove()
        (want,) = torch.autograd.grad(out["o"], xr, out["o"].detach())
        assert close(reconstruct(ae_net, layer, x), want), layer


def test_occlusion_of_a_decoder_unit(ae_net, tmp_path):
    """Scores equal a plain forward of each occluded copy; the drawn box is the unit's exact box."""
    torch.manual_seed(4)
    x = torch.randn(3, SIZE, SIZE)
    m = occlusion_map(unit_score(ae_net, "14", 2), x, patch=7, stride=7)
    assert m.scores.shape == (4, 4)
    for i, (t, l_) in enumerate([(0, 0), (7, 14), (21, 21)]):
        xo = x.clone()
        xo[:, t:t + 7, l_:l_ + 7] = 0
        want = float(hooked_maps(ae_net, ["14"], xo[None])["14"][0, 2].max())
        assert abs(m.scores[t // 7, l_ // 7] - want) <= 1e-5 * max(1.0, abs(want)), i
    pixels = np.random.default_rng(0).integers(0, 255, (1, SIZE, SIZE, 3), dtype=np.uint8)
    res = occlude_pixels(ae_net, pixels, Preprocessing("torchvision", SIZE), ["a"], tmp_path / "occ",
                         OccludeOptions(layer="14", feature=2, patch=7, stride=7))
    assert res.files[0].is_file()


def test_layers_command_lists_decoder_layers():
    r = CliRunner().invoke(app, ["layers", "--model", "autoencoders:make", "--size", "28", "--every"])
    assert r.exit_code == 0, r.output
    rows = {line.split()[1]: line.split() for line in r.output.splitlines() if line[:2] in ("* ", "  ")}
    assert rows["10"][2:] == ["10", "8", "14", "14", "4/2", "3"]  # ConvTranspose2d: boxes repeat every 2 units
    assert rows["16"][2:] == ["16", "3", "28", "18", "4/4", "7"] and "S = a/b" in r.output
    r = CliRunner().invoke(app, ["layers", "--model", "autoencoders:make_bilinear", "--size", "28", "--every"])
    rows = {line.split()[1]: line.split() for line in r.output.splitlines() if line[:2] in ("* ", "  ")}
    assert r.exit_code == 0 and rows["12"][2:] == ["12", "8", "28", "18", "4/4", "7"]  # the second nn.Upsample
