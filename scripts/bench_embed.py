#!/usr/bin/env python
"""Time and peak memory of `mine embed`'s computations on synthetic pooled vectors (issue 24).

    python scripts/bench_embed.py                                 # 30 000 x 512, every step
    python scripts/bench_embed.py --n 200000 --steps pca-randomized,knn-sample,tsne-opentsne
    python scripts/bench_embed.py --n 1000000 --steps knn-sample --dtype float16

Data: a seeded Gaussian mixture, ``--clusters`` 256 centres N(0, 1) in ``--dim`` 512 dimensions,
each vector its centre plus N(0, ``--noise``^2 = 9) noise, its cluster as its category. Each step runs
in a fresh child process (``--one STEP``) so its peak resident memory (ru_maxrss, data included)
is its own. Steps:

* ``pca-full`` / ``pca-randomized``: PCA to 2-D by each solver (``tsne.pca``);
* ``tsne-sklearn`` / ``tsne-opentsne``: ``tsne.tsne`` by each library (PCA to 50 first), and the
  5-NN accuracy that the 2-D map keeps (Euclidean, on the same 10 000 seeded queries as
  ``knn-sample``: compare it with that step's accuracy in 512-D);
* ``knn-sample``: the 5-NN accuracy of ``--knn-sample`` 10 000 seeded queries against all vectors;
* ``knn-all``: the exact leave-one-out 5-NN over every vector (O(n^2); what embed did before).

On a shared, loaded machine run it with one thread per library (``OMP_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1 ... --jobs 1``): threads that wait for each other on busy cores make BLAS
and t-SNE many times slower (a 3000 x 512 SVD: 0.75 s on one thread, 40 s on two at load 13).
Prints one line per step and, with ``--json FILE``, appends one JSON object per step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = ("pca-full", "pca-randomized", "knn-sample", "knn-all", "tsne-opentsne", "tsne-sklearn")


def mixture(n: int, dim: int, clusters: int, noise: float, dtype: str, seed: int = 0):
    """(x (n, dim), labels (n,)) built in chunks (1M x 512 float32 is 2 GiB: no float64 copy)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    y = rng.integers(0, clusters, n)
    x = np.empty((n, dim), dtype)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        x[s:e] = centres[y[s:e]] + rng.normal(scale=noise, size=(e - s, dim)).astype(np.float32)
    return x, y


def one(step: str, a) -> dict:
    from pipeline.analyses.knn import Search, knn_accuracy
    from pipeline.analyses.tsne import pca, tsne

    x, y = mixture(a.n, a.dim, a.clusters, a.noise, a.dtype)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    out = {"step": step, "n": a.n, "dim": a.dim, "dtype": a.dtype, "cpus": os.cpu_count()}
    if step.startswith("pca-"):
        pca(x, 2, 0, solver=step[4:])
    elif step == "knn-sample":
        out["accuracy"] = knn_accuracy(x, y, 5, a.knn_sample, 0)
        out["queries"] = min(a.knn_sample, a.n) or a.n
    elif step == "knn-all":
        out["accuracy"] = knn_accuracy(x, y, 5, 0)
    elif step.startswith("tsne-"):
        xy = tsne(x, 0, library=step[5:], jobs=a.jobs)
        out["seconds_embedding"] = time.perf_counter() - t
        out["accuracy_2d"] = knn_accuracy(xy, y, 5, a.knn_sample, 0, Search(metric="euclidean"))
    else:
        raise SystemExit(f"unknown step {step!r}; use: {', '.join(STEPS)}")
    out["seconds"] = time.perf_counter() - t
    use = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mib"] = use.ru_maxrss / 1024
    # CPU time of the step (data generation excluded): on a shared machine wall time says little
    out["cpu_seconds"] = use.ru_utime + use.ru_stime - before.ru_utime - before.ru_stime
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--noise", type=float, default=3.0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--knn-sample", type=int, default=10_000)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--jobs", type=int, default=None, help="t-SNE threads (default: all cores, at most 8)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a)))
        return
    print(f"{a.n} x {a.dim} {a.dtype}, {a.clusters} clusters, noise {a.noise}; {os.cpu_count()} CPUs", flush=True)
    for step in a.steps.split(","):
        args = [sys.executable, __file__, "--one", step] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                                                            if k not in ("one", "steps", "json") and v is not None]
        p = subprocess.run(args, capture_output=True, text=True)
        if p.returncode:
            print(f"  {step:<16} failed ({p.returncode}): {p.stderr.strip()[-500:]}", flush=True)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        acc = "".join(f"  {k} {r[k]:.3f}" for k in ("accuracy", "accuracy_2d") if k in r)
        print(f"  {step:<16} {r['seconds']:8.1f} s  (process CPU {r.get('cpu_seconds', 0):7.1f} s)  "
              f"peak {r['peak_rss_mib']:7.0f} MiB{acc}", flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
