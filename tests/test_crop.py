"""The effective crop (render.crop) against brute force, and the high-frequency measure (scripts/hf_share.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pipeline.render.crop import SHARE, best_square, cut, effective_boxes, energy, image_boxes, min_side, side_holding

_spec = importlib.util.spec_from_file_location("hf_share", Path(__file__).parents[1] / "scripts" / "hf_share.py")
hf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf)


def brute_side(e: np.ndarray, share: float) -> int:
    """Smallest s with some s x s square holding ``share`` of the energy, by summing every square."""
    total = e.sum()
    t = e.shape[0]
    for s in range(1, t + 1):
        for y in range(t - s + 1):
            for x in range(t - s + 1):
                if e[y:y + s, x:x + s].sum() >= share * total * (1 - 1e-9):
                    return s
    return t


def brute_square(e: np.ndarray, s: int) -> tuple[int, int]:
    """The most energetic s x s square; ties by distance of its centre to the centroid, then row-major."""
    t = e.shape[0]
    sums = {(y, x): e[y:y + s, x:x + s].sum() for y in range(t - s + 1) for x in range(t - s + 1)}
    best = max(sums.values())
    tied = [p for p, v in sums.items() if v >= best - 1e-9 * e.sum()]
    ys, xs = np.indices(e.shape)
    cy, cx = (e * ys).sum() / e.sum(), (e * xs).sum() / e.sum()
    dist = {p: (p[0] + (s - 1) / 2 - cy) ** 2 + (p[1] + (s - 1) / 2 - cx) ** 2 for p in tied}
    near = min(dist.values())
    return min(p for p in tied if dist[p] <= near + 1e-9)


@pytest.mark.parametrize("seed", range(12))
def test_side_and_square_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(3, 13))
    e = np.zeros((t, t))
    n = int(rng.integers(1, 6))  # a few blobs of energy, sometimes ties (equal blobs)
    for _ in range(n):
        e[rng.integers(0, t), rng.integers(0, t)] += float(rng.choice([1.0, 2.0, rng.random()]))
    share = float(rng.choice([0.5, 0.9, 1.0]))
    s = side_holding(e, share)
    assert s == brute_side(e, share)
    y, x = best_square(e, s)
    assert (y, x) == brute_square(e, s)
    assert e[y:y + s, x:x + s].sum() >= share * e.sum() * (1 - 1e-9)


def test_effective_boxes_hold_the_share_and_respect_the_minimum():
    rng = np.random.default_rng(3)
    tiles = np.zeros((4, 3, 64, 64), np.float32)
    for i, (cy, cx, r) in enumerate([(10, 12, 3), (40, 50, 6), (32, 32, 10), (60, 2, 2)]):
        yy, xx = np.indices((64, 64))
        tiles[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) * rng.normal(1, 0.1, (3, 1, 1))
    assert min_side(224) == 32 and min_side(28) == 4 and min_side(64) == 10
    side, corners = effective_boxes(tiles, 32)
    e = energy(tiles)
    assert 32 <= side <= 64
    assert side == max(max(brute_side(m, SHARE) for m in e), 32)
    for m, (y, x) in zip(e, corners):
        assert m[y:y + side, x:x + side].sum() >= SHARE * m.sum() * (1 - 1e-9)
    small = np.zeros((1, 3, 5, 5), np.float32)
    small[0, :, 2, 2] = 1
    assert effective_boxes(small, 32)[0] == 5  # never more than the tile, the minimum capped at it
    assert effective_boxes(small, 1)[0] == 1


def test_cut_takes_the_same_square_of_projection_and_patch():
    rng = np.random.default_rng(0)
    tiles = rng.normal(size=(2, 3, 10, 10)).astype(np.float32)
    patches = rng.integers(0, 255, (2, 10, 10, 3)).astype(np.uint8)
    t, p = cut(tiles, patches, 4, np.array([[1, 2], [6, 0]]))
    np.testing.assert_array_equal(t[0], tiles[0, :, 1:5, 2:6])
    np.testing.assert_array_equal(p[1], patches[1, 6:10, 0:4])


def test_image_boxes_clip_to_the_image():
    b = image_boxes(np.array([-5, 10, 0]), np.array([3, 200, 0]), 40, 224, np.array([True, True, False]))
    np.testing.assert_array_equal(b, [[0, 3, 35, 43], [10, 200, 50, 224], [-1, -1, -1, -1]])


def test_hf_share_separates_stripes_from_blobs():
    yy, xx = np.indices((64, 64))
    stripes = np.cos(2 * np.pi * xx / 4)[None].repeat(3, 0)  # a period-4 stride grid: all power at 1/4
    checker = ((yy + xx) % 2 * 2 - 1)[None].astype(float)  # period 2: all power at 1/2
    blob = np.exp(-((yy - 32) ** 2 + (xx - 30) ** 2) / (2 * 6.0 ** 2))[None].repeat(3, 0)
    assert hf.hf_share(stripes) == pytest.approx(1.0)
    assert hf.hf_share(checker) == pytest.approx(1.0)
    assert hf.hf_share(blob) < 0.01
    mixed = blob + 0.05 * stripes  # the share is the power ratio, computed by hand from Parseval
    p_blob = ((blob.sum(0) - blob.sum(0).mean()) ** 2).sum()
    p_str = ((0.05 * stripes.sum(0)) ** 2).sum()
    assert hf.hf_share(mixed) == pytest.approx(p_str / (p_blob + p_str), rel=0.02)
    assert hf.median_share([stripes, blob, blob, np.zeros_like(blob)]) == pytest.approx(hf.hf_share(blob))


@pytest.mark.parametrize("method", ["gradient", "guided"])
def test_shift_average_equals_its_definition_one_sample_at_a_time(method):
    """project_graph(shifts=2) == the mean over the 4 one-pixel moves of the image, each projected alone
    (plain autograd for the gradient; the guided rule for one entry at a time), moved back by numpy."""
    import torch

    from pipeline.deconv import Entries, project_graph
    from pipeline.models.weights import load_network

    torch.manual_seed(0)
    net = load_network("resnet18", "random", 32)
    layer = "layer1.0"
    x = torch.randn(2, 3, 32, 32)
    ch, yy, xx, v = torch.tensor([3, 7]), torch.tensor([2, 5]), torch.tensor([4, 1]), torch.tensor([1.5, 0.5])
    got = project_graph(net, layer, x, Entries(ch, yy, xx, v), method, shifts=2).numpy()
    want = np.zeros_like(got)
    for b in range(2):
        for dy in range(2):
            for dx in range(2):
                img = np.pad(x[b].numpy(), ((0, 0), (0, dy), (0, dx)), mode="edge")[:, dy:dy + 32, dx:dx + 32]
                g = project_graph(net, layer, torch.from_numpy(img)[None],
                                  Entries(ch[b:b + 1], yy[b:b + 1], xx[b:b + 1], v[b:b + 1]), method).numpy()[0]
                back = np.zeros_like(g)
                back[:, dy:, dx:] = g[:, :32 - dy, :32 - dx]
                want[b] += back / 4
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    if method == "gradient":  # the one-sample projection itself is the plain autograd gradient
        xi = x[:1].clone().requires_grad_(True)
        out = {}
        h = net.module(layer).register_forward_hook(lambda m, i, o: out.setdefault("o", o))
        net.model(xi)
        h.remove()
        (g,) = torch.autograd.grad(out["o"][0, 3, 2, 4] * 1.5, xi)
        np.testing.assert_allclose(project_graph(net, layer, x[:1], Entries(ch[:1], yy[:1], xx[:1], v[:1]), method).numpy(),
                                   g.numpy(), rtol=1e-4, atol=1e-6)
