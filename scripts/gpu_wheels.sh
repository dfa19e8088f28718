#!/usr/bin/env bash
# The wheels scripts/gpu_check.py brings to a GPU machine without an index: the pure-Python packages
# it needs that a machine with torch, transformers, peft, accelerate and numpy lacks. pytest and its
# dependencies run the CUDA-marked tests; math-verify (with latex2sympy2_extended and the ANTLR
# runtime it parses with) is imported by the reward registry, so by train.py. Each at the version
# installed here, where the test suite ran. gpu_check.py unpacks them onto its path (no install).
#
#   bash scripts/gpu_wheels.sh            # writes .whl/gpu-check/ (about 3 MiB); bring it with the repo
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=.whl/gpu-check
PACKAGES=(pytest pluggy iniconfig pygments packaging math-verify latex2sympy2_extended antlr4-python3-runtime)

pins=()
for package in "${PACKAGES[@]}"; do
    pins+=("$package==$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")")
done
rm -rf "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$OUT" "${pins[@]}"
# pure-Python wheels only (*-none-any): they run on whatever Python 3 and platform the GPU machine has
for wheel in "$OUT"/*.whl; do
    case "$wheel" in
        *-none-any.whl) ;;
        *) echo "$wheel is not a pure-Python wheel: gpu_check.py cannot run it unpacked" >&2; exit 1 ;;
    esac
done
ls -l "$OUT"
du -sh "$OUT"
