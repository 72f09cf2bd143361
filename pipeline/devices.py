"""Device policy in one place: ``--device auto|cpu|cuda[:N]`` -> a torch device (one clear error for a missing
GPU), and what a GPU changes: pinned loader memory and channels-last convolutions."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def pin_memory(device: torch.device) -> bool:
    """Loaders pin their batches for a GPU: a copy from page-locked memory can be ``non_blocking``, so the
    next batch's transfer overlaps this batch's compute. On the CPU pinning only costs."""
    return device.type == "cuda"


def channels_last(device: torch.device, asked: bool = False) -> bool:
    """The streaming pass runs channels-last on a GPU (tensor-core convolutions want NHWC) or when asked
    (``--channels-last`` on the CPU proves it changes nothing). One rule for the pass, its statistics
    re-runs and the capture's exactness test."""
    return asked or device.type == "cuda"
