"""build_info() and the pure-PyTorch fallback when the compiled extension is unavailable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import flowception_ext
from conftest import requires_extension

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_keys_and_types():
    info = flowception_ext.build_info()
    assert info["torch_version"] == torch.__version__
    for key in ("cpu_kernels", "cuda_kernels", "cuda_compile_checked"):
        assert isinstance(info[key], bool), key
    if info["cpu_kernels"]:
        assert info["built_for_torch"] == torch.__version__
        assert info["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512")
        assert info["cpu_bf16_gemm"] in (None, "amx", "avx512_bf16")
        assert info["fallback_reason"] is None
    else:
        assert isinstance(info["fallback_reason"], str)


# Run in a fresh interpreter with the extension disabled (after CASES): the import warning,
# build_info, and both ops through the references, saved to OUT for comparison.
FALLBACK_SCRIPT = """
import warnings, torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import flowception_ext
    import flowception_ext.ops, flowception_ext.packing  # re-imports must not warn again
    from flowception_ext import ops
warned = [w for w in caught if "flowception_ext" in str(w.message)]
assert len(warned) == 1 and warned[0].category is RuntimeWarning, [str(w.message) for w in caught]
assert "FLOWCEPTION_DISABLE_EXTENSION" in str(warned[0].message)
info = flowception_ext.build_info()
assert not info["cpu_kernels"] and "FLOWCEPTION_DISABLE_EXTENSION" in info["fallback_reason"]
assert not hasattr(torch.ops.flowception, "ragged_insert")
torch.save(run(ops), OUT)
"""

# Run by both processes: the same inputs through the public wrappers.
CASES = """
import torch

def run(ops):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(7, 3, 5, 7, generator=g)
    cu = torch.tensor([0, 3, 3, 7])
    counts = torch.tensor([0, 2, 1, 0, 0, 3, 1])
    keep = torch.tensor([True, False, True, True, False, True, True])
    return {"insert": ops.ragged_insert(frames, cu, counts, seed=11), "strip": ops.ragged_strip(frames, cu, keep)}
"""


@requires_extension
def test_fallback_warns_once_and_matches_kernels(tmp_path):
    out = tmp_path / "fallback.pt"
    env = {**os.environ, "FLOWCEPTION_DISABLE_EXTENSION": "1", "PYTHONPATH": str(ROOT)}
    script = f"OUT = {str(out)!r}\n{CASES}\n{FALLBACK_SCRIPT}"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fallback = torch.load(out)
    namespace: dict = {}
    exec(CASES, namespace)
    compiled = namespace["run"](flowception_ext.ops)
    for name in ("insert", "strip"):
        for got, want in zip(fallback[name], compiled[name]):
            # fp32 noise: the double-precision Box-Muller rounds to the same float
            assert torch.equal(got, want), name
