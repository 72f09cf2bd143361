"""Optimise one image per unit, for a batch of units of one layer at once.

Objective ``channel``: the mean of the unit's map; ``neuron``: the unit at the map's centre.
Every step renders the Fourier images, warps each by its own random transform, resizes the batch
to a random input size (``transforms.random_input_size``: scale robustness), applies the
model's own preprocessing (RGB/BGR, mean/std) and runs the network up to the layer (the forward
stops there); Adam then ascends each unit's objective. Units are independent rows (eval mode,
per-row generators, element-wise Adam), so a batch gives each unit the image it gets alone: exactly
so in float64; in float32 a batched convolution rounds differently in the last bit and Adam's
normalised steps amplify that over many steps, so the images agree closely but not bit for bit.

A unit silent on the flat grey start gets no gradient through its own ReLU and would come back as
that start. For the first ``redirect`` share of the steps every rectifier therefore follows Lucid's
redirected gradient (``deconv.rules``, rule ``redirected``): in a unit's row where the ordinary
gradient is zero everywhere, the signal passes unless it would push the input further below zero,
so the pre-activation rises until the unit fires; where the ordinary gradient is not zero, it is used
(the rule is per row, so units stay independent).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..data.preprocess import Preprocessing, as_seen, normalize_float
from ..deconv.rules import rectifier_rules
from ..models.hooks import hooked, run_to
from ..models.network import Network
from .fourier import FourierImage
from .transforms import ZOOM, random_affine, random_input_size, resize, warp

OBJECTIVES = ("channel", "neuron")


@dataclass
class VisualizeConfig:
    objective: str = "channel"
    steps: int = 512
    lr: float = 0.05
    seed: int = 0
    redirect: float = 0.2  # share of the steps, the first ones, under the redirected ReLU gradient
    zoom: tuple[float, float] = ZOOM  # range of the network's input size over the image size; (1, 1): none
    progress: bool = False


def unit_seed(seed: int, layer: str, channel: int) -> int:
    """A unit's own seed: the same image whatever batch it is optimised in."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{layer}/{channel}".encode()).digest()[:7], "big")


def objective(out: torch.Tensor, channels: torch.Tensor, kind: str) -> torch.Tensor:
    """(B,) objective of row b's unit ``channels[b]`` in the layer output ``out``."""
    maps = out[torch.arange(len(channels), device=out.device), channels]
    if kind == "channel":
        return maps.flatten(1).mean(1)
    h, w = maps.shape[-2:]
    return maps[:, h // 2, w // 2]


def layer_output(net: Network, layer: str, x: torch.Tensor) -> torch.Tensor:
    got = {}
    with hooked(net, [layer], lambda n, out: got.setdefault(n, out)):
        run_to(net, x)
    return got[layer]


def visualize_units(net: Network, layer: str, channels: list[int], prep: Preprocessing,
                    cfg: VisualizeConfig = VisualizeConfig()) -> torch.Tensor:
    """(B, 3, S, S) float32 RGB images in [0, 1] (before the network's normalisation), S = prep.size;
    grey (the luma the network sees) for a one-channel network."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r}; use one of: {', '.join(OBJECTIVES)}")
    if cfg.steps < 1:
        raise ValueError("--steps must be at least 1")
    n_ch = net.layers[layer].channels
    bad = [c for c in channels if not 0 <= c < n_ch]
    if bad:
        raise ValueError(f"feature {bad[0]} out of range: {layer} has {n_ch} channels (0-{n_ch - 1})")
    dev = net.device
    dtype = next(net.model.parameters()).dtype
    gens = [torch.Generator().manual_seed(unit_seed(cfg.seed, layer, c)) for c in channels]
    sizes = torch.Generator().manual_seed(unit_seed(cfg.seed, layer, -1))  # the run's own: input sizes
    param = FourierImage.random(gens, prep.size).to(dev, dtype)
    opt = torch.optim.Adam(param.parameters(), lr=cfg.lr)
    ch = torch.as_tensor(channels, device=dev)
    redirected = math.ceil(cfg.redirect * cfg.steps)
    for step in tqdm(range(cfg.steps), desc=f"visualize {layer}", unit="step", disable=not cfg.progress):
        theta = random_affine(gens, prep.size).to(dev)
        rule = rectifier_rules("redirected") if step < redirected else contextlib.nullcontext()
        with torch.enable_grad(), rule:
            n = random_input_size(sizes, prep.size, cfg.zoom)
            x = normalize_float(resize(warp(param.image(), theta), n), prep)
            loss = -objective(layer_output(net, layer, x), ch, cfg.objective).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    with torch.no_grad():
        return as_seen(param.image().float().cpu(), prep)
