"""Tiny one-channel models and datasets for the preprocessing and array-input tests.

Importable as ``--model tiny_models:digits`` (tests/ is on the path in pytest; subprocesses get
it through PYTHONPATH). Everything is seeded and small enough for a 2-core machine.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

MNIST_LIKE = {"channels": 1, "mean": [0.1307], "std": [0.3081]}


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU())


def digits() -> nn.Module:
    """A one-channel CNN that says what it was trained with (the documented attribute)."""
    m = _net()
    m.preprocessing = dict(MNIST_LIKE)
    return m


def plain() -> nn.Module:
    """The same CNN without the attribute: needs --channels 1 on the command line."""
    return _net()


def colour() -> nn.Module:
    """A three-channel twin (torchvision's preprocessing, the default)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU())


def digit_arrays(n: int = 12, size: int = 16, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) uint8 smooth grey blobs and (n,) int64 labels, a few of them repeated."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(3, size - 3), rng.uniform(3, size - 3), rng.uniform(2, 5)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out[i] = np.clip(blob * 230 + rng.integers(0, 25, (size, size)), 0, 255).astype(np.uint8)
    out[n - 1] = out[2]  # a duplicate content
    return out, (np.arange(n) % 3).astype(np.int64)


class Digits(Dataset):
    """``(image, label)`` items: PIL images, or float (1, H, W) tensors in [0, 1] when ``tensors``."""

    def __init__(self, tensors: bool = False, fail_at: int | None = None) -> None:
        self.images, self.labels = digit_arrays()
        self.tensors, self.fail_at = tensors, fail_at

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if i == self.fail_at:
            raise OSError(f"item {i} is broken")
        from PIL import Image

        img = self.images[i]
        item = torch.from_numpy(img).float().div(255).unsqueeze(0) if self.tensors else Image.fromarray(img)
        return item, int(self.labels[i])


def dataset() -> Dataset:
    return Digits()


def tensor_dataset() -> Dataset:
    return Digits(tensors=True)


def broken_dataset() -> Dataset:
    return Digits(fail_at=4)


def autoencoder() -> nn.Module:
    """The convolutional autoencoder of tests/autoencoders.py on one channel, saying so."""
    from autoencoders import make

    m = make("convT", channels=1)
    m.preprocessing = {"channels": 1, "mean": [0.0], "std": [1.0]}
    return m


LONG = "c" * 300  # a layer name longer than a file name may be


def odd_names() -> nn.Module:
    """Layers named ``a/b`` and ``a_b`` (the same file name under a naive escape) and a 300-character one."""
    m = nn.Sequential()
    m.add_module("a/b", nn.Conv2d(3, 4, 3))
    m.add_module("a_b", nn.ReLU())
    m.add_module(LONG, nn.Conv2d(4, 4, 3))
    return m
