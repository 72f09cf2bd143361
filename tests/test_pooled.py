"""`mine run --pooled L`: per-image global average and max of a layer, stored in /images.

Checked against brute-force pooling (decode, preprocess, a whole forward with a plain hook), and
for the nightly paths: a crash and resume, --update in steps and mine merge give the same store
as one uninterrupted run.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from jobs_util import assert_same_but_pooled_rounding, assert_same_store, cfg, crashed_run, list_file

from pipeline import Store, run
from pipeline.data import Preprocessing, decode_image, normalize, to_pixels
from pipeline.jobs.merge import merge_stores

POOLED = "conv2_2,conv4_1"  # one below the mined layers, one above the deepest (the pass must go on)


@pytest.fixture(scope="module")
def pooled_full(images, net, tmp_path_factory):
    out = tmp_path_factory.mktemp("pooled") / "full.h5"
    run(cfg(images, out, pooled=POOLED), net=net)
    return out


def _brute(net, path, layer):
    prep = Preprocessing("torchvision", 32)
    px = torch.from_numpy(to_pixels(decode_image(open(path, "rb").read(), 32), prep))[None]
    got = {}
    h = net.module(layer).register_forward_hook(lambda m, i, o: got.setdefault("o", o.clone()))
    try:
        with torch.no_grad():
            net.model(normalize(px, prep))
    finally:
        h.remove()
    o = got["o"][0].flatten(1)
    return np.stack([o.mean(1).numpy(), o.amax(1).numpy()])


def test_pooled_equal_brute_force(pooled_full, net, images):
    with Store(pooled_full) as s:
        assert s.attrs["pooled"] == ["conv2_2", "conv4_1"]
        table = s.images()
        assert "pooled_conv2_2" not in table
        paths = [p.decode() if isinstance(p, bytes) else p for p in table["path"]]
        status = [p.decode() if isinstance(p, bytes) else p for p in table["status"]]
        for layer in ("conv2_2", "conv4_1"):
            v = s.pooled(layer)
            assert v.dtype == np.float16 and v.shape == (16, 2, net.layers[layer].channels)
            for j, (p, st) in enumerate(zip(paths, status)):
                if st.startswith("skipped"):
                    assert np.isnan(v[j]).all()
                    continue
                ref = _brute(net, images / p, layer)
                np.testing.assert_allclose(v[j].astype(np.float32), ref, rtol=2e-3, atol=1e-3 * np.abs(ref).max())
        with pytest.raises(ValueError, match="--pooled conv1_1"):
            s.pooled("conv1_1")


def test_resume_after_a_crash_equals_uninterrupted(pooled_full, images, net, tmp_path, monkeypatch):
    store = tmp_path / "s.h5"
    crashed_run(monkeypatch, cfg(images, store, checkpoint_every="1", pooled=POOLED), net)
    assert run(cfg(images, store, pooled=POOLED), net=net).mode == "resume"
    assert_same_store(store, pooled_full)


def test_update_and_merge_equal_one_run(pooled_full, images, net, tmp_path):
    from jobs_util import all_images

    files = all_images(images)
    steps = [list_file(tmp_path / "s1.txt", files[:6]), list_file(tmp_path / "s2.txt", files[4:])]
    ignore = ("created", "seconds", "versions", "images_spec", "inputs_id")
    store = tmp_path / "u.h5"
    for spec in steps:
        run(cfg(spec, None, update=str(store), pooled=POOLED), net=net)
    assert_same_but_pooled_rounding(store, pooled_full, ignore)
    parts = []
    for i, spec in enumerate(steps):
        parts.append(tmp_path / f"p{i}.h5")
        run(cfg(spec, parts[-1], pooled=POOLED), net=net)
    merge_stores(parts, tmp_path / "m.h5", device="cpu")
    assert_same_but_pooled_rounding(tmp_path / "m.h5", pooled_full, ignore)
    with pytest.raises(Exception, match="pooled"):  # a store without pooled vectors cannot be extended with them
        run(cfg(steps[0], tmp_path / "plain.h5"), net=net)
        run(cfg(steps[1], None, update=str(tmp_path / "plain.h5"), pooled=POOLED), net=net)
