"""A feature extractor with named layers and their geometry.

``Network`` bundles the module list, its layer table and the identity of the
weights (name, hash, preprocessing). Everything downstream (mining, finalize,
deconv) talks to this object, never to VGG indices directly.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from .geometry import output_size, receptive_field
from .layers import LayerInfo, name_layers, select_layers


@dataclass
class Network:
    arch: str
    features: nn.Sequential
    weights_name: str
    weights_hash: str
    preprocessing_mode: str  # "torchvision" or "caffe"
    input_size: int = 224
    style: str = "vgg"
    layers: dict[str, LayerInfo] = field(init=False)

    def __post_init__(self) -> None:
        mods = list(self.features)
        table: dict[str, LayerInfo] = {}
        for name, (kind, end, ch) in name_layers(mods, self.style).items():
            r, s, p = receptive_field(mods, end)
            table[name] = LayerInfo(name, kind, end, ch, r, s, p, output_size(mods, end, self.input_size))
        self.layers = table

    @property
    def modules(self) -> list[nn.Module]:
        return list(self.features)

    def select(self, spec: str | list[str]) -> list[str]:
        return select_layers(spec, list(self.layers))

    def to(self, device: torch.device | str) -> "Network":
        self.features.to(device)
        return self


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys and float32 bytes: the identity a store records."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
