"""``mine embed``: a 2-D map of a collection by a layer's pooled features, and whether the layer
separates its categories.

Why: montages show single units; the map shows the whole collection at once (as the seed
project's autoencoder codes were embedded with t-SNE), and the k-NN figure answers "do the
features separate my categories?" with one number, next to the same number for random weights
(what the architecture alone gives) and for always guessing the largest category.

Inputs: the pooled vectors ``mine run --pooled L`` stored per image (``mining.pooled``): the
spatial average (``--pool avg``, default), the max, or both concatenated. One row per distinct
image content (rows of status ``ok``). Categories: the folder of each file (Caltech-256's
``056.dog``), or a ``--labels`` CSV file of ``path,category`` rows.

* ``pca``: centred, projected on the two leading right singular vectors (scikit-learn's
  ``PCA(svd_solver="full")``: equal to numpy's SVD up to the sign of each axis).
* ``tsne`` (default): scikit-learn's Barnes-Hut t-SNE (``TSNE(init="pca",
  learning_rate="auto", max_iter=500)``, O(n log n)) on the first 50 principal components, seeded
  (``--seed``) so a map is reproducible; perplexity ``min(30, (n - 1) / 3)``. 30 000 vectors of
  512 dimensions take a few minutes on two CPU cores (scripts/bench_embed.py).
* k-NN: leave-one-out, cosine similarity of the vectors, ``k`` = 5 neighbours, majority vote, ties
  to the tied category with the nearest member. Computed in blocks of rows, exact.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from ..durable import fsync_rename
from ..jobs.combine import CONTENT_OK, _s
from ..store.read import Store

POOLS = ("avg", "max", "both")
METHODS = ("tsne", "pca")
PCA_DIMS = 50
TSNE_ITER = 500


# --- features and categories ------------------------------------------------------------------

def features(store: Store, layer: str, pool: str = "avg") -> tuple[np.ndarray, np.ndarray]:
    """(X (n, D) float32, rows (n,) into /images) for every distinct used image content."""
    if pool not in POOLS:
        raise ValueError(f"unknown --pool {pool!r}; use one of: {', '.join(POOLS)}")
    v = store.pooled(layer)
    status = [_s(s) for s in store.f["images/status"][()]]
    rows = np.array([j for j, s in enumerate(status) if s == "ok"], np.int64)
    x = v[rows].astype(np.float32)
    x = {"avg": x[:, 0], "max": x[:, 1], "both": x.reshape(len(rows), -1)}[pool]
    return np.ascontiguousarray(x), rows


def folder_labels(paths: list[str]) -> list[str]:
    """The folder of each relative path ("." for files at the top)."""
    return [os.path.dirname(p) or "." for p in paths]


def file_labels(paths: list[str], labels_file: str | Path) -> list[str]:
    """Categories from a CSV of ``path,category`` rows (path relative to the images root, or a
    bare file name); a header row ``path,category`` is allowed. Unlisted files: ``?``."""
    table: dict[str, str] = {}
    with open(labels_file, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2 and row[0].strip() and row[0].strip().lower() != "path":
                table[row[0].strip()] = row[1].strip()
    return [table.get(p, table.get(os.path.basename(p), "?")) for p in paths]


# --- coordinates ------------------------------------------------------------------------------

def pca(x: np.ndarray, dims: int = 2, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA

    dims = min(dims, *x.shape)
    return PCA(dims, svd_solver="full", random_state=seed).fit_transform(x).astype(np.float32)


def tsne(x: np.ndarray, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 images, the store has {n}: use --method pca")
    p = perplexity if perplexity is not None else min(30.0, (n - 1) / 3)
    reduced = pca(x, PCA_DIMS, seed) if x.shape[1] > PCA_DIMS else x
    t = TSNE(2, perplexity=p, init="pca", learning_rate="auto", max_iter=TSNE_ITER, random_state=seed,
             n_jobs=min(os.cpu_count() or 1, 8))
    return t.fit_transform(reduced).astype(np.float32)


# --- k-NN -------------------------------------------------------------------------------------

def knn_accuracy(x: np.ndarray, labels: list[str], k: int = 5, block: int = 2048) -> float:
    """Leave-one-out k-NN accuracy (see the module docstring for the exact rule)."""
    n = len(x)
    if n < 2:
        return float("nan")
    k = min(k, n - 1)
    names, y = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    t = torch.from_numpy(np.asarray(x, np.float32))
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    yt = torch.from_numpy(y)
    correct = 0
    for s in range(0, n, block):
        sim = t[s:s + block] @ t.T
        sim[torch.arange(len(sim)), torch.arange(s, s + len(sim))] = -float("inf")  # leave one out
        idx = sim.topk(k, dim=1).indices  # nearest first (ties: lower index, as topk is stable on CPU)
        votes = torch.zeros(len(sim), len(names), dtype=torch.float64)
        votes.scatter_add_(1, yt[idx], torch.ones(idx.shape, dtype=torch.float64))
        # ties between categories: the one whose best neighbour ranks first wins
        rank = torch.full((len(sim), len(names)), float(k), dtype=torch.float64)
        rank.scatter_reduce_(1, yt[idx], torch.arange(k, dtype=torch.float64).expand(len(sim), k), "amin")
        pred = (votes * (k + 1) - rank).argmax(1)
        correct += int((pred == yt[s:s + len(sim)]).sum())
    return correct / n


def majority_rate(labels: list[str]) -> float:
    """Accuracy of always guessing the largest category (what k-NN must beat)."""
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return float(counts.max() / counts.sum()) if len(counts) else float("nan")


# --- the random-weight baseline ---------------------------------------------------------------

def random_features(store: Store, layer: str, pool: str, rows: np.ndarray, batch_size: int = 16,
                    workers: int = 0, device="cpu") -> np.ndarray | None:
    """Pooled vectors of the images ``rows`` through the same architecture with ``random`` weights,
    read again from the source files (None when they are no longer there)."""
    from ..data import ImageDataset, make_loader
    from ..data.preprocess import Preprocessing
    from ..mining.stream import _as_input
    from ..mining.taps import layer_stats
    from ..models.weights import load_network

    found = _sources(store, rows)
    if found is None:
        return None
    prep = Preprocessing.from_dict(store.attrs["preprocessing"])
    net = load_network(store.attrs["model"], "random", store.size, prep).to(device)
    out = np.zeros((len(rows), 2, net.layers[layer].channels), np.float32)
    start = 0
    for batch in make_loader(ImageDataset(found[0], prep, found[1]), batch_size, workers, False):
        x = _as_input(batch["pixels"], prep, torch.device(device), False)
        vec = layer_stats(net, [], [layer], x)[1][layer]
        out[start:start + len(x)] = vec.float().cpu().numpy()
        start += len(x)
    return {"avg": out[:, 0], "max": out[:, 1], "both": out.reshape(len(rows), -1)}[pool]


def _sources(store: Store, rows: np.ndarray):
    """``(ImageSource, indices)`` reading the images of ``rows`` again (files or an array
    collection, ``data.sources.reopen``), None when they are gone."""
    from ..data.sources import reopen

    names = [_s(store.f["images/path"][r]) for r in rows]
    return reopen(str(store.attrs.get("images_spec")), str(store.attrs.get("images_root")), names)


def stored_labels(store: Store, rows: np.ndarray) -> list[str] | None:
    """The source's own labels of ``rows`` (``/images/label``: an array or Dataset source), if any."""
    if "label" not in store.f["images"]:
        return None
    labels = store.f["images/label"][()]
    return [_s(labels[r]) or "?" for r in rows]


