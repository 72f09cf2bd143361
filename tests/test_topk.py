"""Streaming top-k against a brute-force sort of every candidate."""
import pytest
import torch

from pipeline.mining.topk import EMPTY_KEY, RunningTopK


def brute(values, keys, pos, k):
    """values (N, C); order by value desc, key asc; distinct images per channel."""
    out = []
    for c in range(values.shape[1]):
        rows = sorted(range(len(keys)), key=lambda i: (-values[i, c], keys[i]))[:k]
        out.append([(values[i, c], keys[i], pos[i, c]) for i in rows])
    return out


def as_list(t, c):
    r = t.result()
    return [(float(r["values"][c, j]), int(r["keys"][c, j]), int(r["pos"][c, j]))
            for j in range(t.k) if int(r["keys"][c, j]) != EMPTY_KEY]


@pytest.mark.parametrize("k,batch", [(1, 1), (9, 3), (9, 16), (4, 7)])
def test_matches_brute_force_with_ties(k, batch):
    g = torch.Generator().manual_seed(k * 100 + batch)
    n, c = 40, 6
    values = torch.randint(0, 5, (n, c), generator=g).float()  # many ties
    keys = torch.randperm(1000, generator=g)[:n]
    pos = torch.randint(0, 50, (n, c), generator=g)
    t = RunningTopK(c, k)
    perm = torch.randperm(n, generator=g)
    for s in range(0, n, batch):
        i = perm[s:s + batch]
        t.add(values[i], keys[i], pos[i])
    ref = brute(values.numpy(), keys.numpy(), pos.numpy(), k)
    for ch in range(c):
        assert as_list(t, ch) == [(float(v), int(kk), int(p)) for v, kk, p in ref[ch]]


def test_order_of_signed_zeros_infinities_and_extreme_keys_is_the_brute_force_order():
    """The one-integer ordering of ``_offer`` (value bits made monotonic, key ranks) against a
    sort: negative values, -0.0 tying 0.0 (decided by key), +-inf, NaN, keys spanning int64."""
    g = torch.Generator().manual_seed(11)
    n, c, k = 60, 8, 5
    pool = torch.tensor([-3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 7e20, float("inf"), float("-inf"), float("nan")])
    values = pool[torch.randint(0, len(pool), (n, c), generator=g)]
    keys = torch.cat([torch.tensor([2**62, 2**63 - 1, 0, 1]), torch.randint(2, 2**62, (n - 4,), generator=g)])
    keys = keys[torch.randperm(n, generator=g)]
    pos = torch.randint(0, 50, (n, c), generator=g)
    for batch in (1, 7, n):
        t = RunningTopK(c, k)
        for s in range(0, n, batch):
            t.add(values[s:s + batch], keys[s:s + batch], pos[s:s + batch])
        ref = brute(torch.nan_to_num(values, nan=float("-inf")).numpy(), keys.numpy(), pos.numpy(), k)
        for ch in range(c):
            assert as_list(t, ch) == [(float(v), int(kk), int(p)) for v, kk, p in ref[ch]]


def test_fewer_images_than_k_leaves_marked_empty_slots():
    t = RunningTopK(2, 9)
    t.add(torch.tensor([[0.0, 3.0], [0.0, 1.0]]), torch.tensor([5, 2]), torch.zeros(2, 2, dtype=torch.long))
    r = t.result()
    assert (r["keys"][:, 2:] == EMPTY_KEY).all() and torch.isinf(r["values"][:, 2:]).all()
    assert r["keys"][0, :2].tolist() == [2, 5]  # tie at 0.0 -> smaller key first (zero max is valid)
    assert r["keys"][1, :2].tolist() == [5, 2]


def test_merge_equals_single_pass_and_dedups_overlap():
    g = torch.Generator().manual_seed(1)
    n, c, k = 30, 4, 5
    values = torch.rand(n, c, generator=g)
    keys = torch.arange(n) * 7
    pos = torch.randint(0, 9, (n, c), generator=g)
    whole = RunningTopK(c, k)
    whole.add(values, keys, pos)
    a, b = RunningTopK(c, k), RunningTopK(c, k)
    a.add(values[:20], keys[:20], pos[:20])
    b.add(values[10:], keys[10:], pos[10:])  # images 10..19 in both shards
    a.merge(b)
    for name in ("values", "keys", "pos"):
        assert torch.equal(a.result()[name], whole.result()[name])


