#!/usr/bin/env bash
# Remake every picture in README.md and docs/ from the offline demo's output (run scripts/demo.sh first).
# Each figure, the file it comes from and the command that made it:
#   demo_conv3_3_overview.png   mine render (defaults) of HED VGG16 conv3_3 -> OUT/render/conv3_3_overview.png
#   demo_mobilenet_features11_overview.png   the same for MobileNetV2 features.11 (OUT/render-mobilenet)
#   demo_methods.png            scripts/figure_methods.py: deconvnet on receptive fields vs the default
#                               (guided, effective crop) for the same HED conv3_3 units
#   demo_methods_mobilenet.png  the same for MobileNetV2 features.11 (guided averaged over 2 x 2 shifts)
#   demo_relevance_mobilenet.png  MobileNetV2 features.11: guided vs the default (excitation backprop)
#   demo_reconstruct_vgg16_hed.jpg / demo_reconstruct_mobilenet_v2.jpg   mine reconstruct sheets
#   demo_occlude_conv5_3.png    mine occlude of the strongest conv5_3 unit
#   demo_embed_mobilenet_v2.png mine embed's thumbnail map of MobileNetV2 features.18
#   mobilenet_features11_visualize.png  scripts/figure_visualize.py: MobileNetV2 features.11 units 0-3,
#                               mine visualize's image (128 px, 128 steps) beside the top-9 patches
#   viewer_unit_page.png        headless Chromium screenshot of conv3_3 unit 37's page of OUT/render
#   digits_cnn_conv2_overview.png, digits_ae_up1_overview.png   mine render overviews of scripts/digits_demo.py's
#                               digit CNN conv2 and autoencoder up1 (OUT/digits/render-cnn, render-ae)
#   digits_ae_outputs.png       digits_demo.py's held-out digits, codes and outputs (OUT/digits/ae_outputs.png)
#   digits_ae_code_tsne.png     mine embed's map of the autoencoder's code (OUT/digits/embed/code_map.png)
#   OUT=out/demo scripts/readme_figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/demo}"
PY="${VENV:-.venv}/bin/python"
IMG=docs/img
mkdir -p "$IMG"
cp "$OUT/render/conv3_3_overview.png" "$IMG/demo_conv3_3_overview.png"
cp "$OUT/render-mobilenet/features.11_overview.png" "$IMG/demo_mobilenet_features11_overview.png"
"$PY" scripts/figure_methods.py "$OUT/demo.h5" --layer conv3_3 --units 58,37,152 --out "$IMG/demo_methods.png"
"$PY" scripts/figure_methods.py "$OUT/mobilenet.h5" --layer features.11 --methods deconvnet,guided \
  --out "$IMG/demo_methods_mobilenet.png"
"$PY" scripts/figure_methods.py "$OUT/mobilenet.h5" --layer features.11 --units 65,3 --methods guided,auto \
  --out "$IMG/demo_relevance_mobilenet.png"
to_jpg() { "$PY" -c "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], quality=85)" "$1" "$2"; }
to_jpg "$OUT/reconstruct/vgg16-hed/sheet.png" "$IMG/demo_reconstruct_vgg16_hed.jpg"
to_jpg "$OUT/reconstruct/mobilenet_v2/sheet.png" "$IMG/demo_reconstruct_mobilenet_v2.jpg"
cp "$(ls "$OUT"/render/occlude/conv5_3_occ_*.png | head -1)" "$IMG/demo_occlude_conv5_3.png"
cp "$OUT/embed/features.18_map.png" "$IMG/demo_embed_mobilenet_v2.png"
"$PY" scripts/figure_visualize.py "$OUT/mobilenet.h5" --layer features.11 --units 0,1,2,3 \
  --out "$IMG/mobilenet_features11_visualize.png"
cp "$OUT/digits/render-cnn/conv2_overview.png" "$IMG/digits_cnn_conv2_overview.png"
cp "$OUT/digits/render-ae/up1_overview.png" "$IMG/digits_ae_up1_overview.png"
cp "$OUT/digits/ae_outputs.png" "$IMG/digits_ae_outputs.png"
cp "$OUT/digits/embed/code_map.png" "$IMG/digits_ae_code_tsne.png"
if command -v chromium >/dev/null 2>&1; then
  page="$OUT/render/conv3_3_unit_37.html"
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1500 \
    --screenshot="$IMG/viewer_unit_page.png" "file://$(pwd)/$page" >/dev/null 2>&1
fi
ls -la "$IMG"