# --- writing back -----------------------------------------------------------------------------

def write_coordinates(path: Path, layer: str, coords: np.ndarray, rows: np.ndarray, n_images: int,
                      keys: np.ndarray, status: list[str], attrs: dict) -> None:
    """``/embed/<layer>`` (N, 2) float32 per /images row (NaN for skipped files; a duplicate file
    gets its content's coordinates), written to a copy of the store that replaces it atomically."""
    full = np.full((n_images, 2), np.nan, np.float32)
    full[rows] = coords
    at = {int(keys[r]): coords[i] for i, r in enumerate(rows)}
    for j, s in enumerate(status):
        if s in CONTENT_OK and s != "ok" and int(keys[j]) in at:
            full[j] = at[int(keys[j])]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            g = f.require_group("embed")
            if layer in g:
                del g[layer]
            d = g.create_dataset(layer, data=full)
            d.attrs.update({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in attrs.items()})
        fsync_rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class EmbedResult:
    layer: str
    method: str
    n: int
    knn: dict[str, float] = field(default_factory=dict)  # what -> accuracy
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.method} map of {self.n} images by {self.layer} -> {', '.join(str(f) for f in self.files)}"]
        for what, acc in self.knn.items():
            lines.append(f"  {what:<40} {acc:6.1%}" if acc == acc else f"  {what:<40}    n/a")
        return "\n".join(lines)


