"""Turn the bytes of one image file into an 8-bit RGB ``PIL.Image``, or say why not.

Why this module exists: real image collections are messy. A mining run over a million files
must not die on file 612 345, and it must not silently feed the network garbage either. Every
file therefore ends in exactly one of two states:

* decoded to an RGB image whose colours mean what the file meant, whatever the storage
  (grayscale, palette, alpha, CMYK, 16 bit, 1 bit, EXIF-rotated, animated); or
* rejected with :class:`BadImage`, whose short ``reason`` ("truncated", "empty file",
  "not an image", "decompression bomb", "corrupt", "unreadable") is what the store counts.

Decisions worth knowing:

* **Truncation is an error.** ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set: a half-grey
  JPEG would rank in the top-9 of some smooth-texture unit and look like a finding. We call
  ``img.load()`` inside ``try`` so truncation surfaces here, not later in a worker.
* **Decompression bombs** are judged by our own constant :data:`MAX_IMAGE_PIXELS` (100
  megapixels: above any common camera output that a feature-visualisation run wants, below the
  sizes that exhaust a worker's memory). The check uses the size declared in the header, before
  any pixel is decoded. PIL's own mechanism (a warning above its mutable global
  ``PIL.Image.MAX_IMAGE_PIXELS``, an error above twice that) is handled locally with
  ``warnings.catch_warnings``: the warning is swallowed (our constant decides), the error becomes
  ``BadImage("decompression bomb")``. Nothing global in PIL is changed. ``catch_warnings`` is
  not thread-safe on Python < 3.14; the data loader decodes in worker *processes* or in the main
  thread, never in several threads at once.
* **Transparency** is composited onto :data:`BACKGROUND_RGB`, the ImageNet mean colour. After
  normalisation that colour is (almost) zero input, so transparent areas neither excite nor
  inhibit units, and it is the same colour the "pad" resize policy uses.
* **16-bit** data is scaled (``v * 255 / 65535``, rounded), not clipped: clipping turns a 16-bit
  gradient into a white image.
* **EXIF orientation** is applied (``ImageOps.exif_transpose``) so what the network sees is what a
  person sees in a viewer, and crops rendered later are upright.
* **Multi-frame** files (GIF, APNG, TIFF pages, MPO) contribute their first frame only.
* **Reduced-size JPEG decoding**: when the caller says the image will be shrunk to
  ``target_size`` anyway, large JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale
  (``img.draft``) such that the shorter side stays ``>= target_size``. This is several times
  faster for camera-sized files; the preprocessing still resizes as usual. Because the choice
  depends only on the bytes and ``target_size``, re-decoding later (finalize) gives the same
  pixels.
* **Formats are allow-listed** (:data:`ALLOWED_FORMATS`): PIL can also open EPS (which runs
  Ghostscript) and header-less formats that will happily "recognise" random bytes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND_RGB",
    "BadImage",
    "MAX_IMAGE_PIXELS",
    "decode_image",
    "decode_with_size",
    "to_rgb",
]

#: Largest image (width x height, as declared by the file header) we agree to decode.
MAX_IMAGE_PIXELS = 100_000_000

#: Colour that transparent pixels are composited onto: the ImageNet mean, (0.485, 0.456, 0.406)
#: x 255 rounded. Normalises to ~0, i.e. "no signal".
BACKGROUND_RGB = (124, 116, 104)

#: Decode an image this many times larger (shorter side) than the target with libjpeg's
#: reduced-size decoding; below that the saving is not worth a different code path.
DRAFT_MIN_RATIO = 2

_WANTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "AVIF")
Image.init()  # registers plugins so that Image.ID is complete
#: PIL format names that :func:`decode_image` will try (those available in this Pillow build).
ALLOWED_FORMATS = tuple(f for f in _WANTED_FORMATS if f in Image.ID)

_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


class BadImage(Exception):
    """A file that cannot be turned into an image; ``reason`` is a short, countable category.

    ``str(exc)`` is ``reason`` alone or ``"reason: detail"`` when a detail helps a person find
    out what is wrong (kept short: it is stored per image).
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def decode_image(data: bytes, target_size: int | None = None) -> Image.Image:
    """Decode ``data`` to an RGB image (EXIF-upright, first frame, alpha composited).

    ``target_size``: the side the image will be resized to afterwards; when given, large JPEGs
    are decoded at a reduced scale whose shorter side is still ``>= target_size``.
    Raises :class:`BadImage` for anything that is not a complete, reasonably sized image.
    """
    return decode_with_size(data, target_size)[0]


