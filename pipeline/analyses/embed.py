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

* ``pca``: centred, projected on the two leading right singular vectors (exact SVD below 20 000
  images, equal to numpy's up to the sign of each axis; a seeded randomised SVD above: ``tsne.pca``).
* ``tsne`` (default): on the first 50 principal components, seeded (``--seed``) so a map is
  reproducible, perplexity ``min(30, (n - 1) / 3)``, 500 iterations: openTSNE's FFT-accelerated
  t-SNE on all cores from 5 000 images, scikit-learn's Barnes-Hut below (``tsne.tsne``; measured
  in scripts/bench_embed.py and docs/performance.md).
* k-NN: leave-one-out, cosine similarity of the vectors, ``k`` = 5 neighbours, majority vote, ties
  to the tied category with the nearest member; exact, for a seeded sample of ``--knn-sample``
  10 000 query images against all images (``knn.knn_accuracy``: blocked matrix products, never
  an n x n matrix).
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.safe_read import Unreadable, read_file
from ..faults import pause_point
from ..jobs.combine import CONTENT_OK
from ..store.read import Store
from ..store.schema import StoreError
from ..store.write import write_embedding
from .knn import Search, knn_accuracy, sample_queries
from .tsne import PCA_DIMS, TSNE_ITER, identical, pca, tsne, tsne_library  # noqa: F401 (also the API here)

log = logging.getLogger("pipeline")

UNLABELLED = "?"  # the category of an image a --labels file does not list
POOLS = ("avg", "max", "both")
METHODS = ("tsne", "pca")
THUMB = 40  # side of a thumbnail on the map, pixels
KNN_SAMPLE = 10_000  # default query images of the k-NN accuracy
CHUNK = 65_536  # /images rows of pooled vectors read at a time


# --- features and categories ------------------------------------------------------------------

