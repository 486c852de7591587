"""Speed of local_frame_attention against the stock ways of attending within a window of frames.

Run (2 threads, one run):
    PYTHONPATH=$PWD python -m pytest bench/test_bench_attention.py --benchmark-only \
        --benchmark-group-by=func --benchmark-columns=min,median,rounds

Baselines, on the same inputs in the same run:
* ``sdpa_dense``: ``scaled_dot_product_attention`` with the dense block mask of the videos
  (equal-length videos are batched, sharing one mask);
* ``stock``: our stock PyTorch backend (``backend="stock"``, what runs on GPUs by default), as
  the model calls it: frames as a batch, the keys/values of each frame's window gathered and
  attended through SDPA, no log-sum-exp;
* ``flex``: compiled FlexAttention with a block mask (forward only; skipped where it fails);
* ``sdpa_nomask`` for ``window = -1`` on one video; ``matmul``: a plain matmul, for GFLOP/s.
``extra_info`` holds the useful GFLOP/s of each run. ``test_peak_memory`` measures the peak
resident memory of one forward+backward at 128 frames in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import flowception_ext
from flowception_ext.ops import local_frame_attention, local_frame_attention_flops
from flowception_ext.ops.reference import local_frame_mask

pytestmark = pytest.mark.skipif(not flowception_ext.build_info()["cpu_kernels"], reason="compiled extension not available")

HEADS, HEAD_DIM, WINDOW = 8, 64, 2
CASES = {"1x32x64": (1, 32, 64), "8x16x65": (8, 16, 65)}  # videos x frames x tokens per frame
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(videos, frames, P, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = videos * frames * P
    q, k, v = (torch.randn(T, HEADS, HEAD_DIM, generator=g).to(dtype) for _ in range(3))
    cu = torch.arange(videos + 1, dtype=torch.int64) * frames
    return q, k, v, cu


def sdpa_dense(q, k, v, videos, frames, P, window):
    """Equal-length videos batched as [B, H, L, d] with one dense [L, L] block mask."""
    mask = None if window is None else local_frame_mask(frames, P, window)
    qb, kb, vb = (t.view(videos, frames * P, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask).transpose(1, 2).reshape(q.shape)


def stock(q, k, v, cu, P, window, max_frames):
    """The stock backend as the model calls it."""
    return local_frame_attention(q, k, v, cu, P, window, backend="stock", return_lse=False, max_frames=max_frames)[0]


_flex_cache: dict = {}


def flex_runner(cu, P, window, T):
    """Compiled FlexAttention over the packed batch with a frame-window block mask."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    video = torch.repeat_interleave(torch.arange(cu.numel() - 1), cu.diff())

    def mask_mod(b, h, q_idx, kv_idx):
        fq, fk = q_idx // P, kv_idx // P
        return (video[fq] == video[fk]) & ((fq - fk).abs() <= window)

    block_mask = create_block_mask(mask_mod, None, None, T, T, device="cpu")
    if "fn" not in _flex_cache:
        _flex_cache["fn"] = torch.compile(flex_attention, dynamic=False)
    fn = _flex_cache["fn"]
    return lambda q, k, v: fn(*(t.transpose(0, 1)[None] for t in (q, k, v)), block_mask=block_mask)[0].transpose(0, 1)


# Warm-up calls before the timed ones: for the first few calls glibc often unmaps a freed 17 MB
# output, so the next call's output pays its page faults again (6-8 ms here), which a training
# loop does not see.
WARMUP = 3
# Timed rounds, the same for every implementation. Times are their minimum, so the more rounds,
# the less this VM's periods of 10-30 % slowdown decide a ratio.
ROUNDS = 15


def run(benchmark, fn, inputs, mode, flops):
    """Benchmark fn(q, k, v) forward, or forward + backward of out.sum()."""
    if mode == "fwd":
        with torch.no_grad():
            benchmark.pedantic(fn, args=inputs, rounds=ROUNDS, warmup_rounds=WARMUP)
        benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.min / 1e9
        return
    leaves = [t.detach().requires_grad_() for t in inputs]

    def step():
        for t in leaves:
            t.grad = None
        fn(*leaves).float().sum().backward()

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP)
    benchmark.extra_info["gflops"] = 3 * flops / benchmark.stats.stats.min / 1e9


