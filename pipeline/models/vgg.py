"""Conv trunks of VGG, AlexNet and ZFNet: ``features`` only, wrapped so paths read ``features.N``.

The fully-connected heads are 60-120M parameters whose random initialisation alone costs
seconds and which no layer we mine or project needs, so only the convolutional trunk is built.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import vgg as tv_vgg
from torchvision.models.alexnet import AlexNet

VGG_CFGS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}  # torchvision's letters


class Trunk(nn.Module):
    """Holds a ``features`` chain; its state dict keys match torchvision's ``features.*``."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features

    def forward(self, x):
        return self.features(x)


def _init_convs(features: nn.Sequential) -> nn.Sequential:
    """torchvision's VGG initialisation: kaiming normal (fan out), zero bias, BN to identity."""
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return features


def vgg(arch: str) -> Trunk:
    """``vgg16`` / ``vgg19_bn`` ...: torchvision's feature stack with its initialisation."""
    base = arch.removesuffix("_bn")
    return Trunk(_init_convs(tv_vgg.make_layers(tv_vgg.cfgs[VGG_CFGS[base]], batch_norm=arch.endswith("_bn"))))


def alexnet() -> Trunk:
    """torchvision's AlexNet ``features`` (the one-GPU variant it ships weights for)."""
    return Trunk(_init_convs(AlexNet().features))


def zfnet() -> Trunk:
    """Zeiler & Fergus (2013) Fig. 3 at 224 px: 7x7/2 first conv, overlapping 3x3/2 pools,
    local contrast normalisation after the first two layers; maps 110-55-26-13-13-13-6."""
    return Trunk(_init_convs(nn.Sequential(
        nn.Conv2d(3, 96, 7, 2, 1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), nn.LocalResponseNorm(5),
        nn.Conv2d(96, 256, 5, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), nn.LocalResponseNorm(5),
        nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, 1, 1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
    )))
