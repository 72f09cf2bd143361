"""2-D coordinates for ``mine embed``: t-SNE (openTSNE's FFT-accelerated t-SNE, scikit-learn's
Barnes-Hut below ``SKLEARN_BELOW`` points) and PCA (exact below ``RANDOMIZED_FROM`` points,
randomised above).

Why two t-SNE libraries: scikit-learn's Barnes-Hut t-SNE costs O(n log n) per iteration with a
large constant and runs its gradient on one core (30 000 points: 17.5 min on this project's CPU);
openTSNE (Policar et al., the FFT-interpolated gradient of Linderman et al. 2019) is O(n) per
iteration on all cores and reaches millions of points. The choice by n is measured
(docs/performance.md, "embed at scale": ``scripts/bench_embed.py``). Both run the same schedule:
PCA initialisation, ``learning_rate="auto"`` (n / 12), 250 iterations of early exaggeration 12 then
250 more, perplexity ``min(30, (n - 1) / 3)``, on the first 50 principal components, seeded.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger("pipeline")

PCA_DIMS = 50
TSNE_ITER = 500  # in all, the first half with early exaggeration (scikit-learn's schedule)
EXAGGERATION_ITER = 250
SKLEARN_BELOW = 5_000  # fewer points: scikit-learn's t-SNE (see the module docstring)
RANDOMIZED_FROM = 20_000  # more rows: randomised PCA
FFT_FROM = 10_000  # more points: openTSNE's FFT gradient on all cores (_opentsne)


def pca(x: np.ndarray, dims: int = 2, seed: int = 0, solver: str | None = None) -> np.ndarray:
    """Centred ``x`` projected on its ``dims`` leading right singular vectors. ``solver``: "full"
    (LAPACK SVD, equal to numpy's SVD up to the sign of each axis), "randomized" (Halko et al.:
    a few passes over the data, no n x D factor; seeded) or None: full below ``RANDOMIZED_FROM``
    rows, randomised from there."""
    from sklearn.decomposition import PCA

    dims = min(dims, *x.shape)
    if solver is None:
        solver = "randomized" if len(x) >= RANDOMIZED_FROM and dims < min(x.shape) else "full"
    kw = {"iterated_power": 7, "n_oversamples": 20} if solver == "randomized" else {}
    return PCA(dims, svd_solver=solver, random_state=seed, **kw).fit_transform(x).astype(np.float32)


def identical(x: np.ndarray, rtol: float = 1e-6) -> bool:
    """True when every row of ``x`` is the same vector (up to ``rtol`` of its largest entry)."""
    spread = float(np.ptp(x, axis=0).max()) if x.size else 0.0
    return spread <= rtol * float(np.abs(x).max(initial=0.0))


def have_opentsne() -> bool:
    try:
        import openTSNE  # noqa: F401
    except ImportError:
        return False
    return True


def tsne_library(n: int) -> str:
    """Which t-SNE ``tsne`` runs on n points: "opentsne" or "sklearn" (also when openTSNE is not
    installed: a warning says so, as the map then costs far more time above a few thousand points)."""
    if n < SKLEARN_BELOW:
        return "sklearn"
    if have_opentsne():
        return "opentsne"
    log.warning(f"openTSNE is not installed: t-SNE of {n} points by scikit-learn's slower Barnes-Hut code "
                f"(pip install openTSNE)")
    return "sklearn"


def tsne(x: np.ndarray, seed: int = 0, perplexity: float | None = None, library: str | None = None,
         jobs: int | None = None) -> np.ndarray:
    """(n, 2) float32 t-SNE coordinates; the same ``x``, seed and library give the same coordinates.

    Why the pre-check: identical vectors (copies of one photo, a layer that is 0 on every image)
    make scikit-learn's PCA start NaN (it divides by the first axis' spread) and its Barnes-Hut
    code then crashes the process (SIGSEGV; openTSNE's PCA start divides alike). Their exact
    embedding is one point: all at (0, 0)."""
    n = len(x)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 images, the store has {n}: use --embedding pca")
    p = perplexity if perplexity is not None else min(30.0, (n - 1) / 3)
    reduced = pca(x, PCA_DIMS, seed) if x.shape[1] > PCA_DIMS else np.asarray(x, np.float32)
    if identical(x) or identical(reduced, 0.0):
        log.warning(f"the {n} pooled vectors are identical: every image is at the same place on the map")
        return np.zeros((n, 2), np.float32)
    library = library or tsne_library(n)
    jobs = jobs or min(os.cpu_count() or 1, 8)
    if library == "opentsne":
        return _opentsne(reduced, seed, p, jobs)
    if library != "sklearn":
        raise ValueError(f"unknown t-SNE library {library!r}")
    from sklearn.manifold import TSNE

    t = TSNE(2, perplexity=p, init="pca", learning_rate="auto", max_iter=TSNE_ITER, random_state=seed, n_jobs=jobs)
    return t.fit_transform(reduced).astype(np.float32)


def _opentsne(x: np.ndarray, seed: int, perplexity: float, jobs: int) -> np.ndarray:
    """openTSNE with scikit-learn's schedule (module docstring). Neighbours: openTSNE's "auto"
    (exact below 1000 points, Annoy trees above: approximate, seeded). Gradient: FFT interpolation
    from ``FFT_FROM`` points on ``jobs`` threads; Barnes-Hut on one thread below (measured: 150
    points take 1.3 s on one thread, 25 s on two of a busy 2-core machine, 41 s by FFT, whose
    grid costs the same at any n)."""
    import openTSNE

    fft = len(x) >= FFT_FROM
    t = openTSNE.TSNE(2, perplexity=perplexity, learning_rate="auto", initialization="pca",
                      early_exaggeration_iter=EXAGGERATION_ITER, n_iter=TSNE_ITER - EXAGGERATION_ITER,
                      negative_gradient_method="fft" if fft else "bh", n_jobs=jobs if fft else 1,
                      random_state=seed, verbose=False)
    return np.asarray(t.fit(np.ascontiguousarray(x, np.float64)), np.float32)
