"""Library versions recorded in every store (provenance of a result)."""
from __future__ import annotations

import platform

import h5py
import numpy as np
import torch

__version__ = "0.1.0"  # the package's version (pyproject.toml's); the root re-exports it


def versions() -> dict[str, str]:
    import PIL
    import torchvision

    return {"mine": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
            "python": platform.python_version()}
