"""Per-frame AdaLN ops vs the eager reference (gather form) and torch.compile of it, on
x = [32 frames x 256 tokens, 1152], float32 and bfloat16, 2 threads; plus a plain ``copy_`` of x
for bandwidth and ``empty_like(x).fill_`` for the cost of a fresh output. A summary of the
ratios against the goals (listed in bench/RESULTS.md) is printed at the end.

    PYTHONPATH=$PWD python -m pytest bench/test_bench_adaln.py --benchmark-only
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import flowception_ext
from flowception_ext.ops import adaln_modulate, gated_residual, gated_residual_adaln
from flowception_ext.ops.adaln import adaln_modulate_bytes
from flowception_ext.ops.reference import adaln_modulate_ref, gated_residual_adaln_ref, gated_residual_ref

FRAMES, TOKENS_PER_FRAME, DIM = 32, 256, 1152
NUM_TOKENS = FRAMES * TOKENS_PER_FRAME
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROUNDS = 20  # the ops take milliseconds; many rounds steady the min on a noisy VM

pytestmark = pytest.mark.skipif(not flowception_ext.build_info()["cpu_kernels"], reason="compiled extension not available")

# name -> (its inputs, ours, reference); each returns a tuple of outputs.
OPS = {
    "adaln_modulate": (
        ("x", "shift", "scale"),
        lambda x, shift, scale: (adaln_modulate(x, shift, scale, TOKENS_PER_FRAME),),
        lambda x, shift, scale: (adaln_modulate_ref(x, shift, scale, TOKENS_PER_FRAME),),
    ),
    "gated_residual": (
        ("x", "h", "gate"),
        lambda x, h, gate: (gated_residual(x, h, gate, TOKENS_PER_FRAME),),
        lambda x, h, gate: (gated_residual_ref(x, h, gate, TOKENS_PER_FRAME),),
    ),
    "gated_residual_adaln": (
        ("x", "h", "gate", "shift", "scale"),
        lambda x, h, gate, shift, scale: gated_residual_adaln(x, h, gate, shift, scale, TOKENS_PER_FRAME),
        lambda x, h, gate, shift, scale: gated_residual_adaln_ref(x, h, gate, shift, scale, TOKENS_PER_FRAME),
    ),
}


def _unfused(x, h, gate, shift, scale):
    """Our two separate ops, to see whether the fused one is worth having."""
    x_new = gated_residual(x, h, gate, TOKENS_PER_FRAME)
    return x_new, adaln_modulate(x_new, shift, scale, TOKENS_PER_FRAME)


RESULTS: dict[tuple[str, str, str, str], float] = {}  # (dtype, op, pass, impl) -> min seconds


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    _report(request.config)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    per_dtype = {}
    for name, dtype in DTYPES.items():
        tokens = {n: torch.randn(NUM_TOKENS, DIM, generator=gen).to(dtype) for n in ("x", "h")}
        frames = {n: (0.1 * torch.randn(FRAMES, DIM, generator=gen)).to(dtype) for n in ("gate", "shift", "scale")}
        per_dtype[name] = tokens | frames
    return per_dtype


_compiled: dict[str, object] = {}


def _implementation(op: str, impl: str):
    _, ours, ref = OPS[op]
    if impl == "ours":
        return ours
    if impl == "ours_unfused":
        return _unfused
    if impl == "eager":
        return ref
    if op not in _compiled:
        _compiled[op] = torch.compile(ref)
    return _compiled[op]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_copy(benchmark, inputs, dtype):
    x = inputs[dtype]["x"]
    out = torch.empty_like(x)
    benchmark.pedantic(out.copy_, args=(x,), rounds=ROUNDS, warmup_rounds=1)
    RESULTS[(dtype, "copy_", "fwd", "torch")] = benchmark.stats.stats.min


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_bandwidth_interleaved(benchmark, inputs, dtype):
    """``copy_`` of x and the ``adaln_modulate`` forward, alternated: the median over rounds of
    the ratio of their effective bandwidths. Steadier on a shared VM than a ratio of minima taken
    apart, since both sides of a pair see the same moment of the machine."""
    x, shift, scale = (inputs[dtype][k] for k in ("x", "shift", "scale"))
    out = torch.empty_like(x)
    ours_bytes = adaln_modulate_bytes(NUM_TOKENS, DIM, FRAMES, x.element_size())
    copy_bytes = 2 * x.numel() * x.element_size()
    ratios = []

    def pair():
        start = time.perf_counter()
        out.copy_(x)
        mid = time.perf_counter()
        adaln_modulate(x, shift, scale, TOKENS_PER_FRAME)
        end = time.perf_counter()
        ratios.append((ours_bytes / (end - mid)) / (copy_bytes / (mid - start)))

    with torch.no_grad():
        benchmark.pedantic(pair, rounds=2 * ROUNDS, warmup_rounds=1)
    ratios = ratios[1:]  # the warm-up round
    RESULTS[(dtype, "bandwidth_ratio", "fwd", "interleaved")] = statistics.median(ratios)
    benchmark.extra_info["bandwidth_ratio_median"] = statistics.median(ratios)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_fresh_output(benchmark, inputs, dtype):
    """``empty_like(x).fill_(1)``: the floor of any op returning a new tensor of x's size (page faults)."""
    x = inputs[dtype]["x"]
    benchmark.pedantic(lambda: torch.empty_like(x).fill_(1), rounds=ROUNDS, warmup_rounds=1)
    RESULTS[(dtype, "fresh", "fwd", "torch")] = benchmark.stats.stats.min


