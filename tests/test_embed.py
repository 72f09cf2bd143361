"""`mine embed`: PCA against numpy's SVD, seeded t-SNE, brute-force k-NN, and the command on a store."""
from __future__ import annotations

import csv
from collections import Counter

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.analyses.embed import file_labels, folder_labels, knn_accuracy, majority_rate, pca, tsne
from pipeline.cli import app


def _toy(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = [["cat", "dog", "car"][i % 3] for i in range(n)]
    centres = {c: rng.normal(size=d) for c in ("cat", "dog", "car")}
    x = np.stack([centres[c] * 0.6 + rng.normal(size=d) for c in labels]).astype(np.float32)
    return x, labels


def _brute_knn(x, labels, k):
    n = len(x)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    right = 0
    for i in range(n):
        sims = [(float(u[i] @ u[j]), j) for j in range(n) if j != i]
        near = [j for _, j in sorted(sims, key=lambda t: -t[0])[:k]]
        votes = Counter(labels[j] for j in near)
        best = max(votes.values())
        tied = {c for c, v in votes.items() if v == best}
        pred = next(labels[j] for j in near if labels[j] in tied)  # the tied category with the nearest member
        right += pred == labels[i]
    return right / n


@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_equals_brute_force(k):
    x, labels = _toy()
    assert knn_accuracy(x, labels, k, block=7) == pytest.approx(_brute_knn(x, labels, k))
    assert majority_rate(labels) == pytest.approx(1 / 3)


def test_pca_equals_numpy_svd_up_to_sign():
    x, _ = _toy(40, 10, 1)
    c = x - x.mean(0)
    u, s, vt = np.linalg.svd(c.astype(np.float64), full_matrices=False)
    ref = c @ vt[:2].T
    got = pca(x, 2)
    for j in range(2):
        sign = np.sign(got[:, j] @ ref[:, j])
        np.testing.assert_allclose(got[:, j] * sign, ref[:, j], rtol=1e-4, atol=1e-4)


def test_tsne_is_seeded_and_reproducible():
    x, labels = _toy(40, 60, 2)
    a, b = tsne(x, seed=3), tsne(x, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (40, 2) and np.isfinite(a).all()
    # init="pca": the start is deterministic too, so the map depends on the data alone


def test_labels_from_folders_and_a_file(tmp_path):
    paths = ["cats/a.jpg", "dogs/b.jpg", "c.jpg"]
    assert folder_labels(paths) == ["cats", "dogs", "."]
    f = tmp_path / "l.csv"
    with open(f, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "category"], ["cats/a.jpg", "animal"], ["c.jpg", "other"]])
    assert file_labels(paths, f) == ["animal", "?", "other"]


def test_embed_command_on_a_store(tmp_path):
    from pipeline import RunConfig, run

    rng = np.random.default_rng(5)
    for cat, base in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (tmp_path / "imgs" / cat).mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.array(base) + rng.integers(-30, 30, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cat / f"{i}.png")
    store = tmp_path / "s.h5"
    run(RunConfig(images=str(tmp_path / "imgs"), layer="conv2_2", model="vgg16", weights="random", size=32,
                  workers=0, batch_size=4, k=2, progress=False, out=str(store), pooled="conv3_1"))
    r = CliRunner().invoke(app, ["embed", str(store), "--method", "pca", "--baseline", "12", "--k", "3"])
    assert r.exit_code == 0, r.output
    assert "3-NN, conv3_1 avg (12 images)" in r.output and "random weights (12 images)" in r.output
    with h5py.File(store) as f:
        xy = f["embed/conv3_1"][()]
        assert xy.shape == (12, 2) and np.isfinite(xy).all()
        assert f["embed/conv3_1"].attrs["method"] == "pca"
    for name in ("conv3_1_map.png", "conv3_1_categories.png"):
        img = np.asarray(Image.open(tmp_path / "s-render" / "embed" / name).convert("RGB")).astype(float)
        assert img.std() > 5
    from pipeline import Store
    with Store(store) as s:  # still a valid, complete store
        assert s.attrs["pooled"] == ["conv3_1"]
    r = CliRunner().invoke(app, ["embed", str(store), "--layer", "conv2_2"])
    assert r.exit_code == 2 and "--pooled conv2_2" in r.output