def features(store: Store, layer: str, pool: str = "avg", chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, D) float32, rows (n,) into /images) for every distinct used image content.

    Read ``chunk`` rows of ``/images/pooled_<L>`` at a time (the stored (N, 2, C) float16 array is
    never held whole next to its float32 copy: 1M images of 512 channels are 2 GiB here, not 4),
    each chunk checked finite on its used rows as ``Store.pooled`` does."""
    if pool not in POOLS:
        raise ValueError(f"unknown --pool {pool!r}; use one of: {', '.join(POOLS)}")
    d = store.pooled_dataset(layer)  # or its one-line error: which layers the store has
    status = store.image_column("status")
    used = (status == "ok") | (status == "duplicate")
    rows = np.flatnonzero(status == "ok").astype(np.int64)
    width = d.shape[2] * (2 if pool == "both" else 1)
    x = np.empty((len(rows), width), np.float32)
    at = 0
    for c0 in range(0, len(status), chunk):
        c1 = min(len(status), c0 + chunk)
        v = d[c0:c1]
        if not np.isfinite(v[used[c0:c1]]).all():
            raise StoreError(f"{store.path} is damaged: {d.name} holds NaN or infinity on a used image")
        v = v[status[c0:c1] == "ok"]
        x[at:at + len(v)] = {"avg": v[:, 0], "max": v[:, 1], "both": v.reshape(len(v), -1)}[pool]
        at += len(v)
    return x, rows


def folder_labels(paths: list[str]) -> list[str]:
    """The folder of each relative path ("." for files at the top)."""
    return [os.path.dirname(p) or "." for p in paths]


def read_labels(labels_file: str | Path) -> dict[str, str]:
    """``path -> category`` from a CSV of ``path,category`` rows (a header row ``path,category`` is
    allowed). Read with the one file reader (regular files only, size cap: a FIFO or a link to
    ``/dev/zero`` is refused, not read); every problem is one line naming the file."""
    p = Path(labels_file)
    if not p.exists():
        raise FileNotFoundError(f"--labels {p} does not exist")
    try:
        text = read_file(p).decode("utf-8-sig")
    except Unreadable as e:
        raise ValueError(f"--labels {p}: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--labels {p} is not UTF-8 text (byte {e.start} is not valid UTF-8)") from None
    table: dict[str, str] = {}
    try:
        for row in csv.reader(io.StringIO(text, newline="")):
            if len(row) >= 2 and row[0].strip() and row[0].strip().lower() != "path":
                table[os.path.normpath(row[0].strip())] = row[1].strip()
    except csv.Error as e:
        raise ValueError(f"--labels {p} is not a CSV of path,category rows ({e})") from None
    return table


def file_labels(paths: list[str], labels_file: str | Path, root: str | Path = "") -> list[str]:
    """Categories from a ``--labels`` CSV (``read_labels``): a row names an image by its path
    relative to the images root, by its absolute path (``root`` joined to it: what ``mine top
    --json`` prints as ``file``), or by its bare file name. Unlisted images: ``?``."""
    table = read_labels(labels_file)

    def lookup(rel: str) -> str:
        for name in (os.path.normpath(rel), os.path.normpath(os.path.join(str(root), rel)) if root else None,
                     os.path.basename(rel)):
            if name is not None and name in table:
                return table[name]
        return UNLABELLED

    return [lookup(p) for p in paths]


def check_labelled(cats: list[str], labels_file, root: str, used: list[str]) -> np.ndarray:
    """Indices of the images a ``--labels`` file gives a category: none is a one-line refusal
    (every image would be ``?`` and k-NN a meaningless 100 %); some missing is a warning, and
    k-NN then counts the labelled images only."""
    have = np.array([i for i, c in enumerate(cats) if c != UNLABELLED], np.int64)
    missing = [u for u, c in zip(used, cats) if c == UNLABELLED]
    if not len(have):
        raise ValueError(f"--labels {labels_file} names none of the store's {len(cats)} images (e.g. {used[0]!r}); "
                         f"give paths relative to the images root {root}, absolute paths, or file names")
    if missing:
        log.warning(f"--labels {labels_file} gives no category for {len(missing)} of {len(cats)} images "
                    f"(e.g. {missing[0]!r}): they are {UNLABELLED!r} on the map and k-NN counts the "
                    f"{len(have)} labelled ones only")
    return have


# --- coordinates and k-NN: tsne.py and knn.py --------------------------------------------


def majority_rate(labels: list[str]) -> float:
    """Accuracy of always guessing the largest category (what k-NN must beat)."""
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return float(counts.max() / counts.sum()) if len(counts) else float("nan")


# --- the random-weight baseline ---------------------------------------------------------------

def random_features(store: Store, layer: str, pool: str, rows: np.ndarray, device="cpu",
                    batch_size: int = 16) -> np.ndarray | None:
    """Pooled vectors of the images ``rows`` through the same architecture with ``random`` weights,
    read again from the source files (None when they are no longer there)."""
    from ..data import ImageDataset, make_loader
    from ..data.preprocess import Preprocessing, to_device
    from ..mining.taps import layer_stats
    from ..models.weights import load_network

    found = _sources(store, rows)
    if found is None:
        return None
    prep = Preprocessing.from_dict(store.attrs["preprocessing"])
    net = load_network(store.attrs["model"], "random", store.size, prep).to(device)
    out = np.zeros((len(rows), 2, net.layers[layer].channels), np.float32)
    start = 0
    for batch in make_loader(ImageDataset(found[0], prep, found[1]), batch_size, 0, False):
        x = to_device(batch["pixels"], prep, torch.device(device), False)
        vec = layer_stats(net, [], [layer], x)[1][layer]
        out[start:start + len(x)] = vec.float().cpu().numpy()
        start += len(x)
    return {"avg": out[:, 0], "max": out[:, 1], "both": out.reshape(len(rows), -1)}[pool]


def _sources(store: Store, rows: np.ndarray):
    """``(ImageSource, indices)`` reading the images of ``rows`` again (files or an array
    collection, ``data.sources.reopen``), None when they are gone."""
    from ..data.sources import reopen

    names = list(store.image_column("path", rows))
    return reopen(str(store.attrs.get("images_spec")), str(store.attrs.get("images_root")), names)


def stored_labels(store: Store, rows: np.ndarray) -> list[str] | None:
    """The source's own labels of ``rows`` (``/images/label``: an array or Dataset source), if any."""
    labels = store.labels(rows)
    return None if labels is None else [v or "?" for v in labels]


# --- writing back -----------------------------------------------------------------------------

def spread_coordinates(coords: np.ndarray, rows: np.ndarray, keys: np.ndarray, status: list[str]) -> np.ndarray:
    """(N, 2) float32 per /images row from the coordinates of ``rows``: NaN for skipped files, and a
    duplicate file gets its content's coordinates (what ``/embed/<layer>`` holds)."""
    full = np.full((len(keys), 2), np.nan, np.float32)
    full[rows] = coords
    at = {int(keys[r]): coords[i] for i, r in enumerate(rows)}
    for j, s in enumerate(status):
        if s in CONTENT_OK and s != "ok" and int(keys[j]) in at:
            full[j] = at[int(keys[j])]
    return full


@dataclass
class EmbedResult:
    layer: str
    method: str
    n: int
    knn: dict[str, float] = field(default_factory=dict)  # what -> accuracy
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    library: str = ""  # which library computed the coordinates (tsne.tsne_library)

    def summary(self) -> str:
        by = f" ({self.library})" if self.method == "tsne" and self.library else ""
        lines = [f"{self.method}{by} map of {self.n} images by {self.layer} -> {', '.join(str(f) for f in self.files)}"]
        for what, acc in self.knn.items():
            lines.append(f"  {what:<40} {acc:6.1%}" if acc == acc else f"  {what:<40}    n/a")
        return "\n".join(lines)


