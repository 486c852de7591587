"""Block-sparse attention over the frames of packed videos (``[T, H, d]`` tokens + ``cu_seqlens``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import flop_registry

from ._registry import compiled_op, register
from .backend import select_backend
from .stock import local_frame_attention_stock

__all__ = ["local_frame_attention", "local_frame_attention_flops"]


def local_frame_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    tokens_per_frame: int,
    window: int = -1,
    scale: float | None = None,
    *,
    causal: bool = False,
    max_frames: int | None = None,
    return_lse: bool = True,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Attention of packed tokens within each video, restricted to a window of frames.

    Token ``i`` belongs to frame ``i // tokens_per_frame``; a token of frame ``f`` attends to
    every token of the frames ``g`` of the same video with ``|f - g| <= window`` (and
    ``g <= f`` when ``causal``). Blocks outside the window are never computed, so the cost is
    linear in the number of frames for a fixed window.

    Args:
        q, k, v: ``[T, H, d]`` (float32/64, float16, bfloat16; the last dim contiguous, e.g.
            slices of a fused qkv projection are read in place). ``d <= 256``.
        cu_seqlens: int64 ``[B+1]``, prefix sums of the video lengths **in frames**, ending at
            ``T // tokens_per_frame``. Empty videos are allowed.
        tokens_per_frame: tokens per frame (patch tokens + rate token).
        window: frames each side (``-1``: the whole video).
        scale: score scale, ``d ** -0.5`` by default.
        causal: frame-causal attention (frame ``f`` sees frames ``g <= f``, within the window).
        max_frames: the longest video's frame count, if known (as flash-attn's ``max_seqlen``):
            spares the stock backend a host sync. Must be right when given.
        return_lse: also return the log-sum-exp (the stock backend then computes the scores
            explicitly instead of through ``scaled_dot_product_attention``).
        backend: ``"kernels"``, ``"stock"`` or ``None`` (the device's default; see
            :func:`flowception_ext.ops.select_backend`).

    Returns:
        ``(out [T, H, d], lse [H, T])``: the output, and the log-sum-exp of each query's scaled
        scores (float32; float64 for float64 inputs), or ``None`` with ``return_lse=False``.
        Differentiable w.r.t. ``q``, ``k``, ``v`` (through both outputs).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if select_backend(q.device, backend, head_dim=q.shape[-1] if q.dim() == 3 else None) == "stock":
        return local_frame_attention_stock(q, k, v, cu_seqlens, tokens_per_frame, window, scale, causal=causal,
                                           max_frames=max_frames, return_lse=return_lse)
    out, lse = compiled_op("local_frame_attention")(q, k, v, cu_seqlens, tokens_per_frame, window, causal, scale)
    return out, (lse if return_lse else None)


def local_frame_attention_flops(cu_seqlens: Tensor | list[int], tokens_per_frame: int, window: int, heads: int,
                                head_dim: int, causal: bool = False) -> int:
    """Useful forward FLOPs (two matmuls over the attended pairs: ``4 d`` per query-key pair)."""
    cu = cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else list(cu_seqlens)
    pairs = 0
    for b in range(len(cu) - 1):
        n = cu[b + 1] - cu[b]
        for f in range(n):
            lo = 0 if window < 0 else max(0, f - window)
            hi = f + 1 if causal else (n if window < 0 else min(n, f + window + 1))
            pairs += hi - lo
    return 4 * head_dim * heads * pairs * tokens_per_frame**2


# ---- fake kernels, autograd, flop formulas -------------------------------------------------


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake(q, k, v, cu_seqlens, tokens_per_frame, window, causal, scale):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty((q.shape[1], q.shape[0]), dtype=_lse_dtype(q.dtype))


def _backward_fake(grad_out, q, k, v, out, lse, grad_lse, cu_seqlens, tokens_per_frame, window, causal, scale):
    return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))


def _setup(ctx, inputs, output):
    q, k, v, cu_seqlens, tokens_per_frame, window, causal, scale = inputs
    ctx.args = (tokens_per_frame, window, causal, scale)
    # the backward takes the softmax delta from out when out is exact enough (fp32/fp64)
    exact_out = output[0] if q.dtype in (torch.float32, torch.float64) else None
    ctx.save_for_backward(q, k, v, exact_out, output[1], cu_seqlens)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(q)
    dq, dk, dv = torch.ops.flowception.local_frame_attention_backward(
        grad_out, q, k, v, out, lse, grad_lse, cu_seqlens, *ctx.args
    )
    return dq, dk, dv, None, None, None, None, None


def _flops(q, k, v, cu_seqlens, tokens_per_frame, window, causal, scale, *args, **kwargs) -> int:
    return local_frame_attention_flops(cu_seqlens, tokens_per_frame, window, q.shape[1], q.shape[2], causal)


def _backward_flops(grad_out, q, k, v, out, lse, grad_lse, cu_seqlens, tokens_per_frame, window, causal, scale,
                    *args, **kwargs) -> int:
    # S recomputed, then dP, dV, dQ, dK: 2.5x the forward's matmuls, as torch counts the backward of
    # scaled_dot_product_attention (so FLOP ratios against SDPA baselines compare like with like)
    return 5 * local_frame_attention_flops(cu_seqlens, tokens_per_frame, window, q.shape[1], q.shape[2], causal) // 2


register("local_frame_attention", fake=_fake, flops=_flops, backward=_backward, setup_context=_setup)
register("local_frame_attention_backward", fake=_backward_fake, flops=_backward_flops)
if compiled_op("local_frame_attention") is not None:
    # The FLOPs depend on the values of cu_seqlens, but register() wraps formulas to receive
    # shapes only: install the formulas unwrapped (raw arguments).
    flop_registry[torch.ops.flowception.local_frame_attention] = _flops
    flop_registry[torch.ops.flowception.local_frame_attention_backward] = _backward_flops
