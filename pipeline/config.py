"""Options from a TOML file, overridden by what is given on the command line.

A config file holds the same keys as ``mine run``'s options (with dashes or
underscores): ``layer``, ``images``, ``model``, ``weights``, ``k``, ``batch_size`` ...
Unknown keys are an error, so a typo in a nightly config fails loudly.
"""
from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from .run import RunConfig


def load_config(path: str | Path | None, overrides: dict) -> RunConfig:
    """Merge defaults <- file <- overrides (``None`` values in overrides mean "not given")."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        with p.open("rb") as fh:
            raw = tomllib.load(fh)
        raw = raw.get("run", raw)
        known = {f.name for f in fields(RunConfig)}
        for k, v in raw.items():
            key = k.replace("-", "_")
            if key not in known:
                raise ValueError(f"unknown key {k!r} in {p}; known: {', '.join(sorted(known))}")
            values[key] = v
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "images" not in values:
        raise ValueError("no images given: pass --images or set images in the config file")
    if isinstance(values.get("layer"), list):
        values["layer"] = ",".join(values["layer"])
    return RunConfig(**values)
