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
from pipeline.analyses.knn import Search
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
    assert knn_accuracy(x, labels, k, search=Search(block=7)) == pytest.approx(_brute_knn(x, labels, k))
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
    r = CliRunner().invoke(app, ["embed", str(store), "--embedding", "pca", "--baseline", "12", "--neighbors", "3"])
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
        from pipeline.analyses.embed import features  # read in chunks of 5 rows = the whole array at once
        whole = s.pooled("conv3_1")
        ok = np.array([v.decode() == "ok" for v in s.f["images/status"][()]])
        for pool, ref in (("avg", whole[ok][:, 0]), ("max", whole[ok][:, 1]), ("both", whole[ok].reshape(ok.sum(), -1))):
            x, rows = features(s, "conv3_1", pool, chunk=5)
            np.testing.assert_array_equal(rows, np.flatnonzero(ok))
            np.testing.assert_array_equal(x, ref.astype(np.float32))
    r = CliRunner().invoke(app, ["embed", str(store), "--layer", "conv2_2"])
    assert r.exit_code == 2 and "--pooled conv2_2" in r.output


# --- at scale: sampled k-NN, randomised PCA, openTSNE (issue 24) -------------------------------

def _brute_knn_queries(x, labels, k, queries):
    """Brute force over the given query rows against all rows (leave-one-out, the rule above)."""
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    right = 0
    for i in queries:
        sims = [(float(u[i] @ u[j]), j) for j in range(len(x)) if j != i]
        near = [j for _, j in sorted(sims, key=lambda t: -t[0])[:k]]
        votes = Counter(labels[j] for j in near)
        best = max(votes.values())
        pred = next(labels[j] for j in near if votes[labels[j]] == best)
        right += pred == labels[i]
    return right / len(queries)


@pytest.mark.parametrize("sample", [0, 60, 1000])
def test_sampled_knn_with_every_query_equals_the_exact_knn(sample):
    x, labels = _toy()
    ref = _brute_knn(x, labels, 5)
    for block, col_block in ((7, 11), (2048, 16384), (1, 60)):  # blocks across, inside and at the edges
        assert knn_accuracy(x, labels, 5, sample=sample, search=Search(block=block, col_block=col_block)) == pytest.approx(ref)


@pytest.mark.parametrize("seed", [0, 7])
def test_sampled_knn_equals_brute_force_over_the_same_seeded_queries(seed):
    x, labels = _toy(90, 12, 3)
    queries = np.sort(np.random.default_rng(seed).permutation(90)[:25])  # the documented sampling rule
    ref = _brute_knn_queries(x, labels, 4, queries)
    assert knn_accuracy(x, labels, 4, sample=25, seed=seed, search=Search(block=6, col_block=13)) == pytest.approx(ref)
    assert knn_accuracy(x.astype(np.float16), labels, 4, sample=25, seed=seed) == pytest.approx(
        _brute_knn_queries(x.astype(np.float16).astype(np.float32), labels, 4, queries))


def test_knn_leaves_the_query_out_but_counts_an_equal_vector():
    from pipeline.analyses.knn import neighbours

    x, _ = _toy(30, 8, 4)
    x[5] = x[17]  # another image with the same vector: its nearest neighbour, at similarity 1
    got = neighbours(x, np.array([5, 17, 20]), 2, Search(block=2, col_block=4)).numpy()
    assert got[0, 0] == 17 and got[1, 0] == 5 and 20 not in got[2]
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u[20] @ u.T
    sims[20] = -np.inf
    assert list(got[2]) == list(np.argsort(-sims, kind="stable")[:2])


def test_randomised_pca_equals_the_exact_pca_within_tolerance():
    from scipy.linalg import subspace_angles

    rng = np.random.default_rng(6)
    x = (rng.normal(size=(400, 6)) * [9, 7, 5, 3, 2, 1.5]) @ rng.normal(size=(6, 64)) + rng.normal(size=(400, 64)) * 0.3
    x = x.astype(np.float32)
    exact, fast = pca(x, 2, solver="full"), pca(x, 2, seed=1, solver="randomized")
    assert np.degrees(subspace_angles(exact.astype(np.float64), fast.astype(np.float64))).max() < 0.1
    c = x - x.mean(0)
    _, s, vt = np.linalg.svd(c.astype(np.float64), full_matrices=False)
    for got in (exact, fast):  # the same reconstruction error as the two leading singular vectors
        axes = np.linalg.lstsq(got.astype(np.float64), c, rcond=None)[0]
        err = np.linalg.norm(c - got @ axes) ** 2
        assert err == pytest.approx((s[2:] ** 2).sum(), rel=1e-4)
    np.testing.assert_array_equal(fast, pca(x, 2, seed=1, solver="randomized"))  # seeded


def test_opentsne_is_seeded_and_separates_clusters():
    pytest.importorskip("openTSNE")
    from pipeline.analyses.tsne import tsne_library

    assert tsne_library(100) == "sklearn" and tsne_library(100_000) == "opentsne"
    x, labels = _toy(150, 60, 8)
    x[:, :3] += 6.0 * (np.array([{"cat": 0, "dog": 1, "car": 2}[c] for c in labels])[:, None] == np.arange(3))
    a, b = tsne(x, seed=2, library="opentsne"), tsne(x, seed=2, library="opentsne")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (150, 2) and np.isfinite(a).all()
    assert knn_accuracy(a, labels, 5) > 0.9 and _brute_knn(x, labels, 5) > 0.9  # the map keeps the categories


@pytest.mark.parametrize("old,new", [("--k", "--neighbors"), ("--method", "--embedding")])
def test_old_embed_option_names_say_the_new_one(tmp_path, old, new):
    r = CliRunner().invoke(app, ["embed", str(tmp_path / "none.h5"), old, "3"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and f"{old} is now {new}" in r.output, r.output


def test_euclidean_knn_of_a_map_equals_brute_force():
    from pipeline.analyses.knn import neighbours

    xy = np.random.default_rng(9).normal(size=(80, 2)).astype(np.float32) * [3, 1]
    d = ((xy[:, None].astype(np.float64) - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    want = np.argsort(d, axis=1, kind="stable")[:, :4]
    got = neighbours(xy, np.arange(80), 4, Search("euclidean", block=9, col_block=17)).numpy()
    np.testing.assert_array_equal(got, want)
