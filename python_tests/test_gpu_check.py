"""scripts/gpu_check.py in its CPU dry run: every step that runs without a GPU, one JSON verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_extension

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
STEPS = ("build", "ops", "train", "sample", "torchrun", "timing")


@pytest.mark.slow
@requires_extension
def test_gpu_check_dry_run_passes_every_step(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--quick", "--build", '{"skipped": "test"}',
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.stdout.strip(), proc.stderr[-3000:]  # it crashed before its verdict
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, json.dumps({k: report.get(k) for k in STEPS}, indent=1)[-4000:]
    assert report["mode"] == "cpu" and report["ok"] is True
    for step in STEPS[1:]:
        assert report[step]["ok"] is True, step
    assert report["ops"]["backends"] == ["stock", "kernels"] and report["ops"]["cases"] > 0
    assert len(report["sample"]["lengths"]) == 8
    rows = report["timing"]["rows"]
    assert {r["shape"] for r in rows} == {"1x32x64", "8x16x65"} and all(r["stock_ms"] > 0 for r in rows)


def test_gpu_check_without_a_gpu_says_so():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["ok"] is False and "no CUDA GPU" in report["error"]
