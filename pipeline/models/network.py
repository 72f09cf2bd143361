"""A network with named layers, their geometry and the identity of its weights.

``Network`` bundles the ``nn.Module`` (any architecture: chains, residual nets, concatenations),
its layer table (from :func:`trace.trace`), the aliases of its family and the identity of the
weights (name, hash, preprocessing). Mining, finalize, deconv and render talk to this object,
never to module indices directly.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.preprocess import Preprocessing
from .layers import LayerInfo, select_layers
from .registry import default_layers
from .trace import trace

CHAIN_MODULES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Identity)


@dataclass
class Network:
    arch: str
    model: nn.Module
    weights_name: str
    weights_hash: str
    preprocessing: Preprocessing  # what the network was trained with (size and resize: the run's); or a preset name
    input_size: int = 224
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> module path
    family: str = "custom"  # registry family: says what ``all`` means
    chain: str | None = None  # path of an nn.Sequential trunk the windowed deconvnet can walk
    layers: dict[str, LayerInfo] = field(init=False)
    default: list[str] | None = field(init=False)  # what ``all`` means; None: every layer

    def __post_init__(self) -> None:
        if isinstance(self.preprocessing, str):  # a preset's name, as Network was built before custom preprocessing
            self.preprocessing = Preprocessing(self.preprocessing, self.input_size)
        name_of = {p: a for a, p in self.aliases.items()}
        table: dict[str, LayerInfo] = {}
        for path, t in _trace(self.model, self.input_size, self.preprocessing.channels).items():
            mod = self.model.get_submodule(path)
            kind = ("pool" if isinstance(mod, nn.MaxPool2d) else
                    "conv" if path in name_of and name_of[path].startswith("conv") else t.kind)
            name = name_of.get(path, path)
            table[name] = LayerInfo(name, path, kind, t.channels, t.geometry, t.out_size, t.order)
        self.layers = table
        self.default = default_layers(self.family, list(table), {n: li.module for n, li in table.items()})

    @property
    def preprocessing_mode(self) -> str:
        """``"torchvision"``, ``"caffe"`` or ``"custom"`` (see :attr:`preprocessing`)."""
        return self.preprocessing.mode

    def prep(self, size: int | None = None, resize: str | None = None) -> Preprocessing:
        """The network's preprocessing at ``size`` (default its input size) with ``resize``."""
        return dataclasses.replace(self.preprocessing, size=size or self.input_size,
                                   resize=resize or self.preprocessing.resize)

    def select(self, spec: str | list[str]) -> list[str]:
        """Layer names for ``conv4_4,layer3.1`` / ``all`` / globs, in network order."""
        return select_layers(spec, list(self.layers), self.default,
                             {n: li.module for n, li in self.layers.items()})

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(self.layers[name].module)

    def pools_through(self, names: list[str]) -> list[str]:
        """Max-pool layers that run before the deepest of ``names`` completes (their switches)."""
        last = max(self.layers[n].order for n in names)
        return [n for n, li in self.layers.items() if li.kind == "pool" and li.order <= last]

    def chain_index(self, name: str) -> int | None:
        """Index of the layer in the chain trunk when the windowed deconvnet can walk down to it."""
        if self.chain is None:
            return None
        path = self.layers[name].module
        prefix = f"{self.chain}."
        if not path.startswith(prefix) or not path[len(prefix):].isdigit():
            return None
        end = int(path[len(prefix):])
        trunk = self.model.get_submodule(self.chain)
        return end if all(isinstance(m, CHAIN_MODULES) for m in list(trunk)[: end + 1]) else None

    def chain_modules(self) -> list[nn.Module]:
        return list(self.model.get_submodule(self.chain)) if self.chain else []

    def to(self, device: torch.device | str) -> "Network":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")


def _trace(model: nn.Module, size: int, channels: int) -> dict:
    """``trace`` with an error that says what does not fit: the channels, else the size."""
    try:
        return trace(model, size, channels)
    except ValueError as e:
        first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None and first[1].in_channels != channels:
            want = first[1].in_channels
            raise ValueError(f"this network takes {want}-channel input (its first convolution {first[0]} has "
                             f"in_channels={want}) but the preprocessing gives {channels} channel(s): pass "
                             f"--channels {want}, or set model.preprocessing in the model's factory") from None
        raise ValueError(f"{e} (for smaller inputs use a larger --size)") from None


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys and float32 bytes: the identity a store records."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
