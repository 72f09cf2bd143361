"""Shared fixtures. Data-stage fixtures are prefixed ``data_``.

``data_corpus`` writes a small "bad-image corpus": every awkward kind of file a real collection
contains, generated here (no downloads), each with the outcome the data stage must produce.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Colours chosen far apart so JPEG artefacts never blur one into another.
DATA_RED = (220, 20, 20)
DATA_BLUE = (20, 20, 220)


@dataclass
class DataCorpus:
    """``root``: folder with the files; ``bad``: name -> expected reason; ``good``: names."""

    root: Path
    bad: dict[str, str] = field(default_factory=dict)
    good: list[str] = field(default_factory=list)

    def path(self, name: str) -> Path:
        return self.root / name

    def bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def data_png_declaring(width: int, height: int) -> bytes:
    """A valid-looking 8-bit grayscale PNG header declaring ``width x height``, almost no data.

    The classic decompression bomb shape: a few dozen bytes that would ask for gigabytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _build(root: Path) -> DataCorpus:
    c = DataCorpus(root)
    root.mkdir(parents=True, exist_ok=True)

    def bad(name: str, data: bytes, reason: str) -> None:
        (root / name).write_bytes(data)
        c.bad[name] = reason

    def good(name: str, data: bytes) -> None:
        (root / name).write_bytes(data)
        c.good.append(name)

    jpeg = _encode(_noise(64, 48, 1), "JPEG", quality=90)
    png = _encode(_noise(64, 48, 2), "PNG")
    bad("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated")
    bad("truncated.png", png[: len(png) // 2], "truncated")
    bad("empty.jpg", b"", "empty file")
    bad("text.jpg", b"this is a text file that only pretends to be a JPEG\n" * 4, "not an image")
    bad("random.png", np.random.default_rng(3).bytes(4096), "not an image")
    bad("bad_header.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt")
    # 144 MP: above our 100 MP limit but below PIL's hard error, so our check must catch it.
    bad("bomb.png", data_png_declaring(12_000, 12_000), "decompression bomb")
    # 900 MP: PIL itself raises DecompressionBombError while opening.
    bad("bomb_huge.png", data_png_declaring(30_000, 30_000), "decompression bomb")

    # Metadata bomb: a 2 KB zTXt chunk that inflates to 2 MB, past PIL's text-chunk limit.
    text_bomb = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
        + _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * 2_000_000))
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 20))
        + _png_chunk(b"IEND", b"")
    )
    bad("text_bomb.png", text_bomb, "decompression bomb")

    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1))  # horizontal ramp 0..252
    good("gray.png", _encode(Image.fromarray(gray, mode="L"), "PNG"))

    # Palette: index 0 transparent (left half), index 1 red (right half).
    pal = Image.new("P", (32, 16), 0)
    pal.putpalette([0, 255, 0] + list(DATA_RED) + [0, 0, 0] * 254)
    pal.paste(1, (16, 0, 32, 16))
    good("palette_transparent.png", _encode(pal, "PNG", transparency=0))

    # RGBA: left half opaque red, right half fully transparent green.
    rgba = Image.new("RGBA", (32, 16), (0, 255, 0, 0))
    rgba.paste(DATA_RED + (255,), (0, 0, 16, 16))
    good("rgba.png", _encode(rgba, "PNG"))

    # LA: white at alpha 128 everywhere.
    good("la.png", _encode(Image.new("LA", (16, 16), (255, 128)), "PNG"))

    # CMYK JPEG: left half pure cyan, right half pure red (M+Y).
    cmyk = Image.new("CMYK", (32, 16), (255, 0, 0, 0))
    cmyk.paste((0, 255, 255, 0), (16, 0, 32, 16))
    good("cmyk.jpg", _encode(cmyk, "JPEG", quality=95))

    # 16-bit grayscale ramp 0..65535 across 256 columns.
    ramp16 = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))
    good("gray16.png", _encode(Image.fromarray(ramp16), "PNG"))

    # EXIF orientation 6 ("rotate 90 CW to display"): stored 60x40 with red top-left block.
    stored = Image.new("RGB", (60, 40), DATA_BLUE)
    stored.paste(DATA_RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    good("exif_rotated.jpg", _encode(stored, "JPEG", quality=95, exif=exif))

    # 1-bit: left half black, right half white.
    one = Image.new("1", (32, 16), 0)
    one.paste(1, (16, 0, 32, 16))
    good("onebit.png", _encode(one, "PNG"))

    # Animated GIF: first frame red, second blue.
    frames = [Image.new("RGB", (16, 16), DATA_RED), Image.new("RGB", (16, 16), DATA_BLUE)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good("animated.gif", gif.getvalue())

    good("plain.jpg", jpeg)
    good("plain.png", png)
    return c


@pytest.fixture(scope="session")
def data_corpus(tmp_path_factory) -> DataCorpus:
    """The bad-image corpus (built once per session; tests must not modify it)."""
    return _build(tmp_path_factory.mktemp("data_corpus"))


# --- tiny runs shared by the job and speed-option tests (see jobs_util) -------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """16 small files (14 distinct images, a duplicate, a broken one): jobs_util.make_images."""
    from jobs_util import make_images

    return make_images(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def net():
    """The seeded random VGG16 at 32 px, built once per test module."""
    from pipeline.models.weights import load_network

    return load_network("vgg16", "random", 32)


@pytest.fixture(scope="module")
def full(images, net, tmp_path_factory):
    """One uninterrupted plain run over ``images``: the reference store."""
    from jobs_util import cfg

    from pipeline import run

    out = tmp_path_factory.mktemp("full") / "full.h5"
    run(cfg(images, out), net=net)
    return out


@pytest.fixture
def live_pid():
    """The pid of a process that lives through the test (for lock holders)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p.pid
    p.kill()
    p.wait()