def _thumbnails(store: Store, rows: np.ndarray, chosen: list[int], t: int) -> dict[int, np.ndarray]:
    """t x t thumbnails of the chosen points: from the source files, else the store's kept pixels."""
    from PIL import Image

    from ..data import BadImage, Unreadable, decode_image, read_file

    root = Path(str(store.attrs.get("images_root")))
    kept = {int(k): i for i, k in enumerate(store.kept_keys())}
    keys = store.f["images/key"][()]
    found = _sources(store, rows[chosen]) if len(chosen) else None  # one open of an array collection
    out = {}
    for j, i in enumerate(chosen):
        r = int(rows[i])
        img = None
        try:
            data = (found[0].read(found[1][j]) if found is not None
                    else read_file(root / _s(store.f["images/path"][r])))
            img = decode_image(data, t)
        except (OSError, BadImage, Unreadable):
            if int(keys[r]) in kept:
                img = Image.fromarray(store.pixels(kept[int(keys[r])]))
        if img is not None:
            img = img.convert("RGB")
            s = min(img.size)
            left, top = (img.size[0] - s) // 2, (img.size[1] - s) // 2
            out[i] = np.asarray(img.crop((left, top, left + s, top + s)).resize((t, t), Image.Resampling.BILINEAR))
    return out


def embed_store(path: str | Path, layer: str | None = None, method: str = "tsne", pool: str = "avg",
                labels: str | Path | None = None, seed: int = 0, perplexity: float | None = None, k: int = 5,
                baseline: int = 500, thumbnails: int = 300, out: Path | None = None, device="cpu",
                write: bool = True) -> EmbedResult:
    """``mine embed STORE``: coordinates into the store, ``<layer>_map.png`` (thumbnails) and
    ``<layer>_categories.png`` (scatter by category) in ``out``, k-NN accuracies in the result."""
    import time

    from ..jobs.lock import StoreLock
    from ..render.montage import save_png
    from ..render.names import default_out_dir, safe_name
    from ..render.scatter import category_scatter, pick_thumbnails, thumbnail_map, to_canvas

    if method not in METHODS:
        raise ValueError(f"unknown --method {method!r}; use one of: {', '.join(METHODS)}")
    path = Path(path)
    t0 = time.perf_counter()
    with Store(path) as s:
        have = s.attrs.get("pooled") or []
        if not have:
            raise ValueError(f"{path} has no pooled vectors: mine it with `mine run ... --pooled LAYER`")
        layer = layer or have[0]
        x, rows = features(s, layer, pool)
        if len(rows) < 2:
            raise ValueError(f"{path} holds {len(rows)} usable image(s): nothing to map")
        paths = [_s(p) for p in s.f["images/path"][()]]
        used = [paths[r] for r in rows]
        cats = (file_labels(used, labels) if labels else stored_labels(s, rows) or folder_labels(used))
        res = EmbedResult(layer, method, len(rows))
        t = time.perf_counter()
        xy = tsne(x, seed, perplexity) if method == "tsne" else pca(x, 2, seed)
        res.seconds[method] = time.perf_counter() - t
        t = time.perf_counter()
        res.knn[f"{k}-NN, {layer} {pool} ({len(rows)} images)"] = knn_accuracy(x, cats, k)
        res.knn["always the largest category"] = majority_rate(cats)
        if baseline:
            sample = np.sort(np.random.default_rng(seed).permutation(len(rows))[:baseline])
            rnd = random_features(s, layer, pool, rows[sample], device=device)
            sub = [cats[i] for i in sample]
            tag = f"{len(sample)} images"
            if len(sample) < len(rows):
                res.knn[f"{k}-NN, {layer} {pool} (sample of {tag})"] = knn_accuracy(x[sample], sub, k)
            res.knn[f"{k}-NN, random weights ({tag})"] = (knn_accuracy(rnd, sub, k) if rnd is not None
                                                          else float("nan"))
        res.seconds["knn"] = time.perf_counter() - t
        thumb = 40
        chosen = pick_thumbnails(to_canvas(xy, 1200, thumb), thumb, thumbnails, seed)
        thumbs = _thumbnails(s, rows, chosen, thumb)
        keys, status = s.f["images/key"][()], [_s(v) for v in s.f["images/status"][()]]
        n_images = len(paths)
    out = Path(out) if out else default_out_dir(path) / "embed"
    out.mkdir(parents=True, exist_ok=True)
    name = safe_name(layer)
    files = [out / f"{name}_map.png", out / f"{name}_categories.png"]
    save_png(thumbnail_map(xy, thumbs, cats, thumb=thumb), files[0])
    title = f"{method} of {layer} ({pool}) - " + ", ".join(f"{w}: {a:.0%}" for w, a in res.knn.items() if a == a)[:140]
    save_png(category_scatter(xy, cats, title=title), files[1])
    res.files = files
    if write:
        attrs = {"method": method, "pool": pool, "seed": seed, "knn": res.knn,
                 "perplexity": perplexity if perplexity is not None else -1}
        with StoreLock(path, command="embed"):
            write_coordinates(path, layer, xy, rows, n_images, keys, status, attrs)
    res.seconds["total"] = time.perf_counter() - t0
    return res
