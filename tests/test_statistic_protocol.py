"""The statistics protocol (``pipeline.mining.statistic``): for the top-k, the unit statistics and
the pooled vectors, random data split into parts and added to separate statistics, then merged,
equals everything added to one statistic and equals a brute-force reference computed here with
numpy (a sorted top-k with the documented tie-break, ``np.histogram`` on the documented bin edges,
spatial mean and max by hand); ``from_state(state())`` round-trips exactly.

The references depend on nothing of ``pipeline.mining`` but the bin edges (``BINS.edges``, the
documented boundaries) and the float16 clip value.
"""
import numpy as np
import pytest
import torch

from pipeline.mining.pooled import F16_MAX, PooledVectors, pool
from pipeline.mining.statistic import merge_all, merge_layer_states, merge_states
from pipeline.mining.stats import BINS, NBINS, ZERO, UnitStats
from pipeline.mining.topk import EMPTY_KEY, RunningTopK

N, C, K, H = 40, 5, 6, 8
TINY = 2.0 ** -129


def _data(seed: int):
    """N images: (N, C, H, H) activations with ties in the maxima, distinct shuffled int64 keys."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((N, C, H, H)).astype(np.float32)
    out[:, :, 0, 0] = rng.integers(-2, 4, (N, C))  # small integers: many tied maxima, some the only positive
    keys = rng.choice(2 ** 62, N, replace=False).astype(np.int64)
    return out, keys


def _parts(seed: int) -> list[np.ndarray]:
    """Image indices split into 4 parts (one of them empty), each later added in batches of 3."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, N, 2))
    order = rng.permutation(N)
    return [order[:cuts[0]], order[:0], order[cuts[0]:cuts[1]], order[cuts[1]:]]


def _batches(idx: np.ndarray):
    return [idx[i:i + 3] for i in range(0, len(idx), 3)]


def _spatial_max(out: np.ndarray):
    flat = out.reshape(len(out), C, -1)
    return flat.max(2), flat.argmax(2)  # argmax: the first position of the maximum


# --- the three statistics, fed the same way ------------------------------------------------

def _add_topk(t: RunningTopK, out, keys, idx) -> None:
    v, p = _spatial_max(out[idx])
    t.add(torch.from_numpy(v), torch.from_numpy(keys[idx]), torch.from_numpy(p))


def _add_stats(s: UnitStats, out, keys, idx) -> None:
    s.add(torch.from_numpy(out[idx]))


def _add_pooled(p: PooledVectors, out, keys, idx) -> None:
    p.add(torch.from_numpy(keys[idx]), pool(torch.from_numpy(out[idx])))


KINDS = {
    "topk": (lambda: RunningTopK(C, K), _add_topk),
    "stats": (lambda: UnitStats(C), _add_stats),
    "pooled": (lambda: PooledVectors(C, "l"), _add_pooled),
}


def _filled(kind: str, out, keys, idx):
    new, add = KINDS[kind]
    s = new()
    for b in _batches(idx):
        add(s, out, keys, b)
    return s


def _as_arrays(result) -> list[np.ndarray]:
    """A result (a dict of tensors/arrays, a tuple of arrays) as a list of numpy arrays."""
    items = result.values() if isinstance(result, dict) else result
    return [np.asarray(v) for v in items]