IMPLS = ["ours", "stock", "sdpa_dense", "flex"]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_window(benchmark, case, dtype, impl, mode):
    videos, frames, P = CASES[case]
    q, k, v, cu = make_inputs(videos, frames, P, DTYPES[dtype])
    flops = local_frame_attention_flops(cu, P, WINDOW, HEADS, HEAD_DIM)
    if impl == "ours":
        fn = lambda q, k, v: local_frame_attention(q, k, v, cu, P, WINDOW)[0]  # noqa: E731
    elif impl == "sdpa_dense":
        fn = lambda q, k, v: sdpa_dense(q, k, v, videos, frames, P, WINDOW)  # noqa: E731
    elif impl == "stock":
        fn = lambda q, k, v: stock(q, k, v, cu, P, WINDOW, frames)  # noqa: E731
    else:
        if mode != "fwd":
            pytest.skip("FlexAttention has no CPU backward in this torch")
        try:
            fn = flex_runner(cu, P, WINDOW, q.shape[0])
            with torch.no_grad():
                fn(q, k, v)  # compile outside the timing
        except Exception as exc:  # noqa: BLE001  (report, do not fail the run)
            pytest.skip(f"compiled FlexAttention does not run here: {type(exc).__name__}: {exc}"[:300])
    benchmark.extra_info["useful_gflop"] = flops / 1e9
    run(benchmark, fn, (q, k, v), mode, flops)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["ours", "stock", "sdpa_nomask"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_whole_video(benchmark, dtype, impl, mode):
    """window = -1 on one video of 32 x 64 tokens: ours against SDPA without a mask."""
    q, k, v, cu = make_inputs(1, 32, 64, DTYPES[dtype])
    flops = local_frame_attention_flops(cu, 64, -1, HEADS, HEAD_DIM)
    if impl == "ours":
        fn = lambda q, k, v: local_frame_attention(q, k, v, cu, 64)[0]  # noqa: E731
    elif impl == "stock":
        fn = lambda q, k, v: stock(q, k, v, cu, 64, -1, 32)  # noqa: E731
    else:
        fn = lambda q, k, v: sdpa_dense(q, k, v, 1, 32, 64, None)  # noqa: E731
    run(benchmark, fn, (q, k, v), mode, flops)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_matmul(benchmark, dtype):
    """A plain matmul, for the GFLOP/s the machine gives in this run."""
    a, b = (torch.randn(1024, 1024).to(DTYPES[dtype]) for _ in range(2))
    benchmark.pedantic(torch.mm, args=(a, b), rounds=10, warmup_rounds=2)
    benchmark.extra_info["gflops"] = 2 * 1024**3 / benchmark.stats.stats.min / 1e9


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import torch.nn.functional as F
    from flowception_ext.ops import local_frame_attention
    from flowception_ext.ops.reference import local_frame_mask

    def status_kb(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    torch.set_num_threads(2)
    impl, frames, P, H, d, W = sys.argv[1], 128, 64, 8, 64, 2
    q, k, v = (torch.randn(frames * P, H, d, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, frames])
    grad = torch.randn(frames * P, H, d)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    base = status_kb("VmRSS")
    if impl == "ours":
        out = local_frame_attention(q, k, v, cu, P, W)[0]
    elif impl == "stock":
        out = local_frame_attention(q, k, v, cu, P, W, backend="stock", return_lse=False, max_frames=frames)[0]
    else:
        mask = local_frame_mask(frames, P, W)
        out = F.scaled_dot_product_attention(*(t.transpose(0, 1) for t in (q, k, v)), attn_mask=mask).transpose(0, 1)
    out.backward(grad)
    print(json.dumps({"peak_extra_mb": (status_kb("VmHWM") - base) / 1024}))
    """
)


@pytest.mark.parametrize("impl", ["ours", "stock", "sdpa_dense"])
def test_peak_memory(benchmark, impl):
    """Peak resident memory above the inputs of one forward+backward, 128 frames x 64 tokens, fp32."""
    result = {}

    def measure():
        proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, impl], capture_output=True, text=True, check=True)
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    # out + dq, dk, dv are 4 x 16 MB; a score tile per thread is under 1 MB; a T x T fp32
    # score matrix is 256 MB per head.
    print(impl, result)
