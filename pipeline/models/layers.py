"""Layer names: qualified module paths, paper aliases for chains, and selection.

Every layer is the output of a named module (``layer3.1``, ``features.16``). Conv chains keep
the names of their papers as aliases, derived by walking the chain, never typed in by index:

- ``style="vgg"``: ``conv{block}_{i}`` is the i-th conv of a block *after* its ReLU (if one
  follows, behind a BatchNorm or not), ``pool{block}`` the block's pool; the block counter advances after each pool.
- ``style="flat"`` (AlexNet, ZFNet): ``conv{n}`` counts convs (its ReLU's output, as for VGG),
  ``pool{n}`` is the pool after conv n: ``pool1``, ``pool2``, ``pool5``.

A layer's *name* is its alias when it has one, else its module path; both are accepted
wherever a layer is asked for.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from .geometry import Geometry


@dataclass(frozen=True)
class LayerInfo:
    """One named layer: the module whose output it is, and its shape facts."""

    name: str  # alias if it has one, else the module path
    module: str  # qualified module path
    kind: str  # "conv", "pool" (max-pool: has switches) or the module's class name
    channels: int
    geometry: Geometry
    out_size: int  # spatial size for the configured input size
    order: int  # completion order in the forward pass

    @property
    def rf(self) -> int:
        return self.geometry.rf

    @property
    def stride(self) -> int:
        """S; for a decoder layer the pixels per ``geometry.period`` units (``geometry.stride_text``)."""
        return self.geometry.stride

    @property
    def padding(self) -> int:
        return self.geometry.padding


def chain_aliases(chain: nn.Sequential, prefix: str, style: str = "vgg") -> dict[str, str]:
    """alias -> module path (``prefix.N``) for the convs and pools of a chain."""
    mods = list(chain)
    names: dict[str, str] = {}
    block, conv_in_block, conv_count = 1, 0, 0
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            conv_in_block += 1
            conv_count += 1
            end = i
            while end + 1 < len(mods) and isinstance(mods[end + 1], nn.BatchNorm2d):
                end += 1
            end = end + 1 if end + 1 < len(mods) and isinstance(mods[end + 1], nn.ReLU) else i
            names[f"conv{block}_{conv_in_block}" if style == "vgg" else f"conv{conv_count}"] = f"{prefix}.{end}"
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            names[f"pool{block}" if style == "vgg" else f"pool{conv_count}"] = f"{prefix}.{i}"
            block += 1
            conv_in_block = 0
    return names


def select_layers(spec: str | list[str], available: list[str], default: list[str] | None = None,
                  paths: dict[str, str] | None = None) -> list[str]:
    """Resolve ``conv4_4,layer3.1``, ``all`` (``default``), ``conv*`` / ``layer3.*`` globs.

    ``available``: layer names in network order; ``paths``: name -> module path, so a layer may
    also be given by its path. Returns names in network order; raises ValueError naming what exists.
    """
    parts = spec if isinstance(spec, list) else [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("no layer given; choose from: " + _listing(available))
    by_path = {p: n for n, p in (paths or {}).items()}
    chosen: set[str] = set()
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"layer names are strings, got {part!r}")
        if part == "all":
            hits = list(default if default is not None else available)
        elif part in by_path:
            hits = [by_path[part]]
        else:
            hits = [n for n in available if fnmatch.fnmatchcase(n, part)]
            hits += [by_path[p] for p in by_path if fnmatch.fnmatchcase(p, part)]
        if not hits:
            raise ValueError(f"unknown layer {part!r}; this model has: " + _listing(available))
        chosen.update(hits)
    return [n for n in available if n in chosen]


def _listing(names: list[str], most: int = 60) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all; `mine layers` lists them)" if len(names) > most else "")
