"""A torch ``Dataset`` over an :class:`~pipeline.data.sources.ImageSource` that never raises.

Why these choices:

* **Every item is a record, good or bad.** A bad file yields ``ok=False`` with a reason and
  all-zero pixels instead of an exception, so a worker never dies, the batch shape stays fixed,
  and the miner can count and store every failure while skipping those rows.
* **Image identity is the content, not the name.** ``key`` is derived from the SHA-256 of the
  file bytes (:func:`image_key`), so the same picture gets the same id on every machine, under
  any file name, in any shard. The miner breaks ties by this id; deterministic ties across runs,
  resumes and merges depend on it. A file that could not even be read has no content, so its
  key hashes ``"unreadable:" + relative path`` instead (still a stable int63, never equal to
  a content key in practice) and its ``sha256`` is ``""``. Files are read by
  :func:`~pipeline.data.safe_read.read_file` (regular files only, bounded size, never blocking);
  a file whose name is not UTF-8 is not read at all. An array or Dataset item is read from its
  collection as PNG bytes (``data.arrays``), so the same rules hold for it.
* **uint8 out of the workers.** Pixels leave the loader as uint8 NHWC; normalisation happens on
  the device (:func:`~pipeline.data.preprocess.normalize`), 4x less copying than float32.
* **Loader defaults.** ``shuffle=False`` (order is part of the contract), ``prefetch_factor=4``
  (JPEG decoding is the usual bottleneck; deeper queues smooth out slow files), persistent
  workers off (a run makes one pass; nothing to keep alive).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .decode import BadImage, decode_with_size
from .preprocess import Preprocessing, to_pixels
from .safe_read import Unreadable
from .sources import ImageSource

__all__ = ["ImageDataset", "collate", "image_key", "make_loader"]


def image_key(sha256_hex: str) -> int:
    """Stable non-negative int63 image id: the first 8 bytes of the SHA-256, shifted right by 1.

    63 bits so it fits a signed int64 (torch/HDF5) without going negative.
    """
    return int.from_bytes(bytes.fromhex(sha256_hex[:16]), "big") >> 1


class ImageDataset(Dataset):
    """Item ``i`` is the record of ``source.paths[indices[i]]`` (see module docstring).

    ``indices`` selects a subset/order of the source (resume, shards, finalize's re-run over the
    kept images); the record's ``"index"`` is always the position in ``source.paths``.
    """

    def __init__(
        self,
        source: ImageSource,
        prep: Preprocessing,
        indices: Sequence[int] | None = None,
    ):
        self.source = source
        self.prep = prep
        n = len(source.paths)
        self.indices = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"indices out of range for {n} images: {bad[:5]}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        try:
            data = self.source.read(index)
        except Unreadable as exc:
            return self.record(index, exc)
        return self.record(index, data)

    def record(self, index: int, data: bytes | Unreadable) -> dict[str, Any]:
        """The record of file ``index`` from its bytes (or why they could not be read), so a
        subclass that reads the file itself (``jobs.update.SkipKnown``) reads it once."""
        size = self.prep.size
        record: dict[str, Any] = {
            "index": index,
            "key": 0,
            "sha256": "",
            "ok": False,
            "reason": "",
            "pixels": torch.zeros((size, size, 3), dtype=torch.uint8),
            "width": 0,
            "height": 0,
        }
        if isinstance(data, Unreadable):
            token = "unreadable:" + self.source.relname(index)
            record["key"] = image_key(hashlib.sha256(token.encode("utf-8")).hexdigest())
            record["reason"] = str(data)
            return record

        digest = hashlib.sha256(data).hexdigest()
        record["sha256"] = digest
        record["key"] = image_key(digest)
        try:
            img, (width, height) = decode_with_size(data, size)
            pixels = to_pixels(img, self.prep)
        except BadImage as exc:
            record["reason"] = str(exc)
            return record
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not kill the run either
            record["reason"] = f"corrupt: {type(exc).__name__}: {exc}"[:160]
            return record
        record.update(
            ok=True, pixels=torch.from_numpy(pixels), width=int(width), height=int(height)
        )
        return record


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack records: ``pixels`` (B, S, S, 3) uint8; ``index``/``key``/``width``/``height``
    int64; ``ok`` bool; ``sha256``/``reason`` lists of str."""
    return {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "key": torch.tensor([it["key"] for it in items], dtype=torch.int64),
        "sha256": [it["sha256"] for it in items],
        "ok": torch.tensor([it["ok"] for it in items], dtype=torch.bool),
        "reason": [it["reason"] for it in items],
        "pixels": torch.stack([it["pixels"] for it in items]),
        "width": torch.tensor([it["width"] for it in items], dtype=torch.int64),
        "height": torch.tensor([it["height"] for it in items], dtype=torch.int64),
    }


def make_loader(
    dataset: Dataset, batch_size: int, workers: int, pin_memory: bool
) -> DataLoader:
    """Ordered loader with :func:`collate` (see module docstring for the settings)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
