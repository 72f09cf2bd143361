"""`mine reconstruct`: a layer's activations of one image projected to pixels.

Reference (independent of deconv.rules, mining.taps and the early stop): a copy of the model whose
ReLU modules are replaced by an autograd function with backward ReLU(signal), run to the end with
a forward hook that keeps the layer's output; the reconstruction is the gradient of the inner
product of the layer's detached (masked) activations with the layer.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from deconv_reference import deconv_copy
from PIL import Image
from typer.testing import CliRunner

from pipeline.analyses.reconstruct import reconstruct
from pipeline.cli import app
from pipeline.models.weights import load_network


def _reference(net, layer, x, mask_of):
    model = deconv_copy(net.model)
    kept = {}
    model.get_submodule(net.layers[layer].module).register_forward_hook(lambda m, i, o: kept.setdefault("out", o))
    x = x.clone().requires_grad_(True)
    model(x)
    out = kept["out"]
    (out * (out.detach() * mask_of(out.detach()))).sum().backward()
    return x.grad


@pytest.fixture(scope="module")
def nets():
    return {"vgg16": load_network("vgg16", "random", 64), "resnet18": load_network("resnet18", "random", 64)}


@pytest.mark.parametrize("arch,layer", [("vgg16", "conv3_3"), ("vgg16", "pool4"), ("resnet18", "layer2.1"),
                                        ("resnet18", "layer1.0")])
def test_equals_autograd_reference_all_maps_and_one_map(nets, arch, layer):
    net = nets[arch]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got = reconstruct(net, layer, x)
    ref = _reference(net, layer, x, lambda out: torch.ones_like(out))
    assert got.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    c = 3  # a fixed map
    one = reconstruct(net, layer, x, feature=c)

    def only_c(out):
        m = torch.zeros_like(out)
        m[:, c] = 1
        return m
    ref1 = _reference(net, layer, x, only_c)
    torch.testing.assert_close(one, ref1, rtol=1e-4, atol=1e-5 * max(ref1.abs().max().item(), 1e-12))


def test_top_n_keeps_the_strongest_maps(nets):
    net = nets["vgg16"]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    acts = {}
    from pipeline.models.hooks import hooked, run_to
    with torch.no_grad(), hooked(net, ["conv3_3"], lambda n, o: acts.setdefault(n, o.clone())):
        run_to(net, x)
    best = acts["conv3_3"][0].flatten(1).amax(1).argsort(descending=True)[:3].tolist()
    got = reconstruct(net, "conv3_3", x, top=3)

    def only_best(out):  # the deconvnet is not linear (ReLU of the signal): mask, do not add projections
        m = torch.zeros_like(out)
        m[:, best] = 1
        return m
    want = _reference(net, "conv3_3", x, only_best)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    with pytest.raises(ValueError, match="out of range"):
        reconstruct(net, "conv3_3", x, feature=10_000)


def test_cli_writes_pngs_arrays_and_sheet(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "rec"
    r = CliRunner().invoke(app, ["reconstruct", *paths, "--model", "vgg16", "--weights", "random", "--size", "32",
                                 "--layer", "conv1_2,conv2_2", "--out", str(out), "--save-arrays"])
    assert r.exit_code == 0, r.output
    for i in range(2):
        for layer in ("conv1_2", "conv2_2"):
            a = np.load(out / f"img{i}.{layer}.npy")
            assert a.shape == (3, 32, 32) and a.dtype == np.float32 and np.abs(a).max() > 0
            img = np.asarray(Image.open(out / f"img{i}.{layer}.png"))
            assert img.shape[1] == 2 * 32 + 4  # input beside projection
    sheet = np.asarray(Image.open(out / "sheet.png"))
    assert sheet.shape[1] == 3 * 32 + 2 * 4  # input + two layers
    r = CliRunner().invoke(app, ["reconstruct", paths[0], "--model", "vgg16", "--weights", "random", "--size", "32",
                                 "--layer", "conv1_2", "--feature", "1", "--top", "2", "--out", str(out)])
    assert r.exit_code == 2 and "not both" in r.output
