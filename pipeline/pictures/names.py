"""File names of the pictures (render, visualize, the analyses): per feature map, per layer, the
output folder, feature lists."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

MAX_FEATURES = 1 << 20  # no layer has more channels; ranges are checked before they are expanded


MAX_NAME = 100  # characters of a layer in a file name: room for suffixes, temp names and PIDs under 255 bytes


def safe_name(layer: str) -> str:
    """A layer name usable in a file name, and injective: two layers never share their files.

    Letters, digits, ``_``, ``-`` and (not leading) ``.`` stay as they are, so ``conv4_3`` and
    ``features.14`` are themselves; every other byte (``/``, ``~``, a space, a leading dot ...) is
    ``~XX`` (its UTF-8 byte in hex), so ``a/b`` is ``a~2fb`` and never ``a_b``. A name longer than
    :data:`MAX_NAME` is cut and ends in ``~~`` (which no escape makes) and 16 hex digits of its hash (a 300-character layer
    would otherwise overflow the file system's 255 bytes)."""
    out = "".join(c if re.fullmatch(r"[A-Za-z0-9_-]", c) or (c == "." and i) else
                  "".join(f"~{b:02x}" for b in c.encode("utf-8", "surrogatepass")) for i, c in enumerate(layer))
    if not out:
        return "~"
    if len(out) > MAX_NAME:
        out = f"{out[:MAX_NAME - 18]}~~{hashlib.sha256(layer.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"
    return out


def feature_files(layer: str, c: int) -> dict[str, str]:
    n = safe_name(layer)
    return {"feat": f"{n}_feat_{c}.png", "im": f"{n}_im_{c}.png", "heat": f"{n}_heat_{c}.png", "pair": f"{n}_{c}.png",
            "array": f"{n}_feat_{c}.npy",
            "box_array": f"{n}_box_{c}.npy", "page": f"{n}_unit_{c}.html", "overlay": f"units/{n}_{c}_heat.png",
            "occlusion": f"occlude/{n}_occ_{c}.png", "vis": f"{n}_vis_{c}.png", "vis_array": f"{n}_vis_{c}.npy"}


def kept_image_file(kept: int) -> str:
    """A kept image as the network saw it (before normalisation), once per image (``images/``)."""
    return f"images/{int(kept)}.jpg"


def layer_files(layer: str) -> dict[str, str]:
    n = safe_name(layer)
    return {"feat": f"{n}_feat.png", "im": f"{n}_im.png", "overview": f"{n}_overview.png", "page": f"layer-{n}.html"}


def default_out_dir(store_path: str | Path) -> Path:
    """``<store folder>/<store name>-render``: next to the store."""
    p = Path(store_path)
    return p.with_name(f"{p.stem}-render")


def parse_features(spec) -> list[int]:
    """``"0-63,171"`` -> sorted unique channel indices; ints and lists pass through."""
    if spec is None:
        return None
    if isinstance(spec, int):
        spec = [spec]
    if not isinstance(spec, str):
        out = sorted({int(v) for v in spec})
        if any(v < 0 for v in out):
            raise ValueError("feature indices must be >= 0")
        return out
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ValueError(f"bad feature list {spec!r}: use numbers and ranges like 0-63,171")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad feature range {part!r}: end before start")
        if hi >= MAX_FEATURES:
            raise ValueError(f"feature {hi} is out of range: no layer has more than {MAX_FEATURES} channels")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError(f"no feature in {spec!r}")
    return sorted(out)
