#!/usr/bin/env bash
# What the benchmarks compare against beyond Rust crates: numpy (its BLAS is the kernel bench's
# CPU baseline). Installs only what is missing.
set -euo pipefail
if ! python3 -c 'import numpy' 2>/dev/null; then
    python3 -m pip install --quiet 'numpy>=1.26'
fi
python3 -c 'import numpy; print("numpy", numpy.__version__)'
