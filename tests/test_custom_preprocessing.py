"""The preprocessing a model was trained with: one channel, custom mean/std, the model's own
attribute, recorded in the store and used by render.

References are independent of the pipeline: PIL's own grey conversion, plain forward hooks on
the torch modules, the formula (x / 255 - mean) / std written out, a hand-sorted top-k.
"""
import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.preprocess import Preprocessing, normalize, normalize_float, pad_color, resolve, to_pixels
from pipeline.models.weights import load_network
from pipeline.store.read import Store

S, N, K = 16, 10, 3
MEAN, STD = 0.2, 0.25


@pytest.fixture(scope="module")
def colour_pngs(tmp_path_factory):
    """N distinct colour S x S PNGs: the run must see them as PIL's grey ("L") conversion."""
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(5)
    for i in range(N):
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((S, S), Image.BILINEAR)
        img.save(root / f"c{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Weights of tiny_models.plain saved as a state dict, and the module itself."""
    import tiny_models

    torch.manual_seed(7)
    m = tiny_models.plain().eval()
    path = tmp_path_factory.mktemp("w") / "w.pt"
    torch.save(m.state_dict(), path)
    return m, path


def brute_force_topk(model, files, layers: dict[str, int], k: int) -> dict[str, list[list[tuple[str, float]]]]:
    """Per layer and channel the k best (file name, spatial max) by plain forward hooks on the
    module outputs, inputs built by hand: PIL grey, / 255, minus MEAN, over STD."""
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), np.float32) / 255.0)[None]
                     for f in files])
    x = (x - MEAN) / STD
    seen = {}
    hooks = [model[i].register_forward_hook(lambda m, inp, out, n=name: seen.__setitem__(n, out.detach().clone()))
             for name, i in layers.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    # ties (a unit at 0 on several images) go to the smaller image id: sha256 of the file, 63 bits
    ident = {f.name: int.from_bytes(hashlib.sha256(f.read_bytes()).digest()[:8], "big") >> 1 for f in files}
    out = {}
    for name, maps in seen.items():
        peak = maps.amax(dim=(2, 3)).clamp(min=0)  # (images, channels)
        out[name] = [sorted(((files[i].name, float(peak[i, c])) for i in range(len(files))),
                            key=lambda t: (-t[1], ident[t[0]]))[:k] for c in range(peak.shape[1])]
    return out


def test_one_channel_custom_mean_std_topk_equals_brute_force(colour_pngs, trained, tmp_path):
    model, weights = trained
    out = tmp_path / "s.h5"
    res = CliRunner().invoke(app, ["run", "--images", str(colour_pngs), "--model", "tiny_models:plain", "--weights",
                                   str(weights), "--channels", "1", "--mean", str(MEAN), "--std", str(STD),
                                   "--size", str(S), "--layer", "1,4", "--k", str(K), "--workers", "0",
                                   "--batch-size", "4", "--quiet", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    files = sorted(colour_pngs.glob("*.png"))
    ref = brute_force_topk(model, files, {"1": 1, "4": 4}, K)
    assert sum(v > 0 for chans in ref.values() for best in chans for _, v in best) > 20  # not a dead net
    with Store(out) as s:
        assert s.attrs["preprocessing"] == {"mode": "custom", "size": S, "resize": "center-crop", "channels": 1,
                                            "mean": [MEAN], "std": [STD]}
        for layer, channels in ref.items():
            for c, best in enumerate(channels):
                got = [(e.path, e.value) for e in s.entries(layer, c)]
                assert [p for p, _ in got] == [p for p, _ in best]
                np.testing.assert_allclose([v for _, v in got], [v for _, v in best], rtol=1e-5, atol=1e-6)
        # what the network saw, before normalisation: PIL's grey, in all three stored channels
        for e in s.entries("4", 0):
            px = s.pixels(e.kept)
            grey = np.asarray(Image.open(colour_pngs / e.path).convert("L"))
            assert (px == grey[..., None]).all()


def test_model_attribute_needs_no_options_and_render_shows_grey(colour_pngs, trained, tmp_path):
    """`--model tiny_models:digits --weights PATH` alone: the factory's preprocessing is used, recorded,
    and render works from the store (projections and crops grey: R = G = B)."""
    _, weights = trained
    out = tmp_path / "d.h5"
    r = CliRunner().invoke(app, ["run", "--images", str(colour_pngs), "--model", "tiny_models:digits", "--weights",
                                 str(weights), "--size", str(S), "--layer", "4", "--k", "2", "--workers", "0",
                                 "--quiet", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert json.loads(f.attrs["preprocessing"])["mean"] == [0.1307]
    r = CliRunner().invoke(app, ["render", str(out), "--features", "0-1", "--quiet", "--device", "cpu",
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    pngs = sorted((tmp_path / "r").glob("4_*.png"))
    assert pngs
    for p in pngs:
        a = np.asarray(Image.open(p).convert("RGB")).astype(int)
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all(), p.name


def test_an_input_that_does_not_fit_names_channels_or_size():
    r = CliRunner().invoke(app, ["layers", "--model", "tiny_models:plain", "--size", "16"])
    assert r.exit_code == 2
    assert "1-channel input" in r.stderr and "--channels 1" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["layers", "--model", "tiny_models:digits", "--size", "4"])
    assert r.exit_code == 2 and "a 4 px input does not fit" in r.stderr
    r = CliRunner().invoke(app, ["layers", "--model", "tiny_models:plain", "--size", "16", "--channels", "1"])
    assert r.exit_code == 0 and "8" in r.stdout


def test_config_file_gives_the_preprocessing(colour_pngs, trained, tmp_path):
    _, weights = trained
    conf = tmp_path / "c.toml"
    conf.write_text(f'images = "{colour_pngs}"\nmodel = "tiny_models:plain"\nweights = "{weights}"\nsize = {S}\n'
                    f'layer = "4"\nk = 2\nworkers = 0\nchannels = 1\nmean = [{MEAN}]\nstd = "{STD}"\n')
    r = CliRunner().invoke(app, ["run", "--config", str(conf), "--quiet", "--out", str(tmp_path / "c.h5"),
                                 "--device", "cpu", "--std", "0.5"])  # the flag overrides the file
    assert r.exit_code == 0, r.output
    with Store(tmp_path / "c.h5") as s:
        assert Preprocessing.from_dict(s.attrs["preprocessing"]) == Preprocessing("custom", S, "center-crop", 1,
                                                                                  (MEAN,), (0.5,))
    conf.write_text(conf.read_text().replace("channels = 1", 'channels = "one"'))
    r = CliRunner().invoke(app, ["run", "--config", str(conf), "--quiet", "--out", str(tmp_path / "x.h5")])
    assert r.exit_code == 2 and "channels must be an integer" in r.stderr


def test_normalize_by_hand():
    px = torch.tensor([[[[0, 0, 0], [255, 255, 255]], [[51, 51, 51], [102, 9, 200]]]], dtype=torch.uint8)
    grey = normalize(px, Preprocessing("custom", 2, channels=1, mean=(0.1307,), std=(0.3081,)))
    assert grey.shape == (1, 1, 2, 2)
    want = (np.array([[0, 255], [51, 102]]) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(grey[0, 0].numpy(), want, rtol=1e-6)
    rgb = normalize(px, Preprocessing("custom", 2, channels=3, mean=(0.5, 0.4, 0.3), std=(0.1, 0.2, 0.3)))
    np.testing.assert_allclose(rgb[0, :, 1, 1].numpy(), [(102 / 255 - 0.5) / 0.1, (9 / 255 - 0.4) / 0.2,
                                                         (200 / 255 - 0.3) / 0.3], rtol=1e-5)
    # the float twin (feature visualisation) sees a colour image's luma, as a decoded file would be
    img = torch.tensor([0.2, 0.6, 1.0]).view(1, 3, 1, 1)
    one = normalize_float(img, Preprocessing("custom", 1, channels=1, mean=(0.0,), std=(1.0,)))
    assert one.shape == (1, 1, 1, 1) and abs(float(one) - (0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 1.0)) < 1e-5


def test_grey_pixels_and_pad_colour():
    prep = Preprocessing("custom", 8, "pad", channels=1, mean=(0.5,), std=(0.2,))
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (4, 8, 3), dtype=np.uint8))
    px = to_pixels(img, prep)
    assert px.shape == (8, 8, 3) and (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
    assert pad_color(prep) == (128, 128, 128)
    assert (px[0] == 128).all()  # the pad rows: the mean grey


def test_resolve_layers_and_store_records():
    # weights' preset < model attribute < command line, key by key
    p = resolve(["torchvision", {"channels": 1, "mean": [0.1307], "std": [0.3081]}, {"std": "0.5"}], 28)
    assert (p.mode, p.channels, p.mean, p.std, p.size) == ("custom", 1, (0.1307,), (0.5,), 28)
    assert resolve(["caffe", None]) == Preprocessing("caffe")
    assert resolve(["caffe", {"channels": 1}]).to_dict() == {"mode": "custom", "size": 224, "resize": "center-crop",
                                                              "channels": 1, "mean": [0.0], "std": [1.0]}
    assert resolve([{"channels": 1}, "torchvision"]) == Preprocessing("torchvision")  # a preset resets
    assert resolve([{"mean": "0.5"}]).mean == (0.5, 0.5, 0.5)
    # presets keep the record stores always had; old records read as 3 channels
    assert Preprocessing("torchvision", 32, "squash").to_dict() == {"mode": "torchvision", "size": 32, "resize": "squash"}
    old = Preprocessing.from_dict({"mode": "caffe", "size": 224, "resize": "center-crop"})
    assert old.channels == 3 and old.mean == ()
    custom = Preprocessing("custom", 28, channels=1, mean=(0.1,), std=(0.3,))
    assert Preprocessing.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    for bad, match in [({"mean": "0.1,0.2"}, "2 values; give 1 or 3"), ({"channels": 2}, "1 or 3"),
                       ({"std": 0}, "std must be finite and > 0"), ({"mean": "a"}, "comma-separated numbers"),
                       ({"chanels": 1}, "unknown preprocessing key"), ("sepia", "unknown preprocessing preset")]:
        with pytest.raises(ValueError, match=match):
            resolve([bad])


def test_store_network_uses_the_store_preprocessing(colour_pngs, trained, tmp_path):
    """A plain one-channel model mined with --channels 1 rebuilds from its store (render, occlude, merge)
    without the option: the store's record is what the network is traced with."""
    from pipeline.render.renderer import load_store_network

    _, weights = trained
    out = tmp_path / "p.h5"
    r = CliRunner().invoke(app, ["run", "--images", str(colour_pngs), "--model", "tiny_models:plain", "--weights",
                                 str(weights), "--channels", "1", "--size", str(S), "--layer", "4", "--k", "2",
                                 "--workers", "0", "--quiet", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    with Store(out) as s:
        net = load_store_network(s)
    assert net.preprocessing.channels == 1 and net.preprocessing.mean == (0.0,)
    with pytest.raises(ValueError, match="1-channel input"):
        load_network("tiny_models:plain", str(weights), S)


def test_visualize_of_a_one_channel_net_is_grey_and_what_it_sees(tmp_path):
    """Feature visualisation optimises an RGB image; a one-channel network sees its luma, and that
    grey image is what is shown: feeding the shown image gives the network the same input."""
    from pipeline.data.preprocess import as_seen
    from pipeline.visualize.optimize import VisualizeConfig, visualize_units

    net = load_network("tiny_models:digits", "random", S)
    prep = net.prep(S)
    img = visualize_units(net, "4", [0, 1], prep, VisualizeConfig(steps=4, progress=False))
    assert img.shape == (2, 3, S, S) and (img[:, 0] == img[:, 1]).all() and (img[:, 1] == img[:, 2]).all()
    colour = torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(normalize_float(as_seen(colour, prep), prep), normalize_float(colour, prep))
    r = CliRunner().invoke(app, ["visualize", "--model", "tiny_models:digits", "--weights", "random", "--layer", "4",
                                 "--features", "0", "--steps", "4", "--size", str(S), "--out", str(tmp_path),
                                 "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    a = np.asarray(Image.open(tmp_path / "4_vis_0.png").convert("RGB")).astype(int)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
