"""`mine run` as a Python function: resolve, stream, finalize, write.

``RunConfig`` holds every option of the command; ``run(cfg)`` returns a
``RunResult``. A notebook user calls exactly what the CLI calls.
"""
from __future__ import annotations

import platform
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .data import ImageDataset, Preprocessing, make_loader, resolve_images
from .mining.finalize import finalize
from .mining.stream import ImageRecord, new_state, stream
from .models.network import Network
from .models.weights import load_network
from .store.write import write_store

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RunConfig:
    images: str
    layer: str = "conv4_4"
    model: str = "vgg19"
    weights: str = "imagenet"
    k: int = 9
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    size: int = 224
    resize: str = "center-crop"
    limit: int | None = None
    data_root: str | None = None
    out: str | None = None
    precision: str = "fp32"
    channels_last: bool = False
    progress: bool = True


@dataclass
class RunResult:
    store: Path
    images_seen: int
    images_skipped: int
    seconds: float
    layers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.images_seen / self.seconds if self.seconds else 0.0
        return (f"{self.images_seen} images seen, {self.images_skipped} skipped, {self.seconds:.1f} s "
                f"({rate:.1f} img/s) -> {self.store}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def default_store_path(cfg: RunConfig, layers: list[str]) -> Path:
    """``mine-<model>-<layers>-<images>.h5`` in the current folder."""
    tag = "_".join(layers) if len(layers) <= 3 else f"{len(layers)}layers"
    images = re.sub(r"[^A-Za-z0-9]+", "_", cfg.images).strip("_") or "images"
    return Path(f"mine-{cfg.model}-{tag}-{images}.h5")


def images_table(source, records: dict[int, ImageRecord]) -> dict[str, np.ndarray]:
    """One row per source file in path order. Among files with equal content the first
    path is "ok" and the rest "duplicate", whatever order they streamed in."""
    n = len(source.paths)
    status, first = [], {}
    for i in range(n):
        r = records[i]
        if r.ok or r.reason == "duplicate":
            status.append("ok" if first.setdefault(r.key, i) == i else "duplicate")
        else:
            status.append(f"skipped: {r.reason}")
    return {
        "path": np.array([source.relpath(p) for p in source.paths], dtype=object),
        "sha256": np.array([records[i].sha256 for i in range(n)], dtype=object),
        "key": np.array([records[i].key for i in range(n)], dtype=np.int64),
        "status": np.array(status, dtype=object),
        "width": np.array([records[i].width for i in range(n)], dtype=np.int32),
        "height": np.array([records[i].height for i in range(n)], dtype=np.int32),
    }


def versions() -> dict[str, str]:
    import PIL
    import torchvision

    return {"mine": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
            "python": platform.python_version()}


def run(cfg: RunConfig, net: Network | None = None) -> RunResult:
    """Mine ``cfg.layer`` over ``cfg.images`` and write the store; returns where and how much."""
    t0 = time.perf_counter()
    if cfg.k < 1:
        raise ValueError("--k must be at least 1")
    if cfg.precision not in DTYPES:
        raise ValueError(f"unknown precision {cfg.precision!r}; use {', '.join(DTYPES)}")
    device = resolve_device(cfg.device)
    source = resolve_images(cfg.images, cfg.data_root)
    net = net or load_network(cfg.model, cfg.weights, cfg.size)
    layers = net.select(cfg.layer)
    prep = Preprocessing(net.preprocessing_mode, cfg.size, cfg.resize)
    indices = list(range(len(source.paths)))[: cfg.limit] if cfg.limit else list(range(len(source.paths)))
    if cfg.limit:
        source = type(source)(source.spec, source.root, tuple(source.paths[i] for i in indices))
    net.to(device)
    if cfg.channels_last:
        net.features.to(memory_format=torch.channels_last)

    state = new_state(net, layers, cfg.k, device)
    loader = make_loader(ImageDataset(source, prep), cfg.batch_size, cfg.workers, device.type == "cuda")
    bar = tqdm(total=len(source.paths), unit="img", desc="mining", disable=not cfg.progress, smoothing=0.1)
    with bar:
        stream(net, state, loader, prep, device, DTYPES[cfg.precision], cfg.channels_last,
               on_batch=lambda n, bad: bar.update(n))
    table = images_table(source, state.records)
    key_to_index = {}
    for i in sorted(state.records):
        if table["status"][i] == "ok":
            key_to_index.setdefault(state.records[i].key, i)

    def describe(layer, c, rank, key):
        return f"{layer} feature {c} rank {rank} ({source.relpath(source.paths[key_to_index[key]])})"

    fin = finalize(net, state.tops, key_to_index, lambda idx: ImageDataset(source, prep, idx), prep, device,
                   cfg.precision, workers=0, describe=describe)
    skipped = int(sum(not s.startswith(("ok", "duplicate")) for s in table["status"]))
    seconds = time.perf_counter() - t0
    attrs = {
        "model": net.arch, "weights": net.weights_name, "weights_hash": net.weights_hash,
        "preprocessing": {"mode": prep.mode, "size": prep.size, "resize": prep.resize},
        "k": cfg.k, "input_size": cfg.size, "images_spec": cfg.images, "images_root": str(source.root),
        "layers": layers, "versions": versions(), "precision": cfg.precision,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images_seen": len(source.paths), "images_skipped": skipped, "seconds": seconds,
    }
    path = Path(cfg.out) if cfg.out else default_store_path(cfg, layers)
    write_store(path, net, attrs, table, fin)
    return RunResult(path, len(source.paths), skipped, time.perf_counter() - t0, layers)
