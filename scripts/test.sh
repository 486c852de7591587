#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# `pytest` (not `python -m pytest`) so the installed package, with its compiled core, is imported
# rather than the source tree.
FLOWCEPTION_REQUIRE_EXTENSION=1 pytest "$@"
