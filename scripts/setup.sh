#!/usr/bin/env bash
# Set up a virtual environment in .venv with sctopic and its test dependencies.
# On a machine without torch, the CPU build torch==2.13.0 is installed first: a plain
# `pip install torch` would pull a multi-GB CUDA build. Safe to run again (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import sctopic, torch; print('sctopic', sctopic.__version__, '| torch', torch.__version__)"
