"""local_frame_attention against scaled_dot_product_attention with the dense block mask of each video."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import requires_extension
from flowception_ext.ops import local_frame_attention, local_frame_attention_flops
from flowception_ext.ops.reference import local_frame_attention_ref, local_frame_mask

LOW_PRECISION = (torch.bfloat16, torch.float16)


def make_case(lengths, P, H, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths) * P
    q, k, v = (torch.randn(T, H, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    return q, k, v, cu


def sdpa_dense(q, k, v, cu, P, window, causal, scale):
    """Attention through SDPA, one video at a time with its dense block mask."""
    outs = []
    for b in range(cu.numel() - 1):
        lo, hi = int(cu[b]) * P, int(cu[b + 1]) * P
        mask = local_frame_mask(int(cu[b + 1] - cu[b]), P, window, causal)
        qb, kb, vb = (t[lo:hi].transpose(0, 1) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale).transpose(0, 1))
    return torch.cat(outs) if outs else torch.empty_like(q)


def out_and_grads(fn, q, k, v, grad):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def sampled_cases(n, seed):
    """Random packed batches: tokens per frame 1/5/65/257, windows 0/1/2/7/>= length/-1,
    head dims 32/64/128, videos of 1-40 frames (fewer for big frames) plus an empty one."""
    rng = random.Random(seed)
    max_frames = {1: 40, 5: 40, 65: 12, 257: 4}
    cases = []
    for i in range(n):
        P = [1, 5, 65, 257][i % 4]
        lengths = [rng.randint(1, max_frames[P]) for _ in range(rng.randint(1, 3))]
        lengths.insert(rng.randint(0, len(lengths)), 0)
        window = rng.choice([0, 1, 2, 7, max(lengths), -1])
        cases.append((lengths, P, rng.choice([32, 64, 128]), window, rng.random() < 0.25))
    return cases


# fp32 with d a multiple of 16 runs our FMA GEMMs where the build has AVX-512; d = 40 and 24
# take the BLAS path.
@requires_extension
@pytest.mark.parametrize("lengths, P, d, window, causal", sampled_cases(12, seed=1) + [([3, 0, 2], 65, 40, 2, False), ([9], 5, 24, 1, True)])
def test_matches_dense_sdpa_fp32(lengths, P, d, window, causal):
    q, k, v, cu = make_case(lengths, P, 2, d, torch.float32, seed=len(lengths) + P + d)
    grad = torch.randn_like(q)
    scale = d**-0.5
    ours = out_and_grads(lambda q, k, v: local_frame_attention(q, k, v, cu, P, window, scale, causal=causal)[0], q, k, v, grad)
    ref = out_and_grads(lambda q, k, v: sdpa_dense(q, k, v, cu, P, window, causal, scale), q, k, v, grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert rel_err(a, b) <= 2e-6, name


@requires_extension
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("lengths, P, d, window, causal", sampled_cases(4, seed=2))
def test_low_precision_within_twice_sdpa_error(dtype, lengths, P, d, window, causal):
    q, k, v, cu = make_case(lengths, P, 2, d, dtype, seed=P + d)
    grad = torch.randn_like(q)
    scale = d**-0.5
    exact = out_and_grads(lambda *t: sdpa_dense(*t, cu, P, window, causal, scale), q.double(), k.double(), v.double(), grad.double())
    ours = out_and_grads(lambda q, k, v: local_frame_attention(q, k, v, cu, P, window, scale, causal=causal)[0], q, k, v, grad)
    low = out_and_grads(lambda *t: sdpa_dense(*t, cu, P, window, causal, scale), q, k, v, grad)
    for name, a, b, e in zip(("out", "dq", "dk", "dv"), ours, low, exact):
        assert a.dtype == dtype
        ours_err = (a.double() - e).abs().max().item()
        low_err = (b.double() - e).abs().max().item()
        assert ours_err <= 2 * low_err + 1e-6 * e.abs().max().item(), (name, ours_err, low_err)


# (P, d, window, causal); d = 40 and 33 take the fp32-GEMM path (the packed one needs d % 16 == 0).
BF16_PACKED_CASES = [(33, 64, 2, False), (65, 32, 0, False), (65, 128, 1, True), (100, 64, -1, False),
                     (257, 64, 1, False), (48, 128, 7, True), (65, 40, 2, False), (40, 33, 1, False)]


def _qkv_view(lengths, P, d, seed):
    """bf16 q, k, v read in place from a fused qkv ([T, 3, H, d], rows of stride 6 d)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(sum(lengths) * P, 3, 2, d, generator=g, dtype=torch.float64).to(torch.bfloat16)
    return qkv.unbind(1)