@pytest.mark.parametrize("impl", ["ours", "eager", "compiled", "ours_unfused"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_adaln(benchmark, inputs, dtype, op, pass_, impl):
    if impl == "ours_unfused" and op != "gated_residual_adaln":
        pytest.skip("only the fused op has an unfused twin")
    fn = _implementation(op, impl)
    args = [inputs[dtype][name] for name in OPS[op][0]]
    benchmark.group = f"{op} {pass_} {dtype}"
    if pass_ == "fwd":
        with torch.no_grad():
            benchmark.pedantic(fn, args=tuple(args), rounds=ROUNDS, warmup_rounds=1)
    else:
        leaves = [t.detach().requires_grad_() for t in args]
        grads = [torch.randn_like(args[0]) for _ in range(2)]

        def fwd_bwd():
            outs = fn(*leaves)
            return torch.autograd.grad(outs, leaves, grads[: len(outs)])

        benchmark.pedantic(fwd_bwd, rounds=ROUNDS, warmup_rounds=1)
    RESULTS[(dtype, op, pass_, impl)] = benchmark.stats.stats.min


def _report(config) -> None:
    """Ratios and bandwidth against the goals, printed after the benchmarks."""
    if not RESULTS:
        return
    lines = ["", "AdaLN summary (min times; speed-up = baseline time / our time):"]
    for dtype in DTYPES:
        r = lambda op, p, impl: RESULTS.get((dtype, op, p, impl))  # noqa: E731
        copy = r("copy_", "fwd", "torch")
        for op in OPS:
            for p in ("fwd", "fwd+bwd"):
                ours, eager, comp = r(op, p, "ours"), r(op, p, "eager"), r(op, p, "compiled")
                if ours is None:
                    continue
                parts = [f"{dtype} {op:21s} {p:8s} ours {ours * 1e3:8.2f} ms"]
                if eager:
                    parts.append(f"eager {eager * 1e3:8.2f} ms ({eager / ours:5.2f}x)")
                if comp:
                    parts.append(f"compiled {comp * 1e3:8.2f} ms ({comp / ours:5.2f}x)")
                unfused = r(op, p, "ours_unfused")
                if unfused:
                    parts.append(f"our unfused pair {unfused * 1e3:8.2f} ms ({unfused / ours:5.2f}x)")
                lines.append(" | ".join(parts))
        fwd, fresh = r("adaln_modulate", "fwd", "ours"), r("fresh", "fwd", "torch")
        if fresh:
            lines.append(f"{dtype} empty_like(x).fill_(1): {fresh * 1e3:.2f} ms")
        if copy and fwd:
            elem = DTYPES[dtype].itemsize
            copy_bw = 2 * NUM_TOKENS * DIM * elem / copy / 1e9
            fwd_bw = adaln_modulate_bytes(NUM_TOKENS, DIM, FRAMES, elem) / fwd / 1e9
            lines.append(
                f"{dtype} bandwidth: copy_ {copy * 1e3:.2f} ms = {copy_bw:.1f} GB/s; adaln_modulate fwd "
                f"{fwd_bw:.1f} GB/s ({100 * fwd_bw / copy_bw:.0f}% of copy_)"
            )
        interleaved = r("bandwidth_ratio", "fwd", "interleaved")
        if interleaved:
            lines.append(f"{dtype} bandwidth, copy_ and fwd interleaved: median fwd/copy_ {100 * interleaved:.0f}%")
    lines.append(
        "goals (adaln_modulate): fwd+bwd >= 3x eager and >= 1.5x compiled; fwd >= 1.0x compiled; "
        "fwd bandwidth >= 50% of copy_"
    )
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    with config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)
