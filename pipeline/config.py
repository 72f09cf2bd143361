"""Options from a TOML file, overridden by what is given on the command line, and checked.

A config file holds the same keys as ``mine run``'s options (with dashes or
underscores): ``layer``, ``images``, ``model``, ``weights``, ``k``, ``batch_size`` ...
and ``quiet``; the preprocessing a model was trained with as ``channels = 1``,
``mean = [0.1307]`` (or ``"0.1307"``), ``std = [0.3081]``, ``preprocessing = "caffe"``.
Unknown keys are an error, so a typo in a nightly config fails loudly.

Why ``check_options``: a config file (or a notebook's ``RunConfig``) can hand any TOML
or Python value to any option; ``k = "nine"`` or ``layer = ["conv1_2", 5]`` would
otherwise surface as a traceback deep inside the run. Every value is checked for
its type and range first, and the error is one line naming the key.
"""
from __future__ import annotations

import numbers
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .data.preprocess import parse_values


@dataclass
class RunConfig:
    """Everything ``mine run`` is told (``pipeline.runner`` does it); a file's values via ``load_config``."""

    images: str
    layer: str = "conv4_4"
    model: str = "vgg19"
    weights: str = "imagenet"
    k: int = 9
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    size: int = 224
    resize: str = "center-crop"
    limit: int | None = None
    data_root: str | None = None
    out: str | None = None
    precision: str = "fp32"
    channels_last: bool = False  # always on for CUDA; settable to prove on CPU it changes nothing
    progress: bool = True
    update: str | None = None  # extend this store: mine only image contents it does not hold
    force: bool = False  # replace an existing complete store
    rehash: bool = False  # --update: read and hash every file, also those whose size/mtime/ctime are unchanged
    checkpoint_every: str = "5m"  # N batches, or a time: 90s, 5m, 1h; 0 = only at the end / on signals
    discard_checkpoint: bool = False  # delete a checkpoint instead of resuming from it
    log: str | None = None  # run record log (the CLI appends it; default mine-runs.jsonl by the store)
    pooled: str | None = None  # also store per image the global average and max of these layers (``mine embed``)
    # What the network was trained with, over the weights' preset and the model's own attribute
    # (``data.preprocess.resolve``); only when ``run`` builds the network itself.
    preprocessing: str | None = None  # torchvision | caffe
    channels: int | None = None  # 1 (grey) or 3
    mean: str | list | float | None = None  # per channel, pixels in [0, 1]: "0.1307" or "0.485,0.456,0.406"
    std: str | list | float | None = None


_INT, _STR, _BOOL = "an integer", "a string", "true or false"
INTEGERS = {"k": 1, "batch_size": 1, "workers": 0, "size": 1, "limit": 1, "channels": 1}  # key -> smallest value
STRINGS = ("images", "model", "weights", "device", "resize", "precision", "preprocessing")
PATHS = ("data_root", "out", "update", "log")  # a str or a pathlib.Path
BOOLEANS = ("force", "discard_checkpoint", "channels_last", "progress", "quiet")
NUMBERS = ("mean", "std")  # a number, a list of numbers, or "0.485,0.456,0.406"
OPTIONAL = ("limit", "data_root", "out", "update", "log", "preprocessing", "channels", "mean", "std",
            "pooled")  # None = not given
# The memory budget of an input size, checked before any tensor is allocated (an allocator traceback,
# or 90 GB asked for at size 100000, otherwise): one side at most MAX_SIZE pixels, and a batch at most
# MAX_BATCH_PIXELS input pixels (a VGG's first layers hold 64 float32 channels of each: about 8 GiB).
MAX_SIZE = 4096
MAX_BATCH_PIXELS = 2 ** 25


def check_size(size: int, batch_size: int = 1, option: str = "--size") -> None:
    """Refuse (``ValueError``, exit 2) a size below 1 or beyond the memory budget above."""
    if not _is_int(size) or size < 1:
        raise ValueError(f"{option} must be a positive number of pixels (got {size!r})")
    if size > MAX_SIZE:
        raise ValueError(f"{option} {size} is above the largest input size, {MAX_SIZE} pixels")
    if batch_size * size * size > MAX_BATCH_PIXELS:
        raise ValueError(f"{option} {size} with --batch-size {batch_size} is {batch_size * size * size} input pixels "
                         f"per batch, above the budget of {MAX_BATCH_PIXELS}; use --batch-size "
                         f"{max(1, MAX_BATCH_PIXELS // (size * size))} or a smaller size")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_options(values: dict, budget: bool = True) -> None:
    """Raise ``ValueError`` (one line naming the key) for a value of the wrong type or range, and
    (``budget``) for a size and batch size beyond the memory budget together."""
    for key, v in values.items():
        if v is None and key in OPTIONAL:
            continue
        if key in INTEGERS:
            if not _is_int(v):
                raise ValueError(f"{key} must be {_INT} (got {v!r})")
            if v < INTEGERS[key]:
                raise ValueError(f"--{key.replace('_', '-')} must be at least {INTEGERS[key]} (got {v})")
        elif key in STRINGS and not isinstance(v, str):
            raise ValueError(f"{key} must be {_STR} (got {v!r})")
        elif key in PATHS and not isinstance(v, (str, os.PathLike)):
            raise ValueError(f"{key} must be {_STR} (a path) (got {v!r})")
        elif key in BOOLEANS and not isinstance(v, bool):
            raise ValueError(f"{key} must be {_BOOL} (got {v!r})")
        elif key in ("layer", "pooled") and not (isinstance(v, str) or (isinstance(v, list) and v
                                                             and all(isinstance(x, str) for x in v))):
            raise ValueError(f"{key} must be a string or a list of strings such as \"conv4_4\" (got {v!r})")
        elif key in NUMBERS:
            parse_values(v, key)
        elif key == "checkpoint_every" and not (isinstance(v, str) or _is_int(v)):
            raise ValueError(f"checkpoint_every must be a number of batches or a time such as \"5m\" (got {v!r})")
    if budget and _is_int(values.get("size")) and values["size"] >= 1:
        batch = values.get("batch_size")
        check_size(values["size"], batch if _is_int(batch) and batch >= 1 else 1, option="size")


def load_config(path: str | Path | None, overrides: dict):
    """Merge defaults <- file <- overrides (``None`` values in overrides mean "not given");
    a ``RunConfig``."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        if not p.is_file():  # a FIFO would block the read, a folder cannot be parsed
            raise ValueError(f"config file {p} is not a regular file")
        try:
            with p.open("rb") as fh:
                raw = tomllib.load(fh)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {p} is not valid TOML: {e}") from None
        raw = raw.get("run", raw)
        if not isinstance(raw, dict):
            raise ValueError(f"config file {p}: [run] must be a table of options")
        known = set(RunConfig.__dataclass_fields__) | {"quiet"}
        for k, v in raw.items():
            key = k.replace("-", "_")
            if key not in known:
                raise ValueError(f"unknown key {k!r} in {p}; known: {', '.join(sorted(known))}")
            values[key] = v
        check_options(values, budget=False)  # the file's own values, also those a flag overrides below
    values.update({k: v for k, v in overrides.items() if v is not None})
    check_options(values)
    if "images" not in values:
        raise ValueError("no images given: pass --images or set images in the config file")
    for key in ("layer", "pooled"):
        if isinstance(values.get(key), list):
            values[key] = ",".join(values[key])
    if "quiet" in values:
        values["progress"] = not values.pop("quiet")
    return RunConfig(**values)
