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
# verbose in CI, so the log shows the CMake configuration and the nvcc compile check
python -m pip install ${CI:+-v} -q --no-build-isolation "$ROOT[test,video,viz]"
python - <<'PY'
import json
import flowception_ext
print("flowception_ext build_info:", json.dumps(flowception_ext.build_info(), indent=1))
PY
