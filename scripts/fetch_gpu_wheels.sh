#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (it has torch, numpy, scipy, scikit-learn, sympy, pandas): python-flint and
# diskcache for Python 3.12, into .whl/ (ignored by git; carried with the device call). See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl python-flint==0.9.0 diskcache==5.6.3
ls -l .whl
