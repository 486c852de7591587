"""Quick Flowception-vs-baselines timings (the full version: ``python bench/efficiency.py``).

Run: PYTHONPATH=$PWD python -m pytest bench/test_bench_efficiency.py --benchmark-only

Training: one step (forward + loss + backward) on 4 videos of 32 frames (tiny preset, 16×16
frames, patch 4: 17 tokens per frame): Flowception (packed, default τ_g sampler), the same states
padded with a dense mask, and full-sequence on the same clean videos. Sampling: whole runs at 4
steps per frame. The summary prints each ratio next to the FLOP ratio of the same work.
"""

from __future__ import annotations

import pytest

from efficiency import build_model, parse_args, sampling_runs, training_batch  # bench/efficiency.py, beside this file
from flowception_ext.costs import count_flops

N_FRAMES = 32
ARGS = parse_args(["--quick", "--n", str(N_FRAMES), "--batch", "4", "--states", "1", "--steps", "4"])
SECONDS: dict[str, float] = {}
FLOPS: dict[str, int] = {}


@pytest.fixture(scope="module")
def work():
    model, causal = build_model(ARGS), build_model(ARGS, "causal")
    steps, _, _ = training_batch(model, N_FRAMES, ARGS)
    runs = sampling_runs(model, causal, N_FRAMES, ARGS, ar_nocache=False)
    yield {**{f"train_{k}": v for k, v in steps.items()}, **{f"sample_{k}": v for k, v in runs.items()}}


@pytest.mark.parametrize("name", ["train_flowception", "train_full_sequence", "train_padded",
                                  "sample_flowception", "sample_full_sequence", "sample_ar_cache"])
def test_bench(benchmark, work, bench_summary, name):
    fn = work[name]
    FLOPS[name] = count_flops(fn)["total"]
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    SECONDS[name] = benchmark.stats.stats.median
    benchmark.extra_info["gflops"] = FLOPS[name] / 1e9
    if len(SECONDS) == 6:
        for a, b in (("train_full_sequence", "train_flowception"), ("train_padded", "train_flowception"),
                     ("sample_full_sequence", "sample_flowception")):
            bench_summary.append(f"efficiency n={N_FRAMES}: {a} / {b}: time {SECONDS[a] / SECONDS[b]:.2f}x, "
                                 f"FLOPs {FLOPS[a] / FLOPS[b]:.2f}x")