def _thumbnails(store: Store, rows: np.ndarray, chosen: list[int], t: int) -> dict[int, np.ndarray]:
    """t x t thumbnails of the chosen points: from the source files, else the store's kept pixels."""
    from PIL import Image

    from ..data import BadImage, decode_image

    root = Path(str(store.attrs.get("images_root")))
    kept = {int(k): i for i, k in enumerate(store.kept_keys())}
    keys = store.image_column("key")
    found = _sources(store, rows[chosen]) if len(chosen) else None  # one open of an array collection
    out = {}
    for j, i in enumerate(chosen):
        r = int(rows[i])
        img = None
        try:  # the one file reader: a source swapped for a FIFO or a /dev/zero link is refused, not read
            data = (found[0].read(found[1][j]) if found is not None
                    else read_file(root / store.image_column("path", [r])[0]))
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


@dataclass(frozen=True)
class EmbedOptions:
    """What ``mine embed`` computes (its options, by the CLI's names where they differ): the pooled
    ``layer`` (None: the store's first), ``method`` the map (``--embedding`` tsne | pca), ``pool``
    avg | max | both, ``labels`` a CSV of categories (None: stored labels, else each file's folder),
    ``seed``, t-SNE's ``perplexity`` (None: the default), ``k`` the k-NN neighbours (``--neighbors``),
    ``baseline`` images re-read for the random-weight k-NN (0: none), ``thumbnails`` on the map,
    ``device`` of the k-NN and the baseline, ``knn_sample`` the k-NN query images (0: all)."""

    layer: str | None = None
    method: str = "tsne"
    pool: str = "avg"
    labels: str | Path | None = None
    seed: int = 0
    perplexity: float | None = None
    k: int = 5
    baseline: int = 500
    thumbnails: int = 300
    device: torch.device | str = "cpu"
    knn_sample: int = KNN_SAMPLE

    def attrs(self, res: EmbedResult) -> dict:
        """The attributes of ``/embed/<layer>``: how the coordinates were made."""
        return {"method": self.method, "pool": self.pool, "seed": self.seed, "knn": res.knn, "library": res.library,
                "perplexity": self.perplexity if self.perplexity is not None else -1}


def embed_store(path: str | Path, opts: EmbedOptions = EmbedOptions(), out: Path | None = None,
                write: bool = True) -> EmbedResult:
    """``mine embed STORE``: coordinates into the store, ``<layer>_map.png`` (thumbnails) and
    ``<layer>_categories.png`` (scatter by category) in ``out``, k-NN accuracies in the result.

    The store is handled as ``mine run`` handles it: a symlink is followed (the target is
    written, the link stays), the target's lock is held from the first read to the rename of
    the rewritten file (so a ``mine run --update`` cannot finish in between and leave ``/embed``
    rows that no longer match ``/images``), the write runs in a forked child (``write_isolated``)
    and keeps the file's mode, temp files of dead writers are removed, and SIGINT/SIGTERM end the
    command with ``Interrupted`` (exit 5), lock and temp file gone. ``write=False`` reads only:
    no lock (the store is replaced atomically, an open reader keeps its version)."""
    import time

    from ..jobs.output import remove_stale_temps, store_target, write_isolated
    from ..lock import StoreLock
    from ..signals import InterruptGuard

    if opts.method not in METHODS:
        raise ValueError(f"unknown --embedding {opts.method!r}; use one of: {', '.join(METHODS)}")
    t0 = time.perf_counter()
    target = store_target(Path(path))
    if not target.is_file():  # before locking: a lock must not create folders next to a missing store
        Store(target)  # raises its one-line StoreError (missing, or not a regular file)
    with InterruptGuard(graceful=False), (StoreLock(target, command="embed") if write else contextlib.nullcontext()):
        if write:
            remove_stale_temps(target)
        res, xy, cats, data = _embed_locked(target, opts)
        _save_pictures(res, xy, cats, data["thumbs"], out or _default_out(Path(path)), opts.pool)
        if write:
            full = spread_coordinates(xy, data["rows"], data["keys"], data["status"])
            write_isolated(target, lambda: write_embedding(target, res.layer, full, opts.attrs(res)),
                           kept="the store is unchanged")
    res.seconds["total"] = time.perf_counter() - t0
    return res


def _default_out(path: Path) -> Path:
    from ..pictures.names import default_out_dir

    return default_out_dir(path) / "embed"


