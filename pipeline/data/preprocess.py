"""How an RGB image becomes the tensor a network sees, split in two deliberate halves.

1. :func:`to_pixels` (CPU, in the data loader): geometry only. Resize and crop/pad to
   ``size x size`` and return **uint8 RGB** pixels. This is "the image as the network sees it
   before normalisation": finalize stores crops of exactly these pixels, and render shows them,
   so a receptive-field box computed on the network input lands on the right pixels.
2. :func:`normalize` (on the accelerator, per batch): arithmetic only. uint8 -> float32, NHWC ->
   NCHW, channel order and mean/std of the weights' convention. Shipping uint8 from the workers
   is 4x less host-to-device traffic than float32, and the arithmetic is free on a GPU.

Two conventions exist for VGG weights and they are *not* interchangeable:

* ``"torchvision"``: RGB, values /255, minus mean (0.485, 0.456, 0.406), divided by std
  (0.229, 0.224, 0.225).
* ``"caffe"`` (the original VGG release and ports of it): BGR, 0..255 scale, minus the mean
  pixel (B, G, R) = (103.939, 116.779, 123.68), no std. Render must swap projections back to RGB
  (see :func:`channel_order`); forgetting this is a classic red/blue swap bug.

Resize policies (:data:`RESIZE_POLICIES`), all bilinear. PIL's bilinear resampling widens its
kernel when shrinking, i.e. it is antialiased, which is also what torchvision's ``Resize`` does on
PIL images:

* ``"center-crop"`` (default): shorter side to ``size`` (longer side ``int(size * long /
  short)``, as torchvision computes it), then the central ``size x size`` window (offsets rounded
  as torchvision's ``CenterCrop``). Keeps aspect ratio and the largest central region. Note this
  is not the classic "resize 256, crop 224" evaluation: the whole shorter side is kept because
  mining wants every pixel of the object, not a zoomed-in view.
* ``"squash"``: straight to ``size x size``; nothing is lost, aspect ratio is.
* ``"pad"``: longer side to ``size``, centred on a canvas of the mean colour of the mode, which
  normalises to ~0 so the border adds (almost) no signal.

Resizing never allocates more than :data:`MAX_RESIZED_PIXELS`: a larger intermediate is refused
as a ``decompression bomb`` (:class:`~pipeline.data.decode.BadImage`) before resampling.

An image that is already ``size x size`` passes through untouched under every policy (no
resampling round trip), which keeps pre-cropped datasets bit-exact.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from .decode import BadImage

__all__ = [
    "CAFFE_MEAN_BGR",
    "MAX_RESIZED_PIXELS",
    "MODES",
    "Preprocessing",
    "RESIZE_POLICIES",
    "TORCHVISION_MEAN",
    "TORCHVISION_STD",
    "channel_order",
    "normalize",
    "normalize_float",
    "pad_color",
    "to_pixels",
]

#: Largest intermediate image a resize may produce (width x height). Only ``center-crop`` can
#: exceed ``size x size``: it scales the *shorter* side to ``size``, so a 100000 x 1 strip (a
#: few hundred bytes of PNG, well under the decoder's pixel limit) would become 6.4 G pixels at
#: 224. 25 megapixels (75 MB of RGB) allows a 500:1 panorama at 224.
MAX_RESIZED_PIXELS = 25_000_000

MODES = ("torchvision", "caffe")
RESIZE_POLICIES = ("center-crop", "squash", "pad")

TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # RGB, unit scale
TORCHVISION_STD = (0.229, 0.224, 0.225)  # RGB, unit scale
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # B, G, R on the 0..255 scale


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to reproduce the network input from an image file.

    Stored with every run (HDF5 attributes via :meth:`to_dict`) so that finalize and render
    re-create exactly the same pixels and normalisation.
    """

    mode: str  # "torchvision" or "caffe"
    size: int = 224
    resize: str = "center-crop"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"unknown preprocessing mode {self.mode!r}; expected one of {', '.join(MODES)}"
            )
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(
                f"unknown resize policy {self.resize!r}; "
                f"expected one of {', '.join(RESIZE_POLICIES)}"
            )
        if isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral):
            raise ValueError(f"preprocessing size must be a positive integer, got {self.size!r}")
        if self.size < 1:
            raise ValueError(f"preprocessing size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))  # numpy ints -> int, for hashing/attrs

    def to_dict(self) -> dict[str, Any]:
        """Plain ``str``/``int`` values, safe as HDF5 attributes or TOML/JSON."""
        return {"mode": self.mode, "size": self.size, "resize": self.resize}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`; accepts what h5py hands back (bytes, numpy scalars).

        Unknown keys are ignored so that stores written by later versions stay readable.
        """
        if "mode" not in d:
            raise ValueError("preprocessing record has no 'mode'")
        return cls(
            mode=_as_str(d["mode"]),
            size=int(d.get("size", 224)),
            resize=_as_str(d.get("resize", "center-crop")),
        )


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return str(value)


def channel_order(prep: Preprocessing) -> str:
    """``"BGR"`` for caffe-converted weights, else ``"RGB"``: the order of input channel 0..2."""
    return "BGR" if prep.mode == "caffe" else "RGB"


def pad_color(prep: Preprocessing) -> tuple[int, int, int]:
    """RGB uint8 colour that normalises to (almost) zero under ``prep.mode``."""
    if prep.mode == "caffe":
        b, g, r = CAFFE_MEAN_BGR
        return (round(r), round(g), round(b))
    return tuple(round(m * 255) for m in TORCHVISION_MEAN)  # type: ignore[return-value]


def to_pixels(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize/crop/pad ``img`` per ``prep`` and return uint8 ``(size, size, 3)`` RGB pixels."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    size = prep.size
    w, h = img.size
    if (w, h) == (size, size):
        return np.array(img, dtype=np.uint8)  # pass-through, byte-identical
    if prep.resize == "center-crop":
        out = _center_crop(img, size)
    elif prep.resize == "squash":
        out = img.resize((size, size), Image.Resampling.BILINEAR)
    else:
        out = _pad(img, size, pad_color(prep))
    pixels = np.array(out, dtype=np.uint8)
    assert pixels.shape == (size, size, 3), pixels.shape
    return pixels


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if new_w * new_h > MAX_RESIZED_PIXELS:  # checked before anything is allocated
        raise BadImage("decompression bomb", f"{w}x{h} resized to {size} px would be {new_w}x{new_h}, "
                                             f"over {MAX_RESIZED_PIXELS} pixels")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _pad(img: Image.Image, size: int, color: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    scale = size / max(w, h)
    new_w = size if w >= h else max(1, round(w * scale))
    new_h = size if h >= w else max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), color)
    canvas.paste(img, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def normalize(pixels: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` RGB -> contiguous float32 ``(B, 3, H, W)`` on the same device.

    The output channel order is :func:`channel_order` (BGR for caffe weights).
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(
            "normalize expects uint8 pixels shaped (B, H, W, 3), "
            f"got {pixels.dtype} {tuple(pixels.shape)}"
        )
    return _standardise(pixels.permute(0, 3, 1, 2).to(torch.float32), prep)


def normalize_float(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Differentiable twin of :func:`normalize` for float RGB images ``(B, 3, H, W)`` in [0, 1]
    (what feature visualisation optimises): the same channel order, mean and std."""
    return _standardise(image * 255.0, prep)


def _standardise(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` on the 0..255 scale -> the weights' convention."""
    if prep.mode == "caffe":
        x = x.flip(1)  # RGB -> BGR
        mean = torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float32, device=x.device)
        x = x - mean.view(1, 3, 1, 1)
    else:
        mean = torch.tensor(TORCHVISION_MEAN, dtype=torch.float32, device=x.device)
        std = torch.tensor(TORCHVISION_STD, dtype=torch.float32, device=x.device)
        x = (x / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous()