@requires_extension
@pytest.mark.parametrize("P, d, window, causal", BF16_PACKED_CASES)
def test_bf16_packed_path_within_twice_sdpa_error(P, d, window, causal):
    """bf16 with frames of > 32 tokens: the forward and the backward's softmax delta run bf16
    dot-product GEMMs where the CPU has them (``build_info()["cpu_bf16_gemm"]``)."""
    lengths = [3, 0, 1, 5] if P < 200 else [2, 3]
    cu = torch.tensor([0] + lengths).cumsum(0)
    q, k, v = _qkv_view(lengths, P, d, seed=P + d)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(torch.bfloat16)
    scale = d**-0.5
    exact = out_and_grads(lambda *t: sdpa_dense(*t, cu, P, window, causal, scale), q.double(), k.double(), v.double(), grad.double())
    ours = out_and_grads(lambda q, k, v: local_frame_attention(q, k, v, cu, P, window, scale, causal=causal)[0], q, k, v, grad)
    low = out_and_grads(lambda *t: sdpa_dense(*t, cu, P, window, causal, scale), q, k, v, grad)
    for name, a, b, e in zip(("out", "dq", "dk", "dv"), ours, low, exact):
        ours_err, low_err = (a.double() - e).abs().max().item(), (b.double() - e).abs().max().item()
        assert a.dtype == torch.bfloat16 and ours_err <= 2 * low_err + 1e-6 * e.abs().max().item(), (name, ours_err, low_err)
    lse = local_frame_attention(q, k, v, cu, P, window, scale, causal=causal)[1]
    exact_lse = local_frame_attention(q.double(), k.double(), v.double(), cu, P, window, scale, causal=causal)[1]
    assert (lse.double() - exact_lse).abs().max().item() < 0.05


@requires_extension
@pytest.mark.parametrize("P, window", [(65, 2), (48, -1)])
def test_bf16_backward_delta_with_grad_lse(P, window):
    """The bf16 backward (softmax delta from its own sweep, grad_lse included) against the same
    backward on the inputs converted to fp32: equal up to bf16 rounding of the gradients."""
    lengths, d = [4, 2], 64
    cu = torch.tensor([0] + lengths).cumsum(0)
    q, k, v = _qkv_view(lengths, P, d, seed=7)
    g = torch.Generator().manual_seed(8)
    grad_out = torch.randn(q.shape, generator=g).to(torch.bfloat16)
    out, lse = local_frame_attention(q, k, v, cu, P, window)
    grad_lse = torch.randn(lse.shape, generator=g)
    bwd = torch.ops.flowception.local_frame_attention_backward
    ours = bwd(grad_out, q, k, v, None, lse, grad_lse, cu, P, window, False, d**-0.5)
    ref = bwd(grad_out.float(), q.float(), k.float(), v.float(), None, lse, grad_lse, cu, P, window, False, d**-0.5)
    for name, a, b in zip(("dq", "dk", "dv"), ours, ref):
        assert rel_err(a, b) < 1e-2, name


