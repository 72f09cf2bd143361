"""How an RGB image becomes the tensor a network sees, split in two deliberate halves.

1. :func:`to_pixels` (CPU, in the data loader): geometry only. Resize and crop/pad to
   ``size x size`` and return **uint8 RGB** pixels. This is "the image as the network sees it
   before normalisation": finalize stores crops of exactly these pixels, and render shows them,
   so a receptive-field box computed on the network input lands on the right pixels.
2. :func:`normalize` (on the accelerator, per batch): arithmetic only. uint8 -> float32, NHWC ->
   NCHW, channel order and mean/std of the weights' convention. Shipping uint8 from the workers
   is 4x less host-to-device traffic than float32, and the arithmetic is free on a GPU.

Two presets exist for ImageNet weights and they are *not* interchangeable:

* ``"torchvision"``: RGB, values /255, minus mean (0.485, 0.456, 0.406), divided by std
  (0.229, 0.224, 0.225).
* ``"caffe"`` (the original VGG release and ports of it): BGR, 0..255 scale, minus the mean
  pixel (B, G, R) = (103.939, 116.779, 123.68), no std. Render must swap projections back to RGB
  (see :func:`channel_order`); forgetting this is a classic red/blue swap bug.

Any other network says what it was trained with (``mode="custom"``): ``channels`` (1: the image
is converted to grey with PIL's ITU-R 601-2 luma, 3: RGB) and a ``mean``/``std`` per channel
applied to pixels in [0, 1], e.g. MNIST's ``channels=1, mean=(0.1307,), std=(0.3081,)``, or
``mean=(0,), std=(1,)`` for a network trained on plain [0, 1] pixels. :func:`resolve` builds one
from layered choices (the weights' preset, the model's own ``preprocessing`` attribute, the
config file, the command line). A one-channel network still gets 3-channel uint8 pixels from
:func:`to_pixels`, grey (R = G = B): stores, crops and montages keep one layout and show grey,
and :func:`normalize` hands the network channel 0.

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

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from PIL import Image

from .decode import BadImage

__all__ = [
    "CAFFE_MEAN_BGR",
    "as_seen",
    "MAX_RESIZED_PIXELS",
    "MODES",
    "PRESETS",
    "Preprocessing",
    "RESIZE_POLICIES",
    "TORCHVISION_MEAN",
    "TORCHVISION_STD",
    "channel_order",
    "normalize",
    "normalize_float",
    "options",
    "pad_color",
    "parse_values",
    "resolve",
    "to_device",
    "to_pixels",
]

#: Largest intermediate image a resize may produce (width x height). Only ``center-crop`` can
#: exceed ``size x size``: it scales the *shorter* side to ``size``, so a 100000 x 1 strip (a
#: few hundred bytes of PNG, well under the decoder's pixel limit) would become 6.4 G pixels at
#: 224. 25 megapixels (75 MB of RGB) allows a 500:1 panorama at 224.
MAX_RESIZED_PIXELS = 25_000_000

PRESETS = ("torchvision", "caffe")
MODES = (*PRESETS, "custom")
#: PIL's "L" conversion (ITU-R 601-2 luma): what a one-channel network sees of a colour image.
LUMA = (0.299, 0.587, 0.114)
RESIZE_POLICIES = ("center-crop", "squash", "pad")

TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # RGB, unit scale
TORCHVISION_STD = (0.229, 0.224, 0.225)  # RGB, unit scale
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # B, G, R on the 0..255 scale


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to reproduce the network input from an image file.

    Stored with every run (HDF5 attributes via :meth:`to_dict`) so that finalize and render
    re-create exactly the same pixels and normalisation. ``channels``, ``mean`` and ``std``
    belong to ``mode="custom"`` only (the presets fix them).
    """

    mode: str  # "torchvision", "caffe" or "custom"
    size: int = 224
    resize: str = "center-crop"
    channels: int = 3
    mean: tuple[float, ...] = ()  # custom: per channel, on the [0, 1] scale
    std: tuple[float, ...] = ()

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
        if self.mode != "custom":
            if (self.channels, self.mean, self.std) != (3, (), ()):
                raise ValueError(f"the {self.mode} preset fixes channels, mean and std; use mode 'custom'")
            return
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"--channels must be 1 or 3 (got {self.channels!r})")
        object.__setattr__(self, "channels", int(self.channels))
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != self.channels:
                raise ValueError(f"--{name} has {len(values)} values for {self.channels} channel(s)")
            if not all(math.isfinite(v) for v in values) or (name == "std" and min(values) <= 0):
                raise ValueError(f"--{name} must be finite{' and > 0' if name == 'std' else ''} (got {values})")
            object.__setattr__(self, name, values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, safe as HDF5 attributes or TOML/JSON. A preset writes only mode, size
        and resize, exactly as stores did before custom preprocessing existed."""
        d: dict[str, Any] = {"mode": self.mode, "size": self.size, "resize": self.resize}
        if self.mode == "custom":
            d.update(channels=self.channels, mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`; accepts what h5py hands back (bytes, numpy scalars).

        Unknown keys are ignored so that stores written by later versions stay readable.
        """
        if "mode" not in d:
            raise ValueError("preprocessing record has no 'mode'")
        mode = _as_str(d["mode"])
        extra = {}
        if mode == "custom":
            extra = {"channels": int(d.get("channels", 3)), "mean": tuple(parse_values(d.get("mean", ()), "mean")),
                     "std": tuple(parse_values(d.get("std", ()), "std"))}
        return cls(
            mode=mode,
            size=int(d.get("size", 224)),
            resize=_as_str(d.get("resize", "center-crop")),
            **extra,
        )


def parse_values(value: Any, name: str) -> list[float]:
    """``"0.1307"``, ``"0.485,0.456,0.406"``, a number or a list of numbers -> floats."""
    try:
        if isinstance(value, (str, bytes)):
            text = _as_str(value)
            return [float(v) for v in text.split(",")] if text.strip() else []
        items = [value] if isinstance(value, numbers.Real) else list(value)
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
            raise TypeError
        return [float(v) for v in items]
    except (TypeError, ValueError):
        return _bad(name, value)


def _bad(name: str, value: Any) -> list[float]:
    raise ValueError(f"--{name} must be a number or comma-separated numbers such as 0.1307 or "
                     f"0.485,0.456,0.406 (got {value!r})")


#: Keys a layer of :func:`resolve` may hold (``preset`` also as ``mode``).
SPEC_KEYS = ("preset", "mode", "channels", "mean", "std")


def resolve(layers: Iterable[Mapping[str, Any] | str | None], size: int = 224,
            resize: str = "center-crop") -> Preprocessing:
    """Combine preprocessing choices, later ones overriding earlier ones, key by key.

    Each layer is ``None`` (nothing said), a preset name, or a mapping with any of ``preset``
    (or ``mode``), ``channels``, ``mean``, ``std``. A preset resets channels/mean/std to its own;
    ``channels``, ``mean`` or ``std`` make the result ``custom``: what is not said then defaults
    to plain [0, 1] pixels (mean 0, std 1) and a single mean/std value serves every channel.
    Typical order: the weights' preset, the model's ``preprocessing`` attribute, the config
    file, the command line.
    """
    mode, channels, mean, std = "torchvision", None, None, None
    for layer in layers:
        if layer is None:
            continue
        if isinstance(layer, str):
            layer = {"preset": layer}
        if not isinstance(layer, Mapping):
            raise ValueError(f"preprocessing must be a preset name or a mapping of {', '.join(SPEC_KEYS)} "
                             f"(got {type(layer).__name__})")
        unknown = sorted(set(layer) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"unknown preprocessing key(s) {', '.join(map(repr, unknown))}; "
                             f"known: channels, mean, std, preset")
        preset = layer.get("preset", layer.get("mode"))
        if preset is not None and _as_str(preset) != "custom":
            if _as_str(preset) not in PRESETS:
                raise ValueError(f"unknown preprocessing preset {_as_str(preset)!r}; "
                                 f"expected one of {', '.join(PRESETS)}")
            mode, channels, mean, std = _as_str(preset), None, None, None
        if layer.get("channels") is not None:
            channels = layer["channels"]
        if layer.get("mean") is not None:
            mean = parse_values(layer["mean"], "mean")
        if layer.get("std") is not None:
            std = parse_values(layer["std"], "std")
        if any(v is not None for v in (channels, mean, std)) or preset == "custom":
            mode = "custom"
    if mode != "custom":
        return Preprocessing(mode, size, resize)
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, numbers.Integral)):
        raise ValueError(f"--channels must be 1 or 3 (got {channels!r})")
    channels = 3 if channels is None else int(channels)
    mean, std = _per_channel(mean or [0.0], channels, "mean"), _per_channel(std or [1.0], channels, "std")
    return Preprocessing("custom", size, resize, channels, mean, std)


