"""Unit statistics: histograms equal numpy's over brute-force activations, quantiles lie in
the stated bracket, and resume / --update / merge give identical statistics.

References are independent of ``pipeline.mining.stats``: activations come from plain forward
hooks on the network's modules, histograms from ``numpy.histogram`` on the documented edges,
quantiles from ``numpy.quantile(method="inverted_cdf")``.
"""
import shutil

import h5py
import numpy as np
import torch
from jobs_util import LAYERS, SIZE, all_images, cfg, list_file
from typer.testing import CliRunner

from pipeline import Store, run
from pipeline.cli import app
from pipeline.data import ImageDataset, normalize, resolve_images
from pipeline.data.preprocess import Preprocessing
from pipeline.jobs.merge import merge_stores
from pipeline.mining.stats import BINS, NBINS, ZERO, UnitStats
from pipeline.models.weights import load_network

TINY = 2.0 ** -129


def numpy_hist(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The documented bins with numpy: magnitudes in [lo, hi) per sign, zero |x| < 2^-129, overflow with inf."""
    x = x.astype(np.float64)
    mag = edges[ZERO + 1:]  # 2^-129, 2^-24, ..., 2^24, inf
    out = np.zeros(NBINS, np.int64)
    out[ZERO] = np.sum(np.abs(x) < TINY)
    big = 2.0 ** 127  # the overflow bins end at 2^128 and also hold +-inf
    out[ZERO + 1:] = np.histogram(np.minimum(x[x >= TINY], big), mag)[0]
    out[:ZERO] = np.histogram(np.minimum(-x[x <= -TINY], big), mag)[0][::-1]
    return out


def on_grid(a: np.ndarray) -> np.ndarray:
    """The positions the statistics count: every s-th row and column, s = ceil(size / 6)."""
    return a[:, :, ::-(-a.shape[2] // 6), ::-(-a.shape[3] // 6)]


def brute_force(net, images, layers):
    """Every activation of every used image, from forward hooks: layer -> (N, C, H, W)."""
    src = resolve_images(str(images))
    ds = ImageDataset(src, Preprocessing(net.preprocessing_mode, SIZE))
    seen, pix = set(), []
    for i in range(len(ds)):
        r = ds[i]
        if r["ok"] and r["key"] not in seen:
            seen.add(r["key"])
            pix.append(r["pixels"])
    acts = {}
    hooks = [net.module(n).register_forward_hook(lambda m, i, o, n=n: acts.setdefault(n, o.clone())) for n in layers]
    try:
        with torch.inference_mode():
            net.model(normalize(torch.stack(pix), Preprocessing(net.preprocessing_mode, SIZE)))
    finally:
        for h in hooks:
            h.remove()
    return {n: acts[n].numpy() for n in layers}


def test_bins_on_awkward_values_equal_numpy():
    edges = BINS.edges
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.uniform(-10, 10, 20000),
                        [0.0, -0.0, 1e-40, -1e-40, 1.0, -1.0, 1.125, -1.125, 2.0 ** 24, -2.0 ** 24, np.inf, -np.inf,
                         2.0 ** -24, -(2.0 ** -24), TINY, -TINY]]).astype(np.float32)
    s = UnitStats(1)
    s.add(torch.from_numpy(x).view(1, 1, -1))
    np.testing.assert_array_equal(s.result()["hist"][0], numpy_hist(x, edges))
    # bfloat16 activations fall in the bins of their float32 values
    b = torch.from_numpy(x).to(torch.bfloat16)
    s16 = UnitStats(1)
    s16.add(b.view(1, 1, -1))
    np.testing.assert_array_equal(s16.result()["hist"][0], numpy_hist(b.float().numpy(), edges))


def test_every_bit_pattern_of_the_top_12_bits_falls_in_numpys_bin():
    """Every raw key (sign, exponent, top 3 mantissa bits), at the low and high end of its
    range of float32 values and in between, binned as numpy bins the value; NaN (no numpy
    bin) goes to the overflow bin of its sign, as the module docstring says."""
    key = np.arange(4096, dtype=np.uint32) << 20
    low = np.array([0, 1, 0x7FFFF, 0xFFFFF], dtype=np.uint32)
    x = (key[:, None] | low[None, :]).ravel().view(np.float32)
    nan = np.isnan(x)
    s = UnitStats(1)
    s.add(torch.from_numpy(x[~nan].copy()).view(1, 1, -1))
    np.testing.assert_array_equal(s.result()["hist"][0], numpy_hist(x[~nan], BINS.edges))
    s = UnitStats(1)
    s.add(torch.from_numpy(x[nan].copy()).view(1, 1, -1))
    neg = int(np.signbit(x[nan]).sum())
    assert s.result()["hist"][0][[0, NBINS - 1]].tolist() == [neg, int(nan.sum()) - neg]


def test_histograms_quantiles_firing_equal_brute_force(images, net, full):
    acts = brute_force(net, images, LAYERS.split(","))
    thinned = False
    with Store(full) as s:
        for layer, a in acts.items():
            edges = s.f[f"layers/{layer}/hist"].attrs["edges"]
            u = s.unit_stats(layer, q=0.99)
            assert u.images == a.shape[0] == 14
            g = on_grid(a)
            thinned = thinned or g.shape[2] < a.shape[2]
            per_channel = g.transpose(1, 0, 2, 3).reshape(a.shape[1], -1)
            ref = np.stack([numpy_hist(v, edges) for v in per_channel])
            np.testing.assert_array_equal(u.hist, ref, err_msg=layer)
            spatial_max = a.reshape(a.shape[0], a.shape[1], -1).max(2)
            np.testing.assert_array_equal(u.fired, (spatial_max > 0).sum(0))
            np.testing.assert_array_equal(u.firing, (spatial_max > 0).mean(0))
            assert u.dead == [c for c in range(a.shape[1]) if spatial_max[:, c].max() <= 0]
            for q in (0.5, 0.99, 0.999):
                uq = s.unit_stats(layer, q=q)
                exact = np.quantile(per_channel.astype(np.float64), q, axis=1, method="inverted_cdf")
                assert np.all((uq.quantile_lo <= exact) & (exact <= uq.quantile_hi)), (layer, q)
                regular = np.abs(exact) >= 2.0 ** -24
                assert np.all(np.abs(uq.quantile - exact)[regular] <= np.abs(exact)[regular] / 8)
                assert np.all(uq.quantile[exact == 0] == 0)
            true_mean = per_channel.astype(np.float64).mean(1)
            bound = np.abs(per_channel).astype(np.float64).mean(1) / 16 + 2.0 ** -25
            assert np.all(np.abs(u.mean - true_mean) <= bound)
    assert thinned, "the test covers a map larger than the grid"


def stats_of(path):
    with Store(path) as s:
        return {n: s.stats_state(n) for n in s.layers}


def assert_same_stats(a, b):
    sa, sb = stats_of(a), stats_of(b)
    assert sa.keys() == sb.keys()
    for n in sa:
        assert sa[n]["images"] == sb[n]["images"]
        np.testing.assert_array_equal(sa[n]["hist"], sb[n]["hist"], err_msg=n)
        np.testing.assert_array_equal(sa[n]["fired"], sb[n]["fired"], err_msg=n)


def test_overlapping_merge_and_update_give_identical_statistics(images, net, full, tmp_path, caplog, monkeypatch):
    files = all_images(images)
    l1, l2 = list_file(tmp_path / "l1.txt", files[:10]), list_file(tmp_path / "l2.txt", files[4:])
    a, b = run(cfg(l1, tmp_path / "a.h5"), net=net).store, run(cfg(l2, tmp_path / "b.h5"), net=net).store
    merge_stores([a, b], tmp_path / "m.h5")
    assert_same_stats(tmp_path / "m.h5", full)
    shutil.copy(a, tmp_path / "u.h5")
    run(cfg(images, None, update=str(tmp_path / "u.h5")), net=net)
    assert_same_stats(tmp_path / "u.h5", full)
    # shared images re-read from their source files when no store kept their pixels
    import pipeline.jobs.unitstats as us

    fetcher = us._fetcher
    monkeypatch.setattr(us, "_fetcher", lambda key, parts, paths, prep: fetcher(key, [], paths, prep))
    merge_stores([a, b], tmp_path / "m1.h5")
    assert_same_stats(tmp_path / "m1.h5", full)
    # ... and when those files are gone too, they stay counted twice, and info says so
    for f in files[4:10]:
        f.rename(f.with_suffix(".gone"))
    try:
        merge_stores([a, b], tmp_path / "m2.h5")
    finally:
        for f in files[4:10]:
            f.with_suffix(".gone").rename(f)
    with Store(tmp_path / "m2.h5") as m, Store(full) as s:
        twice = m.stats_state(m.layers[0])["images"] - s.stats_state(s.layers[0])["images"]
    assert twice == 5 and "count them twice" in caplog.text  # files[4:10]: 5 contents (img03 twice)
    res = CliRunner().invoke(app, ["info", str(tmp_path / "m2.h5")])
    assert "(5 counted twice" in res.output


def test_resume_keeps_statistics_identical(images, net, full, tmp_path, monkeypatch):
    from jobs_util import crashed_run

    out = tmp_path / "r.h5"
    crashed_run(monkeypatch, cfg(images, out, checkpoint_every="1"), net)
    run(cfg(images, out, batch_size=5), net=net)
    assert_same_stats(out, full)


def without_stats(src, dst):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        del f["stats"]
        for g in f["layers"].values():
            del g["hist"], g["fires"]
    return dst


def test_old_store_without_statistics(images, net, full, tmp_path, caplog):
    old = without_stats(full, tmp_path / "old.h5")
    res = CliRunner().invoke(app, ["info", str(old)])
    assert res.exit_code == 0 and "no statistics" in res.output
    with Store(old) as s:
        assert s.unit_stats(s.layers[0]) is None
    out = tmp_path / "u.h5"
    run(cfg(images, out, update=str(old)), net=net)
    with Store(out) as s:
        assert not s.has_stats()
    assert "no unit statistics" in caplog.text


def test_info_lists_dead_units(images, tmp_path):
    net = load_network("vgg16", "random", SIZE)
    conv = net.model.get_submodule("features.2")  # conv1_2 of VGG16, before its ReLU
    assert isinstance(conv, torch.nn.Conv2d) and net.layers["conv1_2"].module == "features.3"
    with torch.no_grad():
        conv.bias[[3, 17]] = -1e6  # never positive after the ReLU
    out = run(cfg(images, tmp_path / "d.h5", layer="conv1_2"), net=net).store
    res = CliRunner().invoke(app, ["info", str(out)])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("dead units"))
    assert line.split()[2:] == ["conv1_2", "2", "(3,", "17)"]
    assert "activation histograms over 14 images" in res.output


def test_a_checkpoint_counted_by_another_bins_version_gives_no_statistics(tmp_path, caplog):
    """Resuming a checkpoint whose statistics count other positions (written before bins
    version 3: no ``bins_version`` in its meta) must not add to them: no statistics, a warning."""
    import json

    from pipeline.jobs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from pipeline.mining.topk import RunningTopK

    st = UnitStats(3)
    st.add(torch.randn(2, 3, 8, 8))
    ck = Checkpoint({"images": {"count": 2}}, False, 1, {}, {"l": RunningTopK(3, 2).state()}, {},
                    {"part": {"l": st.state()}})
    save_checkpoint(tmp_path / "ck", ck)
    assert load_checkpoint(tmp_path / "ck").stats["part"]["l"]["images"] == 2
    with np.load(tmp_path / "ck") as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    del meta["bins_version"]
    arrays["meta"] = np.array(json.dumps(meta))
    with open(tmp_path / "old", "wb") as fh:
        np.savez(fh, **arrays)
    assert load_checkpoint(tmp_path / "old").stats is None
    assert "bins version 1 or 2" in caplog.text and "no statistics" in caplog.text
