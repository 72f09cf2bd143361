"""`mine occlude`: occlusion maps against a brute-force loop and Captum's Occlusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.analyses.occlude import class_score, occlusion_map, starts, unit_score
from pipeline.cli import app
from pipeline.models.weights import load_network

SIZE, PATCH, STRIDE = 32, 8, 6  # 5 x 5 overlapping positions covering every pixel


@pytest.fixture(scope="module")
def vgg():
    return load_network("vgg16", "random", SIZE)


@pytest.fixture(scope="module")
def resnet():
    return load_network("resnet18", "random", SIZE)


def _x(seed=0):
    return torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _brute_unit(net, layer, c, x):
    """One occluded copy at a time, the whole network run, the layer read by a plain hook."""
    got = {}
    h = net.module(layer).register_forward_hook(lambda m, i, o: got.__setitem__("o", o[0, c].max().item()))
    pos = range(0, SIZE - PATCH + 1, STRIDE)
    out = np.zeros((len(pos), len(pos)))
    try:
        with torch.no_grad():
            for a, t in enumerate(pos):
                for b, l in enumerate(pos):
                    y = x.clone()
                    y[:, t:t + PATCH, l:l + PATCH] = 0.0
                    net.model(y[None])
                    out[a, b] = got["o"]
            net.model(x[None])
    finally:
        h.remove()
    return got["o"], out


def test_starts_follow_captum_windows():
    assert starts(32, 8, 4).tolist() == [0, 4, 8, 12, 16, 20, 24]
    assert starts(10, 4, 4).tolist() == [0, 4]
    with pytest.raises(ValueError):
        starts(10, 11, 1)


@pytest.mark.parametrize("layer,c", [("conv3_3", 5), ("pool4", 17)])
def test_unit_map_equals_brute_force_and_captum(vgg, layer, c):
    x = _x(1)
    m = occlusion_map(unit_score(vgg, layer, c), x, PATCH, STRIDE, batch_size=10)
    base, brute = _brute_unit(vgg, layer, c, x)
    assert m.base == pytest.approx(base, rel=1e-5)
    np.testing.assert_allclose(m.scores, brute, rtol=1e-4, atol=1e-6 * abs(base))
    import captum.attr as captum  # a test dependency (pyproject [test])
    ref = captum.Occlusion(unit_score(vgg, layer, c)).attribute(
        x[None], sliding_window_shapes=(3, PATCH, PATCH), strides=(3, STRIDE, STRIDE), baselines=0.0, perturbations_per_eval=25)
    np.testing.assert_allclose(m.pixels, ref[0, 0].numpy(), rtol=1e-4, atol=1e-5 * abs(base))
    assert (ref[0] == ref[0, :1]).all()  # the same for every colour channel


def test_class_map_equals_captum_and_brute_force(resnet):
    x = _x(2)
    k = 7
    m = occlusion_map(class_score(resnet, k), x, PATCH, STRIDE, batch_size=16)
    import captum.attr as captum  # a test dependency (pyproject [test])
    ref = captum.Occlusion(lambda z: resnet.model(z).softmax(1)).attribute(
        x[None], sliding_window_shapes=(3, PATCH, PATCH), strides=(3, STRIDE, STRIDE), baselines=0.0, target=k,
        perturbations_per_eval=25)
    np.testing.assert_allclose(m.pixels, ref[0, 0].numpy(), rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        y = x.clone()
        y[:, 12:20, 18:26] = 0
        p = resnet.model(y[None]).softmax(1)[0, k].item()
    assert m.scores[2, 3] == pytest.approx(p, rel=1e-5)


def test_class_needs_a_classifier(vgg):
    with pytest.raises(ValueError, match="without its classifier head"):
        class_score(vgg, 3)(_x()[None])


def test_batched_equals_one_at_a_time(vgg):
    x = _x(3)
    a = occlusion_map(unit_score(vgg, "conv2_2", 3), x, PATCH, STRIDE, batch_size=64)
    b = occlusion_map(unit_score(vgg, "conv2_2", 3), x, PATCH, STRIDE, batch_size=1)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_cli_image_and_store(tmp_path, full):
    p = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
    runner = CliRunner()
    r = runner.invoke(app, ["occlude", str(p), "--model", "vgg16", "--weights", "random", "--size", str(SIZE),
                            "--layer", "conv3_1", "--feature", "2", "--patch", "8", "--stride", "4",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "o" / "img.conv3_1_occ_2.npy").shape == (7, 7)
    assert Image.open(tmp_path / "o" / "img.conv3_1_occ_2.png").size[0] == 2 * SIZE + 4
    r = runner.invoke(app, ["occlude", str(p), "--model", "vgg16", "--weights", "random", "--size", str(SIZE),
                            "--class", "3", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "classifier head" in r.output
    r = runner.invoke(app, ["occlude", str(p), "--model", "resnet18", "--weights", "random", "--size", str(SIZE),
                            "--class", "3", "--patch", "8", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    # a store: the unit's top-k images, written where mine render's index links them
    import shutil
    store = tmp_path / "s.h5"
    shutil.copy(full, store)
    r = runner.invoke(app, ["occlude", str(store), "--layer", "conv3_1", "--feature", "1", "--patch", "8",
                            "--stride", "8"])
    assert r.exit_code == 0, r.output
    occ = tmp_path / "s-render" / "occlude" / "conv3_1_occ_1.png"
    assert occ.exists()
    r = runner.invoke(app, ["render", str(store), "--features", "1", "--layer", "conv3_1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert 'href="occlude/conv3_1_occ_1.png"' in (tmp_path / "s-render" / "conv3_1_unit_1.html").read_text()