def _assert_same(a, b) -> None:
    for x, y in zip(_as_arrays(a), _as_arrays(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# --- brute-force references ------------------------------------------------------------------

def _reference_topk(out, keys):
    """Per channel the k best images: larger spatial maximum first, then smaller key; empty
    slots (fewer images than k) value -inf, key -1, position -1."""
    v, p = _spatial_max(out)
    values = np.full((C, K), -np.inf, np.float32)
    ks, ps = np.full((C, K), EMPTY_KEY, np.int64), np.full((C, K), -1, np.int64)
    for c in range(C):
        best = sorted(range(len(out)), key=lambda i: (-v[i, c], keys[i]))[:K]
        values[c, :len(best)], ks[c, :len(best)], ps[c, :len(best)] = v[best, c], keys[best], p[best, c]
    return {"values": values, "keys": ks, "pos": ps}


def _numpy_hist(x: np.ndarray) -> np.ndarray:
    """The documented bins: per sign, magnitudes in [lo, hi) of ``BINS.edges``; zero |x| < 2^-129."""
    x = x.astype(np.float64)
    mag = BINS.edges[ZERO + 1:]
    h = np.zeros(NBINS, np.int64)
    h[ZERO] = np.sum(np.abs(x) < TINY)
    h[ZERO + 1:] = np.histogram(x[x >= TINY], mag)[0]
    h[:ZERO] = np.histogram(-x[x <= -TINY], mag)[0][::-1]
    return h


def _reference_stats(out):
    """Histograms of the grid positions (every ceil(H/6)-th row and column), firing counts
    (images whose spatial maximum is positive), images."""
    s = -(-H // 6)
    grid = out[:, :, ::s, ::s]
    hist = np.stack([_numpy_hist(grid[:, c].ravel()) for c in range(C)])
    return {"hist": hist, "fired": (out.reshape(len(out), C, -1).max(2) > 0).sum(0).astype(np.int64),
            "images": len(out)}


def _reference_pooled(out, keys):
    """Keys sorted, rows (n, 2, C) float16: spatial mean and max, clipped to float16's range."""
    order = np.argsort(keys)
    flat = out[order].reshape(len(out), C, -1).astype(np.float64)
    rows = np.stack([flat.mean(2), flat.max(2)], 1)
    return keys[order], np.clip(rows, -F16_MAX, F16_MAX).astype(np.float16)


# --- the protocol -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", list(KINDS))
def test_parts_merged_equal_one_statistic_and_the_brute_force(kind, seed):
    out, keys = _data(seed)
    parts = [_filled(kind, out, keys, idx) for idx in _parts(seed)]
    one = _filled(kind, out, keys, np.arange(N))
    merged = merge_all(KINDS[kind][0](), parts)
    _assert_same(merged.result(), one.result())
    shuffled = [parts[i] for i in np.random.default_rng(seed).permutation(len(parts))]
    _assert_same(merge_all(KINDS[kind][0](), shuffled).result(), one.result())  # any order

    if kind == "topk":
        _assert_same(one.result(), _reference_topk(out, keys))
    elif kind == "stats":
        _assert_same(one.result(), _reference_stats(out))
    else:
        want_keys, want_rows = _reference_pooled(out, keys)
        got_keys, got_rows = one.result()
        np.testing.assert_array_equal(got_keys, want_keys)
        assert got_rows.dtype == np.float16
        np.testing.assert_allclose(got_rows.astype(np.float32), want_rows.astype(np.float32), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", list(KINDS))
def test_from_state_of_state_round_trips_exactly(kind):
    out, keys = _data(3)
    s = _filled(kind, out, keys, np.arange(N))
    state = s.state()
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())
    again = type(s).from_state(state)
    _assert_same(again.state(), state)
    _assert_same(again.result(), s.result())
    # and from numpy arrays (what a checkpoint file gives back)
    _assert_same(type(s).from_state({n: v.numpy() for n, v in state.items()}).state(), state)
    # an empty statistic too
    empty = KINDS[kind][0]()
    _assert_same(type(empty).from_state(empty.state()).state(), empty.state())


@pytest.mark.parametrize("kind", ["topk", "pooled"])
def test_an_image_in_two_parts_is_kept_once(kind):
    """Overlapping parts (a resumed torchrun job's checkpoints, ``mine merge`` of overlapping
    shards): the top-k and the pooled vectors keep an image once, so the merge is the union."""
    out, keys = _data(4)
    a = _filled(kind, out, keys, np.arange(0, 30))
    b = _filled(kind, out, keys, np.arange(20, N))
    one = _filled(kind, out, keys, np.arange(N))
    _assert_same(merge_all(a, [b]).result(), one.result())


def test_merge_states_and_layer_states_fold_like_merge():
    """The generic loops (checkpoint union, resume, torchrun gather) equal merging statistics."""
    out, keys = _data(5)
    parts = [_filled("topk", out, keys, idx) for idx in _parts(5)]
    one = _filled("topk", out, keys, np.arange(N))
    _assert_same(merge_states(RunningTopK(C, K), [p.state() for p in parts]).result(), one.result())
    layered = merge_layer_states(UnitStats, [{"l": _filled("stats", out, keys, idx).state()} for idx in _parts(5)])
    _assert_same(UnitStats.from_state(layered["l"]).result(), _reference_stats(out))
