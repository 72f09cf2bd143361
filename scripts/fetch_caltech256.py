#!/usr/bin/env python
"""Download Caltech-256 once, for users who are online, and say how to point `mine` at it.

Usage:  python scripts/fetch_caltech256.py [ROOT]      (default ROOT: ~/data)

torchvision unpacks the archive (about 1.2 GB) into ROOT/caltech256/256_ObjectCategories; `mine`
finds it there when MINE_DATA_ROOT (or --data-root) is ROOT, so the printed export line is all
that is left to do. Tests never call this script: they generate their own images.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "root", nargs="?", default="~/data", help="where to put the dataset (default: ~/data)"
    )
    args = parser.parse_args(argv)
    root = Path(os.path.expanduser(args.root)).absolute()
    root.mkdir(parents=True, exist_ok=True)

    from torchvision.datasets import Caltech256  # imported late: --help stays instant

    try:
        dataset = Caltech256(str(root), download=True)
    except Exception as exc:  # noqa: BLE001 - report any download failure as one line
        print(
            f"error: could not download Caltech-256 into {root}: {exc}. "
            "Download 256_ObjectCategories.tar by hand (https://data.caltech.edu/records/nyy15-4j048) "
            f"and extract it into {root / 'caltech256'}.",
            file=sys.stderr,
        )
        return 1
    categories = root / "caltech256" / "256_ObjectCategories"
    print(f"Caltech-256: {len(dataset)} images in {categories}")
    print("Point mine at it with:")
    print(f"  export MINE_DATA_ROOT={root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
