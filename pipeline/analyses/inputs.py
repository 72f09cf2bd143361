"""Image files a user names on the command line, as the network sees them (uint8 RGB, S x S).

The same decode + resize as ``mine run`` (``data.decode`` and ``data.preprocess.to_pixels``), so
a reconstruction or an occlusion map lines up with what mining ranked. A file that cannot be
decoded is one clear error (these commands take a handful of named files: skipping one silently
would hide a typo).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import BadImage, Preprocessing, SourceError, Unreadable, decode_image, normalize, read_file, to_pixels
from ..models.network import Network


def preprocessing(net: Network, resize: str = "center-crop") -> Preprocessing:
    """The weights' convention at the network's input size."""
    return net.prep(net.input_size, resize)


def load_pixels(paths: list[str | Path], prep: Preprocessing) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB network inputs of the files, in the order given."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"image {p} does not exist")
        try:  # the one reader of files: a folder, FIFO or /dev/zero is named as such, never read
            data = read_file(p)
        except Unreadable as e:
            raise SourceError(f"image {p}: {e}") from None
        try:
            out.append(to_pixels(decode_image(data, prep.size), prep))
        except BadImage as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
    return np.stack(out) if out else np.zeros((0, prep.size, prep.size, 3), np.uint8)


def image_stems(paths: list[str | Path]) -> list[str]:
    """Output name stems of the images: the file's stem, and where two different files share a stem
    (``a/x.jpg`` and ``b/x.jpg``) the stem and 8 hex digits of the resolved path's hash, so no output
    overwrites another. The same file named twice keeps one name (its outputs are the same)."""
    import hashlib
    from collections import defaultdict

    files = defaultdict(set)
    for p in map(Path, paths):
        files[p.stem].add(p.resolve())
    return [p.stem if len(files[p.stem]) == 1 else
            f"{p.stem}-{hashlib.sha256(str(p.resolve()).encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
            for p in map(Path, paths)]


def as_input(pixels: np.ndarray, prep: Preprocessing, device) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> normalised float32 (N, 3, S, S) on ``device``."""
    return normalize(torch.from_numpy(np.ascontiguousarray(pixels)).to(device), prep)
