"""Layer names for feed-forward conv nets, derived from the modules themselves.

A *layer* is a named point in the network whose output we rank or project through.
Names are assigned by walking the module list, never by hard-coded indices, so the
same code names VGG16, VGG19 and (with ``style="flat"``) AlexNet/ZFNet-like nets:

- ``style="vgg"``: ``conv{block}_{i}`` is the output of the i-th conv of a block
  *after* its ReLU (if a ReLU follows it), ``pool{block}`` the output of the block's
  max-pool; the block counter advances after each pool.
- ``style="flat"``: ``conv{n}`` / ``pool{n}`` count convs and pools independently.

The module that *ends* a layer (the ReLU after a conv, or the pool) is where a
forward hook sees the layer's value.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LayerInfo:
    """One named layer: where it ends in the module list and its shape facts."""

    name: str
    kind: str  # "conv" or "pool"
    end: int  # index (in the module list) of the module whose output is this layer
    channels: int
    rf: int  # receptive-field size R in input pixels
    stride: int  # effective stride S
    padding: int  # effective padding P
    out_size: int  # spatial size for the configured input size


def name_layers(modules: list[nn.Module], style: str = "vgg") -> dict[str, tuple[str, int, int]]:
    """Map layer name -> (kind, end index, channels) by walking ``modules`` in order."""
    names: dict[str, tuple[str, int, int]] = {}
    block, conv_in_block, conv_count, pool_count, channels = 1, 0, 0, 0, 0
    for i, m in enumerate(modules):
        if isinstance(m, nn.Conv2d):
            conv_in_block += 1
            conv_count += 1
            channels = m.out_channels
            end = i + 1 if i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU) else i
            name = f"conv{block}_{conv_in_block}" if style == "vgg" else f"conv{conv_count}"
            names[name] = ("conv", end, channels)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            pool_count += 1
            name = f"pool{block}" if style == "vgg" else f"pool{pool_count}"
            names[name] = ("pool", i, channels)
            block += 1
            conv_in_block = 0
    return names


def select_layers(spec: str | list[str], available: list[str]) -> list[str]:
    """Resolve ``conv4_4,conv5_2``, ``all`` (every conv layer), ``conv*`` globs.

    Returns names in network order; raises ValueError naming what exists.
    """
    parts = spec if isinstance(spec, list) else [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("no layer given; choose from: " + ", ".join(available))
    chosen: set[str] = set()
    for part in parts:
        if part == "all":
            hits = [n for n in available if n.startswith("conv")]
        else:
            hits = [n for n in available if fnmatch.fnmatchcase(n, part)]
        if not hits:
            raise ValueError(f"unknown layer {part!r}; this model has: " + ", ".join(available))
        chosen.update(hits)
    return [n for n in available if n in chosen]
