"""mine: what each feature map of a CNN responds to.

Python API (the CLI is a thin layer over it)::

    from pipeline import RunConfig, run, Store
    result = run(RunConfig(images="photos/", layer="conv4_4", model="vgg19", weights="imagenet"))
    with Store(result.store) as s:
        for e in s.entries("conv4_4", 171):
            print(e.rank, e.value, e.path, e.box)
"""
from .config import RunConfig
from .runner import RunResult, run
from .store.read import Entry, Store
from .store.schema import StoreError
from .versions import __version__

__all__ = ["RunConfig", "RunResult", "run", "Store", "Entry", "StoreError", "__version__"]