@requires_extension
@pytest.mark.parametrize("causal", [False, True])
def test_lse_matches_reference_and_is_differentiable(causal):
    q, k, v, cu = make_case([3, 0, 5], 5, 2, 32, torch.float64)
    g_out, g_lse = torch.randn_like(q), torch.randn(2, q.shape[0], dtype=torch.float64)

    def run(fn):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out, lse = fn(qq, kk, vv, cu, 5, 1, 0.3, causal=causal)
        return (out, lse, *torch.autograd.grad((out * g_out).sum() + (lse * g_lse).sum(), (qq, kk, vv)))

    for a, b in zip(run(local_frame_attention), run(local_frame_attention_ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@requires_extension
@pytest.mark.parametrize("P, window", [(5, 1), (1, 3)])
def test_backward_delta_from_out_equals_exact_delta(P, window):
    """The backward takes the softmax delta from `out` (fp32/fp64) or computes it from P * dP."""
    q, k, v, cu = make_case([3, 0, 4], P, 2, 16, torch.float64)
    out, lse = local_frame_attention(q, k, v, cu, P, window, 0.25)
    g, g_lse = torch.randn_like(q), torch.randn_like(lse)
    backward = torch.ops.flowception.local_frame_attention_backward
    from_out = backward(g, q, k, v, out, lse, g_lse, cu, P, window, False, 0.25)
    exact = backward(g, q, k, v, None, lse, g_lse, cu, P, window, False, 0.25)
    for a, b in zip(from_out, exact):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@requires_extension
def test_lse_dtype():
    q, k, v, cu = make_case([2], 3, 2, 16, torch.bfloat16)
    out, lse = local_frame_attention(q, k, v, cu, 3)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32 and lse.shape == (2, 6)


@requires_extension
def test_empty_video_contributes_nothing():
    q, k, v, cu = make_case([4, 0, 3], 5, 2, 32, torch.float32)
    with_empty = local_frame_attention(q, k, v, cu, 5, 1)
    without = local_frame_attention(q, k, v, torch.tensor([0, 4, 7]), 5, 1)
    for a, b in zip(with_empty, without):
        assert torch.equal(a, b)
    q0 = q[:0].requires_grad_()
    out, lse = local_frame_attention(q0, q0, q0, torch.tensor([0, 0]), 5, 2)
    assert out.shape == (0, 2, 32) and lse.shape == (2, 0)
    out.sum().backward()
    assert q0.grad.shape == q0.shape


@requires_extension
def test_window_at_least_length_equals_whole_video():
    q, k, v, cu = make_case([6, 2], 4, 2, 32, torch.float32)
    for a, b in zip(local_frame_attention(q, k, v, cu, 4, 5), local_frame_attention(q, k, v, cu, 4, -1)):
        assert torch.equal(a, b)


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_result_for_any_thread_count(threads, dtype):
    """Forward and backward (bf16 with 65 tokens per frame takes the packed bf16 GEMMs where the
    CPU has them)."""
    q, k, v, cu = make_case([7, 3], 65, 4, 64, dtype)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    run = lambda q, k, v: local_frame_attention(q, k, v, cu, 65, 2)[0]  # noqa: E731
    threads(1)
    one = (*local_frame_attention(q, k, v, cu, 65, 2), *out_and_grads(run, q, k, v, grad))
    threads(2)
    two = (*local_frame_attention(q, k, v, cu, 65, 2), *out_and_grads(run, q, k, v, grad))
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@requires_extension
def test_non_contiguous_inputs():
    lengths, P, H, d = [3, 4], 5, 2, 32
    T = sum(lengths) * P
    cu = torch.tensor([0, 3, 7])
    qkv = torch.randn(T, 3, H, d)  # fused projection: rows strided, read in place
    heads_first = torch.randn(H, T, d).transpose(0, 1)  # [T, H, d] view of [H, T, d]
    strided_last = torch.randn(T, H, 2 * d)[..., ::2]  # needs a copy
    q, k, v = qkv[:, 0], heads_first, strided_last
    grad = torch.randn(T, H, d)
    ours = out_and_grads(lambda q, k, v: local_frame_attention(q, k, v, cu, P, 1)[0], q, k, v, grad)
    ref = out_and_grads(lambda q, k, v: local_frame_attention(q, k, v, cu, P, 1)[0], q.contiguous(), k.contiguous(), v.contiguous(), grad)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


@requires_extension
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck(causal):
    q, k, v, cu = make_case([3, 0, 2], 4, 2, 16, torch.float32)
    args = (q.requires_grad_(), k, v, cu, 4, 1, causal, 0.25)
    torch.library.opcheck(torch.ops.flowception.local_frame_attention.default, args)


@requires_extension
@pytest.mark.parametrize("P, window, causal", [(1, 1, False), (3, 0, False), (2, -1, True), (2, 1, True)])
def test_gradcheck_float64(P, window, causal):
    q, k, v, cu = make_case([2, 0, 3], P, 1, 4, torch.float64)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: local_frame_attention(q, k, v, cu, P, window, 0.5, causal=causal), inputs, fast_mode=True
    )


@requires_extension
def test_flop_counter_counts_useful_flops():
    q, k, v, cu = make_case([5, 2], 4, 2, 16, torch.float32)
    expected = local_frame_attention_flops(cu, 4, 1, heads=2, head_dim=16)
    # pairs of frames within one frame: 5 + 2*4 for the 5-frame video, 2 + 2 for the other
    assert expected == 4 * 16 * 2 * (13 + 4) * 16
    q.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        out, _ = local_frame_attention(q, k, v, cu, 4, 1)
    assert counter.get_total_flops() == expected
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 5 * expected // 2  # as torch counts the SDPA backward


@pytest.mark.parametrize("fn", [local_frame_attention, local_frame_attention_ref], ids=["op", "ref"])
def test_bad_input(fn):
    q, k, v, cu = make_case([2, 1], 4, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="k must have the shape of q"):
        fn(q, k[:-4], v, cu, 4)
    with pytest.raises(TypeError, match="v must have the dtype of q"):
        fn(q, k, v.double(), cu, 4)
    with pytest.raises(ValueError, match="q must be a 3-D tensor"):
        fn(q[0], k[0], v[0], cu, 4)
    with pytest.raises(ValueError, match="multiple of tokens_per_frame"):
        fn(q, k, v, cu, 5)
    with pytest.raises(ValueError, match="tokens_per_frame must be >= 1"):
        fn(q, k, v, cu, 0)
    with pytest.raises(ValueError, match="cu_seqlens must end at the number of frames \\(3\\)"):
        fn(q, k, v, torch.tensor([0, 2, 4]), 4)
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        fn(q, k, v, torch.tensor([0, 2, 1, 3]), 4)
    with pytest.raises(TypeError, match="cu_seqlens must be int64"):
        fn(q, k, v, cu.int(), 4)
    with pytest.raises(ValueError, match="window must be >= 0, or -1"):
        fn(q, k, v, cu, 4, -2)
    big = torch.zeros(12, 2, 300)
    with pytest.raises(ValueError, match="head dim q.size\\(2\\) must be between 1 and 256"):
        fn(big, big, big, cu, 4)
