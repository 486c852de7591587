"""Ragged frame insertion and compaction on packed batches (``[N, *S]`` + ``cu_seqlens``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import as_op_seed, compiled_op, draw_seed, register
from .backend import select_backend
from .reference import check_same_device, ragged_insert_ref, ragged_strip_ref

__all__ = ["ragged_insert", "ragged_strip", "ragged_insert_bytes", "ragged_strip_bytes"]


def ragged_insert(
    frames: Tensor,
    cu_seqlens: Tensor,
    counts: Tensor,
    total_new: int | None = None,
    seed: int | None = None,
    *,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Insert ``counts[j]`` fresh N(0, I) frames right after frame ``j`` of a packed batch.

    Args:
        frames: ``[N, *S]`` packed frames (float32/64, float16, bfloat16).
        cu_seqlens: int64 ``[B+1]``, exclusive prefix sums of the video lengths.
        counts: int64 ``[N]``, new frames to insert to the right of each frame (>= 0).
        total_new: ``counts.sum()``; pass it to avoid a device sync (it fixes the output size).
        seed: noise seed, any int in ``[-2**63, 2**64)`` (taken modulo 2^64); the noise of output
            row ``r`` depends only on ``(seed, r)``, on every device and backend. Drawn from
            ``generator`` (on any device) when omitted.
        backend: ``"kernels"``, ``"stock"`` or ``None`` (the device's default; see
            :func:`flowception_ext.ops.select_backend`).

    Returns:
        ``(out [N+M, *S], out_cu_seqlens [B+1], src_pos [N], new_pos [M])`` with
        ``out[src_pos] == frames``; rows ``new_pos`` hold the new noise frames. Move per-frame
        vectors with the same positions. Differentiable w.r.t. the copied rows.
    """
    if total_new is None:
        total_new = int(counts.sum())
    seed = draw_seed(generator) if seed is None else as_op_seed(seed)
    if select_backend(frames.device, backend) == "stock":  # the reference is vectorised, one host sync
        return ragged_insert_ref(frames, cu_seqlens, counts, total_new, seed)
    return compiled_op("ragged_insert")(frames, cu_seqlens, counts, total_new, seed)


def ragged_strip(
    frames: Tensor, cu_seqlens: Tensor, keep: Tensor, total_kept: int | None = None, *, backend: str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the frames of a packed batch where ``keep`` (bool ``[N]``) is set, in order.

    Returns ``(out [K, *S], out_cu_seqlens [B+1], src_index [K])`` with ``out == frames[src_index]``.
    Differentiable (the backward scatters into the kept rows). Pass ``total_kept = keep.sum()``
    to avoid a device sync. ``backend`` as in :func:`ragged_insert`.
    """
    if total_kept is None:
        total_kept = int(keep.sum())
    if select_backend(frames.device, backend) == "stock":
        return ragged_strip_ref(frames, cu_seqlens, keep, total_kept)
    return compiled_op("ragged_strip")(frames, cu_seqlens, keep, total_kept)


def ragged_insert_bytes(frames_shape: torch.Size, total_new: int, element_size: int) -> int:
    """Bytes the op must move: read N rows, write N + M rows."""
    row = int(torch.Size(frames_shape[1:]).numel()) * element_size
    return row * (2 * frames_shape[0] + total_new)


def ragged_strip_bytes(frames_shape: torch.Size, total_kept: int, element_size: int) -> int:
    """Bytes the op must move: read and write K rows."""
    return 2 * int(torch.Size(frames_shape[1:]).numel()) * element_size * total_kept


# ---- fake kernels, autograd, flop formulas -------------------------------------------------


# The fake kernels also run when one argument is on the "meta" device (Meta outranks CPU in
# dispatch), so they repeat the kernels' device check.
def _insert_fake(frames, cu_seqlens, counts, total_new, seed):
    check_same_device(frames, cu_seqlens=cu_seqlens, counts=counts)
    n = frames.shape[0]
    out = frames.new_empty((n + total_new, *frames.shape[1:]))
    return out, cu_seqlens.new_empty(cu_seqlens.shape), counts.new_empty(n), counts.new_empty(total_new)


def _insert_setup(ctx, inputs, output):
    ctx.save_for_backward(output[2])


def _insert_backward(ctx, grad_out, _g_cu, _g_src, _g_new):
    (src_pos,) = ctx.saved_tensors
    return grad_out.index_select(0, src_pos), None, None, None, None


def _strip_fake(frames, cu_seqlens, keep, total_kept):
    check_same_device(frames, cu_seqlens=cu_seqlens, keep=keep)
    out = frames.new_empty((total_kept, *frames.shape[1:]))
    return out, cu_seqlens.new_empty(cu_seqlens.shape), cu_seqlens.new_empty(total_kept)


def _strip_setup(ctx, inputs, output):
    ctx.frames_shape = inputs[0].shape
    ctx.save_for_backward(output[2])


def _strip_backward(ctx, grad_out, _g_cu, _g_src):
    (src_index,) = ctx.saved_tensors
    grad = grad_out.new_zeros(ctx.frames_shape).index_copy(0, src_index, grad_out)
    return grad, None, None, None


def _no_flops(*args, **kwargs) -> int:  # pure data movement (noise generation is not counted)
    return 0


register("ragged_insert", fake=_insert_fake, flops=_no_flops, backward=_insert_backward, setup_context=_insert_setup)
register("ragged_strip", fake=_strip_fake, flops=_no_flops, backward=_strip_backward, setup_context=_strip_setup)
