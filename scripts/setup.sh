#!/usr/bin/env bash
# Create (once) a virtual environment in .venv with the CPU build of torch, and build and
# install flowception_ext into it from this checkout. Source it to keep the venv active.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLOWCEPTION_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# torch first, pinned to the CPU build (a bare `torch` would pull a multi-GB CUDA build), then
# the build backend: the extension is built against the torch installed here.
python -m pip install -q torch==2.13.0
python -m pip install -q "scikit-build-core>=0.10"
# Build the wheel (verbose in CI, so the log shows the CMake configuration, the CPU kernels'
# compilation and nvcc's compile check of the CUDA kernels), then install it with its extras.
verbosity=-q
[ -n "${CI:-}" ] && verbosity=-v
rm -rf "$ROOT/build/wheel"
python -m pip wheel $verbosity --no-deps --no-build-isolation -w "$ROOT/build/wheel" "$ROOT"
wheel=$(ls "$ROOT"/build/wheel/flowception_ext-*.whl)
python -m pip install -q --force-reinstall --no-deps "$wheel"
python -m pip install -q "${wheel}[test,video,viz]"
# (from another directory, so the installed package is imported, not the source tree)
(cd "$VENV" && python -c 'import json, flowception_ext; print("flowception_ext build_info:", json.dumps(flowception_ext.build_info(), indent=1))')
