"""Leave-one-out k-NN category accuracy of pooled vectors, exact, on a seeded sample of queries
against all vectors (``mine embed --knn-sample``).

Rule: cosine similarity (``Search(metric="euclidean")``: the smallest Euclidean distance, for 2-D maps);
a query's ``k`` nearest other vectors (a query is never its own
neighbour; another image whose vector equals the query's is a neighbour like any other: two
distinct files with the same pooled vector count as two images, and a collection's duplicate
*files* are one row already, as ``mine run`` mines each content once); majority vote; a tie between
categories goes to the tied category with the nearest member. Equal similarities are ordered by
row, the lower first, except that which of several vectors exactly tied on the k-th place is taken
is not specified.

Cost: the queries against all n vectors by blocked matrix products on the device (torch), column
blocks of ``col_block`` vectors at a time, keeping only each query's running k best: time
O(queries x n x D), memory O(queries x k + blocks), never an n x n (or queries x n) matrix.
With ``sample`` = 0 (or >= n) every vector is a query: exact leave-one-out over the collection,
O(n^2 D) time. Queries: ``np.sort(np.random.default_rng(seed).permutation(n)[:sample])``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Search:
    """How neighbours are found: ``metric`` cosine (default) | euclidean, the ``device`` of the matrix
    products, and their blocks, ``block`` queries x ``col_block`` vectors at a time (memory, never
    the result)."""

    metric: str = "cosine"
    device: torch.device | str = "cpu"
    block: int = 2048
    col_block: int = 16384


def sample_queries(n: int, sample: int = 0, seed: int = 0) -> np.ndarray:
    """The rows that are queries: all of them (``sample`` 0 or >= n), else a seeded sample, sorted."""
    if sample <= 0 or sample >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n)[:sample]).astype(np.int64)


def _unit(x: np.ndarray, rows, device, metric: str = "cosine") -> torch.Tensor:
    """float32 rows of ``x`` on ``device``, scaled to unit length (a zero vector stays zero);
    as they are for "euclidean"."""
    t = torch.as_tensor(np.asarray(x[rows]), device=device).float()
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12) if metric == "cosine" else t


def neighbours(x: np.ndarray, queries: np.ndarray, k: int, search: Search = Search()) -> torch.Tensor:
    """(len(queries), k) indices into ``x`` of each query's k nearest other rows, nearest first.
    Euclidean: ranked by ``2 q.c - |c|^2`` (= |q|^2 - |q - c|^2, the same order)."""
    metric, block, col_block = search.metric, search.block, search.col_block
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown k-NN metric {metric!r}")
    n, m = len(x), len(queries)
    device = torch.device(search.device)
    q_rows = torch.as_tensor(queries, device=device)
    best_v = torch.full((m, k), -float("inf"), device=device)
    best_i = torch.full((m, k), -1, dtype=torch.long, device=device)
    for c0 in range(0, n, col_block):
        c1 = min(n, c0 + col_block)
        cols = _unit(x, slice(c0, c1), device, metric)
        half = (cols * cols).sum(1) / 2 if metric == "euclidean" else None
        kk = min(k, c1 - c0)
        for q0 in range(0, m, block):
            q1 = min(m, q0 + block)
            sim = _unit(x, queries[q0:q1], device, metric) @ cols.T
            if half is not None:
                sim -= half
            own = q_rows[q0:q1]
            inside = ((own >= c0) & (own < c1)).nonzero().squeeze(1)
            sim[inside, own[inside] - c0] = -float("inf")  # leave one out
            v, i = sim.topk(kk, dim=1)
            v = torch.cat([best_v[q0:q1], v], 1)  # earlier blocks (lower rows) first:
            i = torch.cat([best_i[q0:q1], i + c0], 1)
            order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k]  # ties keep the lower row
            best_v[q0:q1], best_i[q0:q1] = v.gather(1, order), i.gather(1, order)
    return best_i


def knn_accuracy(x: np.ndarray, labels, k: int = 5, sample: int = 0, seed: int = 0, search: Search = Search()) -> float:
    """Leave-one-out k-NN accuracy over the queries ``sample_queries(n, sample, seed)`` (module
    docstring); NaN for fewer than 2 vectors. ``k`` is at most n - 1."""
    n = len(x)
    if n < 2:
        return float("nan")
    k = min(k, n - 1)
    names, y = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    queries = sample_queries(n, sample, seed)
    idx = neighbours(x, queries, k, search).cpu()
    yt = torch.from_numpy(y.astype(np.int64))
    near = yt[idx]  # (m, k) categories of the neighbours, nearest first
    m = len(queries)
    votes = torch.zeros(m, len(names), dtype=torch.float64)
    votes.scatter_add_(1, near, torch.ones(near.shape, dtype=torch.float64))
    # ties between categories: the one whose best neighbour ranks first wins
    rank = torch.full((m, len(names)), float(k), dtype=torch.float64)
    rank.scatter_reduce_(1, near, torch.arange(k, dtype=torch.float64).expand(m, k), "amin")
    pred = (votes * (k + 1) - rank).argmax(1)
    return int((pred == yt[torch.from_numpy(queries)]).sum()) / m
