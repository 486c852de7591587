"""ragged_insert / ragged_strip against the eager reference, torch.compile(reference) and a
plain clone() of the output bytes, on 64 videos x 32 frames x [4, 32, 32] fp32, 2 threads.

    PYTHONPATH=$PWD python -m pytest bench/test_bench_ragged.py --benchmark-only
    PYTHONPATH=$PWD python bench/test_bench_ragged.py   # cross-check: all impls round-robin

pytest-benchmark times each implementation in its own block of time; on a machine shared with
other work the load changes between blocks, so the script mode times them in turn instead.

Goals: >= 3x faster than the eager reference and >= 70% of clone's bandwidth.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from flowception_ext import build_info, ops
from flowception_ext.ops.reference import ragged_insert_ref, ragged_strip_ref

B, L, FRAME = 64, 32, (4, 32, 32)
IMPLS = ["ours", "eager reference", "compiled reference", "clone"]
_median: dict[tuple[str, str], float] = {}  # (op, impl) -> median seconds
_min: dict[tuple[str, str], float] = {}


def make_workloads() -> dict:
    """Per op: (bytes the op moves, bytes clone moves, {impl: callable}), all on the same inputs."""
    g = torch.Generator().manual_seed(0)
    n = B * L
    frames = torch.randn(n, *FRAME, generator=g)
    cu = torch.arange(0, n + 1, L)
    counts = torch.poisson(torch.full((n,), 0.25), generator=g).long()  # ~25% more frames
    keep = torch.rand(n, generator=g) < 0.75  # ~75% kept
    m, k = int(counts.sum()), int(keep.sum())
    insert_out, strip_out = torch.randn(n + m, *FRAME), torch.randn(k, *FRAME)
    compiled_insert, compiled_strip = torch.compile(ragged_insert_ref), torch.compile(ragged_strip_ref)
    return {
        "ragged_insert": (ops.ragged_insert_bytes(frames.shape, m, 4), 2 * insert_out.nbytes, {
            "ours": lambda: ops.ragged_insert(frames, cu, counts, m, seed=1),
            "eager reference": lambda: ragged_insert_ref(frames, cu, counts, m, 1),
            "compiled reference": lambda: compiled_insert(frames, cu, counts, m, 1),
            "clone": insert_out.clone,
        }),
        "ragged_strip": (ops.ragged_strip_bytes(frames.shape, k, 4), 2 * strip_out.nbytes, {
            "ours": lambda: ops.ragged_strip(frames, cu, keep, k),
            "eager reference": lambda: ragged_strip_ref(frames, cu, keep, k),
            "compiled reference": lambda: compiled_strip(frames, cu, keep, k),
            "clone": strip_out.clone,
        }),
    }


@pytest.fixture(scope="module")
def workloads() -> dict:
    return make_workloads()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["ragged_insert", "ragged_strip"])
def test_bench(benchmark, workloads, bench_summary, op, impl):
    moved, _, fns = workloads[op]
    fn = fns[impl]
    fn()  # warm-up (and compilation for torch.compile)
    benchmark.group = f"{op} (64 x 32 x [4, 32, 32] fp32, 2 threads)"
    benchmark.extra_info["bytes"] = moved
    benchmark(fn)
    _median[op, impl] = benchmark.stats.stats.median
    _min[op, impl] = benchmark.stats.stats.min
    if len(_median) == len(IMPLS) * len(workloads):
        bench_summary.extend(summary(workloads))


def summary(workloads: dict) -> list[str]:
    lines = [f"cpu_capability {build_info()['cpu_capability']}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; ratios from medians (from minima in brackets)"]
    for op, (moved, clone_bytes, _) in workloads.items():
        def ratio(a: str, b: str) -> str:
            return f"{_median[op, b] / _median[op, a]:.2f}x [{_min[op, b] / _min[op, a]:.2f}x]"

        ours_bw, clone_bw = moved / _median[op, "ours"], clone_bytes / _median[op, "clone"]
        lines.append(
            f"{op}: ours {_median[op, 'ours'] * 1e3:.2f} ms ({ours_bw / 1e9:.2f} GB/s); "
            f"vs eager reference {ratio('ours', 'eager reference')}, "
            f"vs torch.compile(reference) {ratio('ours', 'compiled reference')}; "
            f"clone {clone_bw / 1e9:.2f} GB/s, ours/clone bandwidth {ours_bw / clone_bw:.0%} "
            f"[{(moved / _min[op, 'ours']) / (clone_bytes / _min[op, 'clone']):.0%}]")
    return lines


def round_robin(rounds: int = 12) -> None:
    """Time every implementation in turn, ``rounds`` times, and print minima and medians."""
    torch.set_num_threads(2)
    times: dict[tuple[str, str], list[float]] = {}
    work = make_workloads()
    for _, _, fns in work.values():
        for fn in fns.values():
            fn()  # warm-up / compilation
    for _ in range(rounds):
        for op, (_, _, fns) in work.items():
            for impl, fn in fns.items():
                start = time.perf_counter()
                fn()
                times.setdefault((op, impl), []).append(time.perf_counter() - start)
    for (op, impl), t in times.items():
        _min[op, impl], _median[op, impl] = min(t), statistics.median(t)
        print(f"{op:14s} {impl:19s} min {min(t) * 1e3:8.2f} ms  median {statistics.median(t) * 1e3:8.2f} ms")
    print("\n".join(summary(work)))


if __name__ == "__main__":
    round_robin()
