#!/usr/bin/env bash
# What a lent GPU machine's few minutes go to (under 8 minutes on one H100/H200): the CUDA tests, the
# streaming benchmark on the device, a torchrun job over the GPUs, and render's projections/s on CUDA.
# Run from the repository root on the GPU machine; prints everything, writes results under ${OUT:-out/gpu}.
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"; mkdir -p "$OUT"
bash scripts/setup.sh
PY="${VENV:-.venv}/bin/python"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
NGPU=$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")
# 1. the tests that need CUDA (they skip without it) and the render/crop tests on this machine
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_deconv.py -k cuda tests/test_crop.py 2>&1 | tail -3
# 2. streaming pass vs the bare forward pass on the device, whole `mine run` end to end
timeout 240 "$PY" scripts/bench_mine.py --device cuda --models resnet50,mobilenet_v2 --repeat 2 --rss 0 0 \
  --e2e-images 512 2>&1 | tee "$OUT/bench_mine.txt" | tail -25
# 3. a torchrun job over every GPU (NCCL), the store compared with one process by the bench script
timeout 120 "$PY" scripts/bench_mine.py --e2e-only --device cuda --distributed "$NGPU" --e2e-images 512 2>&1 \
  | tee "$OUT/torchrun.txt" | tail -8
# 4. render on the device: projections/s of the default (guided, effective crop) and of the deconvnet
timeout 60 "${VENV:-.venv}/bin/mine" run --config configs/offline-demo-mobilenet.toml --device cuda --out "$OUT/mobilenet.h5" \
  --force --quiet
for m in guided deconvnet; do
  timeout 60 "$PY" scripts/hf_share.py "$OUT/mobilenet.h5" --layers features.11,features.14 --method $m --maps 16 \
    --device cuda 2>&1 | tail -3 || true
done
echo "gpu_check done; results in $OUT"
