"""One table of every model ``--model`` takes: builder, ImageNet weights, aliases, default layers.

Families and what ``--layer all`` means for them (docs/models.md repeats this):

=============  ==============================================  ===================================
family         models                                          ``all``
=============  ==============================================  ===================================
vgg            vgg11/13/16/19 and ``_bn``                      every conv after its ReLU (conv1_1..)
alexnet        alexnet, zfnet                                  conv1..conv5 (after their ReLUs)
resnet         resnet18/34/50/101/152                          every block output (layer1.0 ..)
mobilenet      mobilenet_v2, mobilenet_v3_large/small          every block of ``features`` (features.0 ..)
efficientnet   efficientnet_b0                                 every stage of ``features``
googlenet      googlenet                                       conv1-3 and inception3a..5b
densenet       densenet121                                     dense blocks and transitions
custom         ``package.module:factory``                      every child module with a map output
=============  ==============================================  ===================================

Preprocessing is torchvision's (RGB, ImageNet mean/std) except for the caffe-converted ``hed``
VGG16 weights. Builders give torchvision's own initialisation; ``random`` weights are that
initialisation under a fixed seed.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn
from torchvision import models as tvm

from . import vgg as trunks


@dataclass(frozen=True)
class ModelSpec:
    family: str
    build: Callable[..., nn.Module]  # build(imagenet: bool) -> module with torchvision's init
    imagenet: object | None = None  # torchvision WeightsEnum member
    chain: str | None = None  # nn.Sequential trunk with paper aliases
    alias_style: str = "vgg"


def _tv(fn, **kw):
    return lambda imagenet=False: fn(**kw).eval()


def _googlenet(imagenet: bool = False) -> nn.Module:
    # torchvision's ImageNet GoogLeNet was ported from TensorFlow and expects transform_input.
    return tvm.googlenet(aux_logits=False, init_weights=not imagenet, transform_input=imagenet).eval()


def _vgg(arch):
    return lambda imagenet=False: trunks.vgg(arch).eval()


DEFAULT_MODEL = "vgg19"  # what every command uses without --model (a store names its own)

MODELS: dict[str, ModelSpec] = {
    **{a: ModelSpec("vgg", _vgg(a), getattr(tvm, f"{a.upper()}_Weights").IMAGENET1K_V1, "features")
       for a in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")},
    "alexnet": ModelSpec("alexnet", lambda imagenet=False: trunks.alexnet().eval(),
                         tvm.AlexNet_Weights.IMAGENET1K_V1, "features", "flat"),
    "zfnet": ModelSpec("alexnet", lambda imagenet=False: trunks.zfnet().eval(), None, "features", "flat"),
    **{a: ModelSpec("resnet", _tv(getattr(tvm, a)), getattr(tvm, f"ResNet{a[6:]}_Weights").IMAGENET1K_V1)
       for a in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    "mobilenet_v2": ModelSpec("mobilenet", _tv(tvm.mobilenet_v2), tvm.MobileNet_V2_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": ModelSpec("mobilenet", _tv(tvm.mobilenet_v3_large),
                                    tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "mobilenet_v3_small": ModelSpec("mobilenet", _tv(tvm.mobilenet_v3_small),
                                    tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    "efficientnet_b0": ModelSpec("efficientnet", _tv(tvm.efficientnet_b0), tvm.EfficientNet_B0_Weights.IMAGENET1K_V1),
    "googlenet": ModelSpec("googlenet", _googlenet, tvm.GoogLeNet_Weights.IMAGENET1K_V1),
    "densenet121": ModelSpec("densenet", _tv(tvm.densenet121), tvm.DenseNet121_Weights.IMAGENET1K_V1),
}


def spec_of(arch: str) -> ModelSpec:
    """The registry entry, or a custom ``package.module:factory`` model; errors name what exists."""
    if arch in MODELS:
        return MODELS[arch]
    if ":" in arch:
        mod, _, fn = arch.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except Exception as e:  # noqa: BLE001 - user code: any failure to import is one line
            raise ValueError(f"custom model {arch!r}: cannot import {fn} from {mod} ({type(e).__name__}: {e})") from None
        return ModelSpec("custom", partial(_custom, factory, arch))
    raise ValueError(f"unknown model {arch!r}; choose from: {', '.join(MODELS)}, or package.module:factory")


def _custom(factory, arch: str, imagenet: bool = False) -> nn.Module:
    try:
        m = factory()
    except Exception as e:  # noqa: BLE001 - user code: it may raise anything, or need arguments
        raise ValueError(f"custom model {arch!r}: the factory failed: {type(e).__name__}: {e} "
                         f"(it is called with no arguments and must return an nn.Module)") from None
    if not isinstance(m, nn.Module):
        raise ValueError(f"custom model {arch!r}: the factory returned {type(m).__name__}, not an nn.Module")
    return m.eval()


def default_layers(family: str, names: list[str], paths: dict[str, str]) -> list[str] | None:
    """What ``--layer all`` means for a family (layer names in ``names``); None: every layer."""
    def matching(pred):
        return [n for n in names if pred(n, paths[n])]

    depth = lambda p: p.count(".")
    if family in ("vgg", "alexnet"):
        return matching(lambda n, p: n.startswith("conv"))
    if family == "resnet":
        return matching(lambda n, p: p.startswith("layer") and depth(p) == 1)
    if family in ("mobilenet", "efficientnet"):
        return matching(lambda n, p: p.startswith("features.") and depth(p) == 1)
    if family == "googlenet":
        return matching(lambda n, p: p in ("conv1", "conv2", "conv3") or (p.startswith("inception") and depth(p) == 0))
    if family == "densenet":
        return matching(lambda n, p: p.startswith(("features.denseblock", "features.transition")) and depth(p) == 1)
    top = matching(lambda n, p: depth(p) == 0)
    inner = matching(lambda n, p: depth(p) == 1)
    return top if len(top) > 1 else inner or top