def _embed_locked(path: Path, opts: EmbedOptions):
    """Everything ``embed_store`` computes from the store: (result, coordinates, categories, data)."""
    import time

    from ..pictures.scatter import pick_thumbnails, to_canvas

    with Store(path) as s:
        pause_point("embed")  # tests: stop here holding the lock (a signal, a concurrent --update)
        have = s.attrs.get("pooled") or []
        if not have:
            raise ValueError(f"{path} has no pooled vectors: mine it with `mine run ... --pooled LAYER`")
        layer = opts.layer or have[0]
        x, rows = features(s, layer, opts.pool)
        if len(rows) < 2:
            raise ValueError(f"{path} holds {len(rows)} usable image(s): nothing to map")
        paths = list(s.image_column("path"))
        used = [paths[r] for r in rows]
        root = str(s.attrs.get("images_root"))
        labels = opts.labels
        cats = file_labels(used, labels, root) if labels else (stored_labels(s, rows) or folder_labels(used))
        known = check_labelled(cats, labels, root, used) if labels else np.arange(len(rows))
        res = EmbedResult(layer, opts.method, len(rows))
        t = time.perf_counter()
        if opts.method == "tsne":
            res.library = tsne_library(len(x))
            xy = tsne(x, opts.seed, opts.perplexity, library=res.library)
        else:
            res.library, xy = "sklearn", pca(x, 2, opts.seed)
        res.seconds[opts.method] = time.perf_counter() - t
        t = time.perf_counter()
        _knn(res, x, [cats[i] for i in known], known, opts)
        if opts.baseline:
            sample = np.sort(known[np.random.default_rng(opts.seed).permutation(len(known))[:opts.baseline]])
            rnd = random_features(s, layer, opts.pool, rows[sample], device=opts.device)
            _baseline(res, x[sample], rnd, [cats[i] for i in sample], len(sample) < len(known), opts)
        res.seconds["knn"] = time.perf_counter() - t
        chosen = pick_thumbnails(to_canvas(xy, 1200, THUMB), THUMB, opts.thumbnails, opts.seed)
        data = {"thumbs": _thumbnails(s, rows, chosen, THUMB), "rows": rows, "keys": s.image_column("key"),
                "status": list(s.image_column("status"))}
    return res, xy, cats, data


def _knn(res: EmbedResult, x: np.ndarray, lab: list[str], known: np.ndarray, opts: EmbedOptions) -> None:
    """The k-NN accuracy of the labelled images ``known`` (categories ``lab``), and of always guessing the
    largest category, into ``res.knn``."""
    keff = max(1, min(opts.k, len(known) - 1))  # what knn_accuracy uses: a label must not claim more
    xk = x if len(known) == len(x) else x[known]
    queries = len(sample_queries(len(known), opts.knn_sample))
    tag = f"{len(known)} images" if queries == len(known) else f"sample of {queries} of {len(known)} images"
    res.knn[f"{keff}-NN, {res.layer} {opts.pool} ({tag})"] = knn_accuracy(xk, lab, opts.k, opts.knn_sample, opts.seed,
                                                                          Search(device=opts.device))
    res.knn["always the largest category"] = majority_rate(lab)


def _baseline(res: EmbedResult, x: np.ndarray, rnd: np.ndarray | None, lab: list[str], smaller: bool,
              opts: EmbedOptions) -> None:
    """Into ``res.knn``: the k-NN accuracy of the baseline sample by random weights (``rnd``; NaN when its files
    are gone) and, when the sample is ``smaller`` than the labelled images, by the mined vectors ``x``."""
    k, search = opts.k, Search(device=opts.device)
    tag, ks = f"{len(lab)} images", max(1, min(k, len(lab) - 1))
    if smaller:
        res.knn[f"{ks}-NN, {res.layer} {opts.pool} (sample of {tag})"] = knn_accuracy(x, lab, k, search=search)
    res.knn[f"{ks}-NN, random weights ({tag})"] = (knn_accuracy(rnd, lab, k, search=search) if rnd is not None
                                                   else float("nan"))


def _save_pictures(res: EmbedResult, xy, cats, thumbs, out: Path, pool: str) -> None:
    from ..pictures.montage import save_png
    from ..pictures.names import safe_name
    from ..pictures.scatter import category_scatter, thumbnail_map

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = safe_name(res.layer)
    res.files = [out / f"{name}_map.png", out / f"{name}_categories.png"]
    save_png(thumbnail_map(xy, thumbs, cats, thumb=THUMB), res.files[0])
    title = (f"{res.method} of {res.layer} ({pool}) - "
             + ", ".join(f"{w}: {a:.0%}" for w, a in res.knn.items() if a == a)[:140])
    save_png(category_scatter(xy, cats, title=title), res.files[1])
