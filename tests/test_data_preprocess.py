"""Preprocessing: geometry of each resize policy, pass-through, normalisation by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.preprocess import (
    RESIZE_POLICIES,
    Preprocessing,
    channel_order,
    normalize,
    pad_color,
    to_pixels,
)

R, G, B = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _thirds(w: int, h: int, vertical: bool = False) -> Image.Image:
    """Three equal bands red | green | blue, left to right (or top to bottom)."""
    a = np.zeros((h, w, 3), np.uint8)
    n = h if vertical else w
    for i, colour in enumerate((R, G, B)):
        sl = slice(i * n // 3, (i + 1) * n // 3)
        if vertical:
            a[sl, :] = colour
        else:
            a[:, sl] = colour
    return Image.fromarray(a)


def _is(pixel, colour, tol: int = 2) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tol))


def test_policies_and_default():
    assert RESIZE_POLICIES == ("center-crop", "squash", "pad")
    assert Preprocessing("torchvision") == Preprocessing("torchvision", 224, "center-crop")


def test_center_crop_landscape_geometry():
    # 300x200 -> shorter side 100 -> 150x100 -> columns 25..125 kept, i.e. source x 50..250.
    # Source bands at x<100 | 100..200 | >=200 land at output x<25 | 25..75 | >=75.
    out = to_pixels(_thirds(300, 200), Preprocessing("torchvision", 100))
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8
    for y in (0, 50, 99):
        assert _is(out[y, 0], R) and _is(out[y, 22], R)
        assert _is(out[y, 28], G) and _is(out[y, 50], G) and _is(out[y, 72], G)
        assert _is(out[y, 78], B) and _is(out[y, 99], B)


def test_center_crop_portrait_geometry():
    out = to_pixels(_thirds(200, 300, vertical=True), Preprocessing("torchvision", 100))
    assert _is(out[22, 50], R) and _is(out[28, 50], G) and _is(out[72, 50], G)
    assert _is(out[78, 50], B)


def test_squash_geometry():
    # 300x200 -> 100x100: each band becomes a third of the width, all rows kept.
    out = to_pixels(_thirds(300, 200), Preprocessing("torchvision", 100, "squash"))
    for y in (0, 99):
        assert _is(out[y, 15], R) and _is(out[y, 50], G) and _is(out[y, 85], B)
    assert _is(out[0, 30], R) and _is(out[0, 36], G) and _is(out[0, 64], G) and _is(out[0, 70], B)


@pytest.mark.parametrize("mode", ["torchvision", "caffe"])
def test_pad_geometry(mode):
    # 300x200 -> 100x67 (longer side fits), centred: rows 16..82 image, the rest mean colour.
    prep = Preprocessing(mode, 100, "pad")
    out = to_pixels(_thirds(300, 200), prep)
    colour = pad_color(prep)
    assert np.all(out[:16] == colour) and np.all(out[83:] == colour)
    for y in (16, 50, 82):
        assert _is(out[y, 15], R) and _is(out[y, 50], G) and _is(out[y, 85], B)


def test_pad_colour_is_the_mode_mean():
    assert pad_color(Preprocessing("torchvision")) == (124, 116, 104)
    assert pad_color(Preprocessing("caffe")) == (124, 117, 104)


@pytest.mark.parametrize("mode", ["torchvision", "caffe"])
@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_exact_size_passes_through_byte_identical(mode, policy):
    rng = np.random.default_rng(7)
    src = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    out = to_pixels(Image.fromarray(src), Preprocessing(mode, 224, policy))
    assert out.dtype == np.uint8 and out.tobytes() == src.tobytes()


def test_non_rgb_input_is_converted():
    out = to_pixels(Image.new("L", (50, 40), 77), Preprocessing("torchvision", 32))
    assert out.shape == (32, 32, 3) and np.all(out == 77)


def test_normalize_torchvision_by_hand():
    px = torch.tensor([[[[0, 128, 255], [10, 20, 30]]]], dtype=torch.uint8)  # (1, 1, 2, 3)
    out = normalize(px, Preprocessing("torchvision"))
    assert out.shape == (1, 3, 1, 2) and out.dtype == torch.float32 and out.is_contiguous()
    expected_first = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    expected_second = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected_first), atol=1e-5)
    assert torch.allclose(out[0, :, 0, 1], torch.tensor(expected_second), atol=1e-5)
    assert channel_order(Preprocessing("torchvision")) == "RGB"


def test_normalize_caffe_by_hand():
    px = torch.tensor([[[[0, 128, 255]]], [[[1, 2, 3]]]], dtype=torch.uint8)  # (2, 1, 1, 3)
    out = normalize(px, Preprocessing("caffe"))
    assert out.shape == (2, 3, 1, 1) and out.is_contiguous()
    # Channel 0 is blue: 255 - 103.939; channel 1 green; channel 2 red: 0 - 123.68.
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([151.061, 11.221, -123.68]), atol=1e-4)
    assert torch.allclose(out[1, :, 0, 0], torch.tensor([3 - 103.939, 2 - 116.779, 1 - 123.68]), atol=1e-4)
    assert channel_order(Preprocessing("caffe")) == "BGR"


def test_normalize_matches_torchvision_transform_on_real_sized_batch():
    from torchvision.transforms import functional as F

    rng = np.random.default_rng(0)
    px = torch.from_numpy(rng.integers(0, 256, (2, 8, 6, 3), dtype=np.uint8))
    out = normalize(px, Preprocessing("torchvision"))
    for i in range(2):
        ref = F.normalize(F.to_tensor(px[i].numpy()), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_normalize_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 4, 4, 3), Preprocessing("torchvision"))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        normalize(torch.zeros(4, 4, 3, dtype=torch.uint8), Preprocessing("torchvision"))


def test_preprocessing_round_trip_and_h5py_types():
    prep = Preprocessing("caffe", 227, "pad")
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert all(isinstance(v, (str, int)) for v in prep.to_dict().values())
    from_h5 = {"mode": b"caffe", "size": np.int64(227), "resize": np.str_("pad"), "future": 1}
    assert Preprocessing.from_dict(from_h5) == prep
    assert type(Preprocessing.from_dict(from_h5).size) is int


def test_preprocessing_validation():
    with pytest.raises(ValueError, match="unknown preprocessing mode 'tf'.*torchvision, caffe"):
        Preprocessing("tf")
    with pytest.raises(ValueError, match="unknown resize policy 'crop'.*center-crop, squash, pad"):
        Preprocessing("torchvision", resize="crop")
    with pytest.raises(ValueError, match="positive integer"):
        Preprocessing("torchvision", size=0)
    with pytest.raises(ValueError, match="no 'mode'"):
        Preprocessing.from_dict({"size": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        Preprocessing("torchvision").size = 3  # type: ignore[misc]


@pytest.mark.parametrize("w,h", [(301, 199), (123, 457), (90, 60)])
def test_center_crop_equals_torchvision_resize_then_center_crop(w, h):
    from torchvision import transforms as T

    rng = np.random.default_rng(w * h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    ref = T.Compose([T.Resize(96, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(96)])(img)
    assert np.array_equal(to_pixels(img, Preprocessing("torchvision", 96)), np.asarray(ref))
