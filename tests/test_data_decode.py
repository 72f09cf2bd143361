"""decode_image: every awkward file either decodes to faithful RGB or fails with a clear reason."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.data.decode import (
    BACKGROUND_RGB,
    MAX_IMAGE_PIXELS,
    BadImage,
    decode_image,
    decode_with_size,
    to_rgb,
)

RED = np.array((220, 20, 20))
BLUE = np.array((20, 20, 220))


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int32)


def _close(pixel, expected, tol: int) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=np.int32) - np.asarray(expected)) <= tol))


def test_bad_files_raise_badimage_with_reason(data_corpus):
    for name, reason in data_corpus.bad.items():
        with pytest.raises(BadImage) as info:
            decode_image(data_corpus.bytes(name), 224)
        assert info.value.reason == reason, name
        assert str(info.value).startswith(reason)


def test_good_files_decode_to_rgb(data_corpus):
    for name in data_corpus.good:
        img = decode_image(data_corpus.bytes(name))
        assert img.mode == "RGB", name
        img.load()  # still usable after the decoder closed its source


def test_grayscale_ramp_kept(data_corpus):
    a = _arr(decode_image(data_corpus.bytes("gray.png")))
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])
    assert np.array_equal(a[0, :, 0], np.arange(64) * 4)


def test_palette_transparency_composited_on_background(data_corpus):
    a = _arr(decode_image(data_corpus.bytes("palette_transparent.png")))
    assert tuple(a[8, 4]) == BACKGROUND_RGB  # transparent index, not its green palette colour
    assert _close(a[8, 24], RED, 0)


def test_rgba_composited_on_background(data_corpus):
    a = _arr(decode_image(data_corpus.bytes("rgba.png")))
    assert _close(a[8, 4], RED, 0)
    assert tuple(a[8, 28]) == BACKGROUND_RGB


def test_half_alpha_blends_with_background(data_corpus):
    a = _arr(decode_image(data_corpus.bytes("la.png")))
    alpha = 128 / 255
    expected = [255 * alpha + c * (1 - alpha) for c in BACKGROUND_RGB]
    assert _close(a[8, 8], expected, 1)


def test_cmyk_jpeg_colours(data_corpus):
    a = _arr(decode_image(data_corpus.bytes("cmyk.jpg")))
    assert _close(a[8, 4], (0, 255, 255), 40)  # cyan
    assert _close(a[8, 28], (255, 0, 0), 40)  # magenta + yellow = red


def test_16bit_png_scaled_not_clipped(data_corpus):
    img, size = decode_with_size(data_corpus.bytes("gray16.png"))
    row = _arr(img)[0, :, 0]
    assert size == (256, 256 // 32)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)
    assert abs(int(row[128]) - 128) <= 1
    assert len(np.unique(row)) > 200  # a ramp, not a few clipped levels


def test_exif_orientation_applied(data_corpus):
    img, size = decode_with_size(data_corpus.bytes("exif_rotated.jpg"))
    assert img.size == (40, 60) and size == (40, 60)
    a = _arr(img)
    # Stored 60x40 with a red top-left block; orientation 6 turns it 90 degrees clockwise,
    # so the block is now top-right.
    assert _close(a[10, 30], RED, 30)
    assert _close(a[10, 10], BLUE, 30)
    assert _close(a[50, 30], BLUE, 30)


def test_one_bit_image(data_corpus):
    a = _arr(decode_image(data_corpus.bytes("onebit.png")))
    assert tuple(a[8, 4]) == (0, 0, 0)
    assert tuple(a[8, 28]) == (255, 255, 255)


def test_animated_gif_first_frame(data_corpus):
    a = _arr(decode_image(data_corpus.bytes("animated.gif")))
    assert _close(a[8, 8], RED, 10)


def _big_jpeg(w: int = 1600, h: int = 1200) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_large_jpeg_uses_reduced_decode_keeping_target():
    data = _big_jpeg()
    full, full_size = decode_with_size(data)
    small, small_size = decode_with_size(data, 224)
    assert full.size == (1600, 1200) and full_size == (1600, 1200)
    assert small_size == (1600, 1200)  # provenance keeps the original size
    assert min(small.size) >= 224 and small.size[0] < 1600
    # Same picture: compare with a conventional downscale of the full decode.
    ref = _arr(full.resize(small.size, Image.Resampling.BILINEAR))
    assert np.abs(_arr(small) - ref).mean() < 3
    # Target close to the image size: no reduced decode.
    assert decode_image(data, 700).size == (1600, 1200)


def test_reduced_decode_is_deterministic():
    data = _big_jpeg(900, 600)
    assert np.array_equal(_arr(decode_image(data, 150)), _arr(decode_image(data, 150)))


def test_pil_globals_untouched_and_no_warning_leaks(data_corpus, monkeypatch):
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("bomb.png", "bomb_huge.png"):
            with pytest.raises(BadImage):
                decode_image(data_corpus.bytes(name))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    # Our limit holds even if someone disabled PIL's.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(BadImage, match="decompression bomb"):
        decode_image(data_corpus.bytes("bomb.png"))
    assert MAX_IMAGE_PIXELS == 100_000_000


def test_formats_outside_allow_list_are_not_opened():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(BadImage) as info:
        decode_image(eps)
    assert info.value.reason == "not an image"


def test_to_rgb_other_modes():
    ycc = Image.new("RGB", (4, 4), (200, 30, 60)).convert("YCbCr")
    assert _close(to_rgb(ycc).getpixel((1, 1)), (200, 30, 60), 3)

    wide16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), mode="I")
    assert list(_arr(to_rgb(wide16))[0, :, 0]) == [0, 128, 255]

    small_i = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I")
    assert list(_arr(to_rgb(small_i))[0, :, 0]) == [0, 100, 255]

    unit_f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert list(_arr(to_rgb(unit_f))[0, :, 0]) == [0, 128, 255]

    signed = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32), mode="I")
    assert list(_arr(to_rgb(signed))[0, :, 0]) == [0, 128, 255]


def test_badimage_message():
    assert str(BadImage("truncated")) == "truncated"
    err = BadImage("corrupt", "bad huffman table")
    assert err.reason == "corrupt" and str(err) == "corrupt: bad huffman table"
