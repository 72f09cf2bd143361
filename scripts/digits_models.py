"""The two digit models of the project's seed documents, for ``scripts/digits_demo.py`` and the CLI.

Importable as ``--model digits_models:cnn`` / ``--model digits_models:autoencoder`` with
``scripts/`` on ``PYTHONPATH``; each factory sets ``model.preprocessing`` (one channel, the mean
and std the model was trained with) so ``mine`` needs no preprocessing flags. Both take 28 x 28
grey digits with pixels in [0, 1]. Modules are named (``conv1``, ``pool1``, ...) so layer names
read as in the papers; ReLUs are not in-place, so a hook on a conv sees the conv's own output.

- ``cnn``: the PC-lab CNN for MNIST (seed 004): ``Conv2d(1, 16, 3)`` and two more 3x3 convolutions
  with max-pools, then a linear classifier over the flattened 7 x 7 maps (about 30k parameters,
  under the lab's 100k).
- ``autoencoder``: the Keras convolutional autoencoder of seed 002 in PyTorch: encoder
  Conv(16)-pool-Conv(8)-pool-Conv(8, stride 2) down to the code, 8 maps of 4 x 4 (128 numbers; the
  seed flattens them to a vector, here they stay a map: ``mine`` layers are (C, H, W) maps), and a
  decoder with seed 004's ``ConvTranspose2d`` (4 -> 7) and ``Upsample`` x2 (7 -> 14 -> 28) between
  convolutions, sigmoid output, trained with binary cross-entropy as in the seed.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

SIZE = 28
# Mean and std of the 28 px upsampled scikit-learn digits' pixels in [0, 1] (scripts/digits_demo.py
# checks them against the data it writes): the CNN is trained on (x - MEAN) / STD, as MNIST CNNs are
# on 0.1307 / 0.3081.
MEAN, STD = 0.1576, 0.2939


def cnn() -> nn.Sequential:
    """Digit classifier: 28 -> conv1 -> pool1 14 -> conv2 -> pool2 7 -> conv3 -> fc (10 classes)."""
    m = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(32, 32, 3, padding=1)), ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(32 * 7 * 7, 10)),
    ]))
    m.preprocessing = {"channels": 1, "mean": [MEAN], "std": [STD]}
    return m


def autoencoder() -> nn.Sequential:
    """Seed 002's autoencoder: 28 -> 14 -> 7 -> code 8 x 4 x 4 (128 numbers) -> 7 -> 14 -> 28."""
    m = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),  # 14
        ("conv2", nn.Conv2d(16, 8, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),  # 7
        ("conv3", nn.Conv2d(8, 8, 3, stride=2, padding=1)), ("code", nn.ReLU()),  # 4: the code
        ("dec1", nn.Conv2d(8, 8, 3, padding=1)), ("drelu1", nn.ReLU()),
        ("up1", nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1)), ("drelu2", nn.ReLU()),  # 7
        ("up2", nn.Upsample(scale_factor=2)), ("dec2", nn.Conv2d(8, 16, 3, padding=1)), ("drelu3", nn.ReLU()),  # 14
        ("up3", nn.Upsample(scale_factor=2)), ("dec3", nn.Conv2d(16, 1, 3, padding=1)),  # 28
        ("out", nn.Sigmoid()),
    ]))
    m.preprocessing = {"channels": 1, "mean": [0.0], "std": [1.0]}
    return m


def encoder(ae: nn.Sequential) -> nn.Sequential:
    """The encoder half of :func:`autoencoder` (``conv1`` up to ``code``), sharing its weights."""
    names = [n for n, _ in ae.named_children()]
    return ae[: names.index("code") + 1]
