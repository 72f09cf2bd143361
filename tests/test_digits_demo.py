"""scripts/digits_demo.py end to end, shortened (``--quick``: 20 training steps per model, 300 digits
mined): the data against an interpolation of scikit-learn's 8x8 digits computed here, the stores'
top activations against brute force with plain forward hooks, and every picture written."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import Store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _bilinear_20(a: np.ndarray) -> np.ndarray:
    """An 8x8 image sampled at the centres of a 20x20 grid, bilinear, edges clamped (numpy only)."""
    p = np.clip((np.arange(20) + 0.5) * 8 / 20 - 0.5, 0, 7)
    i0 = np.floor(p).astype(int)
    i1, f = np.minimum(i0 + 1, 7), p - i0
    rows = a[i0] * (1 - f)[:, None] + a[i1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]


def _brute_max(model: torch.nn.Module, module: str, x: torch.Tensor) -> torch.Tensor:
    """(N, C): each image's spatial maximum of the output of ``module`` (a forward hook)."""
    got = []
    h = model.get_submodule(module).register_forward_hook(lambda m, i, o: got.append(o.amax((2, 3))))
    with torch.no_grad():
        model(x)
    h.remove()
    return got[0]


def test_digits_demo_quick(tmp_path, capfd):
    from sklearn.datasets import load_digits

    demo = _load("digits_demo")
    models = sys.modules["digits_models"]
    out = tmp_path / "digits"
    res = demo.main(["--out", str(out), "--quick"])
    text = capfd.readouterr().out

    # the data: 1,797 digits, 4 px black frame, the 20 px centre close to an independent upsampling
    d = load_digits()
    with np.load(out / "digits.npz") as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, d.target)
    frame = np.ones((28, 28), bool)
    frame[4:24, 4:24] = False
    assert not images[:, frame].any()
    ref = np.stack([_bilinear_20(a / 16 * 255) for a in d.images])
    centre = images[:, 4:24, 4:24].astype(float)
    assert np.abs(centre - ref).mean() < 10 and np.corrcoef(centre.ravel(), ref.ravel())[0, 1] > 0.99

    # the stores: each channel's best value is the brute-force maximum over the mined digits
    n = demo.QUICK_IMAGES
    for store, factory, weights, layers, mean, std in (
            ("cnn.h5", models.cnn, "cnn.pth", ["conv1", "conv3"], models.MEAN, models.STD),
            ("ae.h5", models.autoencoder, "ae.pth", ["code", "up1", "dec3"], 0.0, 1.0)):
        model = factory().eval()
        model.load_state_dict(torch.load(out / weights, weights_only=True))
        x = (torch.from_numpy(images[:n]).float().div(255).unsqueeze(1) - mean) / std
        with Store(out / store) as s:
            for layer in layers:
                brute = _brute_max(model, layer, x)
                a = s.arrays(layer)
                np.testing.assert_allclose(a["value"][:, 0], brute.amax(0).numpy(), rtol=1e-4, atol=1e-5)
                for c in range(brute.shape[1]):  # the recorded digit reaches that maximum
                    i = int(s.kept_path(int(a["kept"][c, 0])).rsplit("#", 1)[1])
                    assert brute[i, c] == pytest.approx(float(a["value"][c, 0]), rel=1e-4, abs=1e-5)

    # the commands ran and wrote their pictures (grey: one-channel models)
    assert "18 of 18 layers" in text and "dec3" in text  # mine layers --size 28 lists the decoder
    assert "5-NN, random weights" in text and 0 <= res["cnn_accuracy"] <= 1
    for png in ["render-cnn/conv1_overview.png", "render-cnn/conv3_overview.png", "render-ae/code_overview.png",
                "render-ae/up1_overview.png", "render-ae/dec3_0.png", "embed/code_categories.png",
                "embed/code_map.png", "reconstruct-ae/sheet.png", "reconstruct-cnn/sheet.png", "ae_outputs.png"]:
        a = np.asarray(Image.open(out / png).convert("RGB")).astype(int)
        assert a.std() > 5, png
        if png.startswith("render"):
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all(), png
