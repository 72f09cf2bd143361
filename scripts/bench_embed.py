#!/usr/bin/env python
"""Wall time of `mine embed`'s computations for N random D-dimensional pooled vectors.

    python scripts/bench_embed.py                     # 30 000 x 512, 10 random categories
    python scripts/bench_embed.py --n 5000 --dim 256

Times, one after the other: PCA to 2-D, t-SNE (scikit-learn Barnes-Hut after PCA to 50 dimensions,
the settings of ``analyses.embed.tsne``) and the exact leave-one-out 5-NN accuracy. Random vectors
carry no structure, so the accuracy is chance; the timing is what t-SNE costs on n points.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.analyses.embed import knn_accuracy, pca, tsne  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--categories", type=int, default=10)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((a.n, a.dim), dtype=np.float32).astype(np.float16).astype(np.float32)  # as stored
    labels = [str(i % a.categories) for i in range(a.n)]
    print(f"{a.n} x {a.dim} random vectors, {os.cpu_count()} CPUs")
    total = time.perf_counter()
    for name, fn in (("pca", lambda: pca(x, 2)), ("tsne", lambda: tsne(x, seed=0)),
                     ("5-NN leave-one-out", lambda: knn_accuracy(x, labels, 5))):
        t = time.perf_counter()
        out = fn()
        extra = f"  (accuracy {out:.3f})" if isinstance(out, float) else ""
        print(f"  {name:<20} {time.perf_counter() - t:8.1f} s{extra}")
    print(f"  {'total':<20} {time.perf_counter() - total:8.1f} s")


if __name__ == "__main__":
    main()
