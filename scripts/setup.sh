#!/usr/bin/env bash
# Create (once) a virtual environment in .venv with torch, and build and install flowception_ext
# into it from this checkout. Source it to keep the venv active.
#
# torch: a torch already in the venv is kept when it is a tested release (2.13 or 2.14);
# otherwise torch==${FLOWCEPTION_TORCH:-2.13.0} is installed. On this project's machines 2.13.0 is a
# local CPU wheel; elsewhere pip takes PyPI's default build, which on Linux is a CUDA build
# (several GB). Either builds here without a CUDA toolkit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLOWCEPTION_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# torch first (pinned: a bare `torch` would pull the newest, untested release), then the build
# backend: the extension is built against the torch installed here.
tested='^2\.1[34]\.'
have=$(python -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ -n "${FLOWCEPTION_TORCH:-}" ] || ! [[ "$have" =~ $tested ]]; then
  python -m pip install -q "torch==${FLOWCEPTION_TORCH:-2.13.0}"
fi
python -c 'import torch; print(f"flowception_ext setup: torch {torch.__version__}, "
                               + (f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"))'
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
