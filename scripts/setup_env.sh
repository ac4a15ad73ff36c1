#!/usr/bin/env bash
# Create .venv (if missing) with the CPU build of torch and the project with its dev extras.
# GPU users: set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url <CUDA wheel index>") first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, monai, ignite, nvflare, itk, SimpleITK, pydicom, nibabel, sklearn, psutil, jsonschema, mlflow, alembic, onnx, onnxscript, onnxruntime, tabulate, dcurves, statsmodels, pytest, preprocessing, evaluation" 2>/dev/null; then
  .venv/bin/pip install --quiet --upgrade pip
  # torch first and pinned: an unpinned requirement would pull a multi-GB CUDA build
  .venv/bin/pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
  .venv/bin/pip install --quiet -e ".[dev]"
fi