def options(preset: str | None = None, channels: int | None = None, mean: Any = None,
            std: Any = None) -> dict[str, Any] | None:
    """A command's ``--preprocessing/--channels/--mean/--std`` as one :func:`resolve` layer
    (None when none is given)."""
    given = {k: v for k, v in (("preset", preset), ("channels", channels), ("mean", mean), ("std", std))
             if v is not None}
    return given or None


def _per_channel(values: list[float], channels: int, name: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(values * channels)
    if len(values) != channels:
        raise ValueError(f"--{name} has {len(values)} values; give 1 or {channels} (one per channel; "
                         f"--channels is {channels})")
    return tuple(values)


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return str(value)


def channel_order(prep: Preprocessing | str) -> str:
    """``"BGR"`` for caffe-converted weights, else ``"RGB"``: the order of input channel 0..2
    (``prep`` may be the mode's name)."""
    return "BGR" if (prep if isinstance(prep, str) else prep.mode) == "caffe" else "RGB"


def pad_color(prep: Preprocessing) -> tuple[int, int, int]:
    """RGB uint8 colour that normalises to (almost) zero under ``prep`` (grey for one channel)."""
    if prep.mode == "caffe":
        b, g, r = CAFFE_MEAN_BGR
        return (round(r), round(g), round(b))
    mean = prep.mean if prep.mode == "custom" else TORCHVISION_MEAN
    return tuple(min(255, max(0, round(m * 255))) for m in (mean * 3 if len(mean) == 1 else mean))  # type: ignore


def to_pixels(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize/crop/pad ``img`` per ``prep`` and return uint8 ``(size, size, 3)`` RGB pixels
    (grey, R = G = B, for a one-channel network)."""
    if prep.channels == 1 and img.mode != "L":
        img = img.convert("L")
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
    """uint8 ``(B, H, W, 3)`` RGB -> contiguous float32 ``(B, C, H, W)`` on the same device.

    The output channel order is :func:`channel_order` (BGR for caffe weights); a one-channel
    network gets channel 0 of its grey pixels.
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(
            "normalize expects uint8 pixels shaped (B, H, W, 3), "
            f"got {pixels.dtype} {tuple(pixels.shape)}"
        )
    x = pixels.permute(0, 3, 1, 2).to(torch.float32)
    return _standardise(x[:, :1] if prep.channels == 1 else x, prep)


def to_device(pixels: torch.Tensor, prep: Preprocessing, device: torch.device,
              channels_last: bool = False) -> torch.Tensor:
    """uint8 pixels -> :func:`normalize`-d float32 on ``device`` (the copy is async from pinned
    memory), channels-last if asked: a batch as the network takes it."""
    x = normalize(pixels.to(device, non_blocking=True), prep)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def normalize_float(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Differentiable twin of :func:`normalize` for float RGB images ``(B, 3, H, W)`` in [0, 1]
    (what feature visualisation optimises): the same channel order, mean and std; a one-channel
    network sees the image's luma, as a decoded file would be converted."""
    if prep.channels == 1:
        luma = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        image = (image * luma).sum(1, keepdim=True)
    return _standardise(image * 255.0, prep)


def as_seen(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Float RGB ``(B, 3, H, W)`` in [0, 1] as the network sees it, for display: a one-channel
    network's luma in all three channels (grey), else unchanged."""
    if prep.channels != 1:
        return image
    luma = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()


def _standardise(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """``(B, C, H, W)`` on the 0..255 scale (RGB, or grey for one channel) -> the weights' convention."""
    if prep.mode == "caffe":
        x = x.flip(1)  # RGB -> BGR
        mean = torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float32, device=x.device)
        x = x - mean.view(1, 3, 1, 1)
        return x.contiguous()
    m, s = (prep.mean, prep.std) if prep.mode == "custom" else (TORCHVISION_MEAN, TORCHVISION_STD)
    mean = torch.tensor(m, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(s, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return ((x / 255.0 - mean) / std).contiguous()