def test_state_roundtrip():
    t = RunningTopK(3, 2)
    t.add(torch.rand(4, 3), torch.arange(4), torch.zeros(4, 3, dtype=torch.long))
    u = RunningTopK.from_state(t.state())
    assert all(torch.equal(t.result()[n], u.result()[n]) for n in ("values", "keys", "pos"))


def test_channels_no_candidate_can_enter_are_left_alone_and_the_result_is_exact(monkeypatch):
    """Once full, a channel whose candidates are all below its k-th value skips the sort
    (``_offer`` gets the other rows only); with ties at the k-th value (a smaller key may still enter), NaN
    (ranks as -inf) and -inf among the candidates, the result equals the brute force."""
    g = torch.Generator().manual_seed(7)
    n, c, k = 300, 20, 9
    values = torch.randint(0, 400, (n, c), generator=g).float()  # ties too
    values[torch.rand(n, c, generator=g) < 0.05] = float("nan")
    values[torch.rand(n, c, generator=g) < 0.05] = float("-inf")
    keys = torch.randperm(100000, generator=g)[:n]
    pos = torch.randint(0, 50, (n, c), generator=g)
    subsets = []
    real = RunningTopK._offer
    monkeypatch.setattr(RunningTopK, "_offer",
                        lambda self, rows, *a: (subsets.append(c if rows is None else len(rows)),
                                                real(self, rows, *a))[1])
    t = RunningTopK(c, k)
    for s in range(0, n, 16):
        t.add(values[s:s + 16], keys[s:s + 16], pos[s:s + 16])
    assert subsets and min(subsets) < c // 2  # the shortcut was taken, with most channels skipped
    ref = brute(torch.nan_to_num(values, nan=float("-inf")).numpy(), keys.numpy(), pos.numpy(), k)
    for ch in range(c):
        assert as_list(t, ch) == [(float(v), int(kk), int(p)) for v, kk, p in ref[ch]]


def test_may_enter_is_whether_the_candidate_alone_would_enter():
    """``may_enter`` against a hand sort of each channel's kept entries plus the candidate (not
    against ``add``, which uses ``may_enter`` to skip channels): ties with the k-th value (decided
    by key), NaN, -inf, and a top-k with empty slots."""
    g = torch.Generator().manual_seed(3)
    for filled in (20, 5):  # full (k = 9) and not full
        c, k = 12, 9
        t = RunningTopK(c, k)
        values = torch.randint(0, 8, (filled, c), generator=g).float()
        values[0, 0] = float("-inf")
        keys = torch.randperm(10000, generator=g)[:filled] * 2 + 1  # odd keys; candidates get the even ones
        t.add(values, keys, torch.zeros(filled, c, dtype=torch.int64))
        cand = torch.randint(0, 8, (30, c), generator=g).float()
        cand[torch.rand(30, c, generator=g) < 0.1] = float("nan")
        cand[torch.rand(30, c, generator=g) < 0.1] = float("-inf")
        ckeys = torch.randperm(10000, generator=g)[:30] * 2
        got = t.may_enter(cand, ckeys)
        r = t.result()
        before = {n: v.clone() for n, v in t.state().items()}
        for i in range(30):
            for ch in range(c):  # by hand: sort the kept entries and the candidate, empty slots last
                kept = [(float(r["values"][ch, j]), int(r["keys"][ch, j])) for j in range(k)]
                order = lambda e: (-e[0], float("inf") if e[1] == EMPTY_KEY else e[1])
                v = float(cand[i, ch])
                mine = (float("-inf") if v != v else v, int(ckeys[i]))  # NaN ranks as -inf
                assert bool(got[i, ch]) == (sorted(kept + [mine], key=order).index(mine) < k), (i, ch)
            one = RunningTopK.from_state(t.state())
            one.add(cand[i:i + 1], ckeys[i:i + 1], torch.zeros(1, c, dtype=torch.int64))
        assert all(torch.equal(before[n], v) for n, v in t.state().items())  # add() never writes in place
