#!/usr/bin/env bash
# One-command GPU validation: build with our CUDA kernels, check every op against its reference
# on the GPU (stock backend and our kernels, fwd and bwd, fp32 and bf16), train the tiny preset
# for 50 steps and sample 8 videos on the GPU, run a 2-process torchrun when two GPUs are there,
# time the attention backends, and print one JSON verdict (exit status 0 when every step passed).
#
#   bash scripts/gpu_check.sh            # on a machine with a CUDA GPU and a CUDA toolkit (nvcc)
#   bash scripts/gpu_check.sh --cpu      # dry run here: every step but the CUDA-only ones
#   bash scripts/gpu_check.sh --skip-build   # reuse the installed build
#
# Builds into the virtual environment of scripts/setup.sh (FLOWCEPTION_VENV, default .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=cuda
BUILD=1
CHECK_ARGS=()
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu; CHECK_ARGS+=(--cpu) ;;
    --skip-build) BUILD=0 ;;
    --quick) CHECK_ARGS+=(--quick) ;;
    *) echo "gpu_check.sh: unknown argument $arg (expected --cpu, --skip-build, --quick)" >&2; exit 2 ;;
  esac
done

LOG="$(mktemp -t flowception_gpu_check_build.XXXXXX.log)"
if [ "$BUILD" = 1 ]; then
  # On the GPU our CUDA kernels must be built (ON fails the build rather than silently skipping
  # them); the dry run builds what this machine can.
  cuda_option=AUTO
  [ "$MODE" = cuda ] && cuda_option=ON
  start=$(date +%s)
  if FLOWCEPTION_CUDA=$cuda_option bash "$ROOT/scripts/setup.sh" >"$LOG" 2>&1; then ok=true; else ok=false; fi
  build="{\"ok\": $ok, \"seconds\": $(( $(date +%s) - start )), \"flowception_cuda\": \"$cuda_option\", \"log\": \"$LOG\"}"
  if [ "$ok" = false ]; then
    tail -n 30 "$LOG" >&2
    echo "{\"mode\": \"$MODE\", \"build\": $build, \"ok\": false}"
    exit 1
  fi
else
  build='{"skipped": "--skip-build"}'
fi
VENV="${FLOWCEPTION_VENV:-$ROOT/.venv}"
"$VENV/bin/python" "$ROOT/scripts/gpu_check.py" --build "$build" "${CHECK_ARGS[@]}"
