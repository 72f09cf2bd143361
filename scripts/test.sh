#!/usr/bin/env bash
# The one test command: set up .venv from the project's own files, then run the whole suite.
# README.md gives it and .ci/run calls it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${VENV:-.venv}/bin/ruff" check pipeline scripts tests
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