def decode_with_size(
    data: bytes, target_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Like :func:`decode_image`, also returning the *original* ``(width, height)``.

    The original size is the one a viewer shows (after EXIF rotation) and is recorded as
    provenance; it differs from ``image.size`` when reduced-size JPEG decoding was used.
    """
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        # Our own limit decides (see module docstring); do not let PIL's warning escape.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.UnidentifiedImageError:
            fmt = _sniff(data)
            if fmt is not None:
                raise BadImage("corrupt", f"{fmt} signature but unreadable header") from None
            raise BadImage("not an image") from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
            raise _classify(exc) from None
        try:
            return _decode_opened(img, target_size)
        except BadImage:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc) from None
        finally:
            img.close()


def _decode_opened(
    img: Image.Image, target_size: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadImage("corrupt", f"declared size {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImage(
            "decompression bomb", f"{width}x{height} exceeds {MAX_IMAGE_PIXELS} pixels"
        )
    # Multi-frame files: Image.open leaves the image on frame 0, which is what we decode.
    # (Asking for n_frames would scan every frame of a long GIF for nothing.)
    if (
        target_size
        and img.format in ("JPEG", "MPO")
        and min(width, height) >= DRAFT_MIN_RATIO * target_size
    ):
        # libjpeg picks the largest 1/2^n scale keeping both sides >= target_size.
        img.draft("RGB", (target_size, target_size))
    img.load()  # inside the caller's try: truncation must raise here
    decoded_size = img.size
    upright = ImageOps.exif_transpose(img)  # always a new image (in_place=False)
    if upright.size != decoded_size:  # a 90-degree orientation swapped the axes
        width, height = height, width
    rgb = to_rgb(upright)
    if rgb is img:  # never hand back the object the caller is about to close
        rgb = rgb.copy()
    return rgb, (width, height)


def _classify(exc: BaseException) -> BadImage:
    """Map an exception raised by PIL/libjpeg/zlib while decoding to a :class:`BadImage`."""
    text = str(exc).lower()
    if isinstance(exc, Image.DecompressionBombError) or (
        isinstance(exc, ValueError) and "decompressed" in text  # PNG text-chunk zip bomb
    ):
        return BadImage("decompression bomb", _short(exc))
    if isinstance(exc, EOFError) or "truncated" in text:
        return BadImage("truncated")
    if isinstance(exc, MemoryError):
        return BadImage("decompression bomb", "out of memory while decoding")
    return BadImage("corrupt", _short(exc))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB with the conventions of this module.

    Alpha (RGBA, LA, PA, palette or colour-key transparency) is composited onto
    :data:`BACKGROUND_RGB`; 16/32-bit integer and float modes are rescaled to 0..255; CMYK,
    YCbCr, 1-bit, L and P go through PIL's own conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    if mode in ("I", "F"):
        return _gray_to_rgb(_scale_wide(np.asarray(img)))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray), mode="L").convert("RGB")


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """16-bit to 8-bit by ``round(v * 255 / 65535)``: exact endpoints, monotonic, no clipping."""
    return np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def _scale_wide(values: np.ndarray) -> np.ndarray:
    """Scale PIL's 32-bit ``I``/``F`` single-channel data to uint8, never by clipping.

    These modes carry no bit depth, so the range decides: integers within 0..255 are already
    8-bit; within 0..65535 they are 16-bit samples (the common source of ``I`` images);
    floats within 0..1 are unit intensities; anything else (signed or float data from
    scientific TIFFs) is min-max stretched, the only faithful choice left.
    """
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    if is_float and lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif not is_float and lo >= 0 and hi <= 255:
        scaled = values
    elif not is_float and lo >= 0 and hi <= 65535:
        scaled = values * (255.0 / 65535.0)
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _sniff(data: bytes) -> str | None:
    """Name the format whose magic number ``data`` starts with, if any."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
