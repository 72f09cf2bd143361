"""VGG16/VGG19 feature stacks from torchvision's architecture definition.

Only ``features`` is built: the fully-connected head is 120M parameters whose
random initialisation alone costs seconds and which no layer we mine needs.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import vgg as tv_vgg

ARCHS = {"vgg16": "D", "vgg19": "E"}  # torchvision's configuration letters


def build_features(arch: str) -> nn.Sequential:
    """torchvision's VGG ``features`` with torchvision's initialisation (kaiming, zero bias)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown model {arch!r}; choose from: {', '.join(ARCHS)}")
    features = tv_vgg.make_layers(tv_vgg.cfgs[ARCHS[arch]], batch_norm=False)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return features


def seeded_features(arch: str, seed: int = 0) -> nn.Sequential:
    """Random weights that are the same on every machine (for tests and dry runs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_features(arch)
