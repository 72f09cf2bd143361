"""Small convolutional autoencoders (28 px) with every kind of decoder layer, for the tests.

``make(up)`` is a flat ``nn.Sequential`` (layers are named ``0``, ``1``, ... as in the issue's
``--layer 6``): encoder Conv2d/ReLU/MaxPool2d down to a 7 x 7 code, decoder up to 28 x 28 with
``up`` = ``convT`` (ConvTranspose2d 3x3 stride 2, padding 1, output_padding 1), ``nearest`` /
``bilinear`` (nn.Upsample x2), ``shuffle`` (a conv to 4x the channels, then PixelShuffle(2)),
each followed by convolutions. ``Functional`` calls ``F.interpolate`` inside ``forward`` instead
of a module; ``make_linear`` has a Linear bottleneck (a 16-number code) between the two halves.
``channels`` is the input (and output) channel count: 3 for end-to-end runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UPS = ("convT", "nearest", "bilinear", "shuffle")


def _up(up: str, c: int) -> list[nn.Module]:
    if up == "convT":
        return [nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)]
    if up in ("nearest", "bilinear"):
        return [nn.Upsample(scale_factor=2, mode=up)]
    if up == "shuffle":
        return [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2)]
    raise ValueError(up)


def make(up: str = "convT", channels: int = 3) -> nn.Sequential:
    """28 -> 14 -> 7 (code: 4 maps) -> 14 -> 28, ``up`` twice."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 0-2: 14
              nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3-5: 7
              nn.Conv2d(8, 4, 1), nn.ReLU()]  # 6-7: the code
    layers += [nn.Conv2d(4, 8, 1), nn.ReLU(), *_up(up, 8), nn.ReLU(),  # 14
               *_up(up, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),  # 28
               nn.Conv2d(8, channels, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers).eval()


def make_nearest():
    return make("nearest")


def make_bilinear():
    return make("bilinear")


def make_shuffle():
    return make("shuffle")


class Functional(nn.Module):
    """Decoder that upsamples with ``F.interpolate`` calls (no module to hook on the upsampling)."""

    def __init__(self, channels: int = 3, mode: str = "bilinear") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.enc = nn.Conv2d(channels, 8, 3, stride=2, padding=1)  # 14
        self.code = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # 7
        self.dec1 = nn.Conv2d(8, 8, 3, padding=1)  # after one x2: 14
        self.dec2 = nn.Conv2d(8, channels, 3, padding=1)  # after another: 28

    def forward(self, x):
        x = F.relu(self.code(F.relu(self.enc(x))))
        x = F.relu(self.dec1(F.interpolate(x, scale_factor=2, mode=self.mode)))
        return self.dec2(F.interpolate(x, scale_factor=2, mode=self.mode))


def make_functional():
    return Functional().eval()


def make_linear(channels: int = 3) -> nn.Sequential:
    """28 -> 14 -> 7, flatten, Linear code of 16, Linear, unflatten to 8 x 7 x 7, two transposed convs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU(),  # 0-1: 14
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),  # 2-3: 7
                         nn.Flatten(), nn.Linear(8 * 7 * 7, 16), nn.ReLU(),  # 4-6: the code
                         nn.Linear(16, 8 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (8, 7, 7)),  # 7-9: 7
                         nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),  # 10-11: 14
                         nn.ConvTranspose2d(8, channels, 3, stride=2, padding=1, output_padding=1)).eval()  # 12: 28
