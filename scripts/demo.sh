#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: train a tiny Flowception model on the CPU, sample
# 64 videos, write figures. Extra arguments go to examples/demo.py (e.g. --train-steps 1000).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The demo runs on the CPU, so skip nvcc's compile check of the CUDA kernels (minutes of build
# time); scripts/test.sh and CI do it. Set FLOWCEPTION_CUDA=AUTO to build as usual.
export FLOWCEPTION_CUDA="${FLOWCEPTION_CUDA:-OFF}"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
python examples/demo.py "$@"
