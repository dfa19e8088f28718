#!/usr/bin/env bash
# Creates .venv and installs the project into it: the CPU torch wheel first (so pip never
# pulls a multi-GB CUDA build), then the project with its test, SageMaker and MLflow extras.
# Re-running is cheap: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test,sagemaker,mlflow}
stamp=".venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch" || { echo "torch failed to install ($TORCH_SPEC)"; exit 1; }
.venv/bin/python -m pip install -q -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import transformers, peft, deepspeed, datasets, rewards, data, grpo" \
  || { echo "project install failed"; exit 1; }
rm -f .venv/.installed-*
touch "$stamp"
