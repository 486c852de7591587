"""The stock PyTorch backend of the ops: stock kernels only, vectorised over videos.

What runs the ops on devices without a validated kernel of ours (CUDA by default, see
:mod:`flowception_ext.ops.backend`), and anywhere under ``use_backend("stock")``. Each function
has its op's signature and meaning; autograd is PyTorch's own. Inside the model nothing here
syncs with the host once ``max_frames`` is given to the attention.

Local frame attention groups the queries by frame and gathers each frame's window of keys and
values, so ``scaled_dot_product_attention`` (fused kernels on GPUs) sees one small dense block per
frame instead of a ``T x T`` mask. Measured on the CPU against the alternatives in
``bench/RESULTS.md``: faster than FlexAttention (which also needs ``torch.compile`` and has no CPU
backward in torch 2.13) and than SDPA with a dense mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import check_adaln_args, check_cu_seqlens, check_local_attention_args, cu_seqlens_fine

__all__ = ["adaln_modulate_stock", "gated_residual_stock", "gated_residual_adaln_stock", "local_frame_attention_stock"]

_HALF = (torch.float16, torch.bfloat16)


# ---- AdaLN: per-frame vectors broadcast over each frame's rows (x viewed as [F, P, D]) -----------


def _modulate(x: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float) -> Tensor:
    # bf16/fp16 compute in fp32 and round once, as the kernels do
    acc = torch.float32 if x.dtype in _HALF else x.dtype
    y = F.layer_norm(x.to(acc), x.shape[-1:], eps=eps).unflatten(0, (-1, tokens_per_frame))
    y = y * (1 + scale.to(acc)[:, None]) + shift.to(acc)[:, None]
    return y.flatten(0, 1).to(x.dtype)


def _gated(x: Tensor, h: Tensor, gate: Tensor, tokens_per_frame: int) -> Tensor:
    acc = torch.float32 if x.dtype in _HALF else x.dtype
    out = x.to(acc).unflatten(0, (-1, tokens_per_frame)) + gate.to(acc)[:, None] * h.to(acc).unflatten(0, (-1, tokens_per_frame))
    return out.flatten(0, 1).to(x.dtype)


def adaln_modulate_stock(x: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float = 1e-6) -> Tensor:
    """``LayerNorm(x) * (1 + scale[frame]) + shift[frame]`` (see :func:`flowception_ext.ops.adaln_modulate`)."""
    check_adaln_args(x, tokens_per_frame, per_frame={"shift": shift, "scale": scale})
    return _modulate(x, shift, scale, tokens_per_frame, eps)


def gated_residual_stock(x: Tensor, h: Tensor, gate: Tensor, tokens_per_frame: int) -> Tensor:
    """``x + gate[frame] * h`` (see :func:`flowception_ext.ops.gated_residual`)."""
    check_adaln_args(x, tokens_per_frame, per_token={"h": h}, per_frame={"gate": gate})
    return _gated(x, h, gate, tokens_per_frame)


def gated_residual_adaln_stock(
    x: Tensor, h: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """``(x_new, y)``: the gated residual, then the modulated norm of ``x_new``."""
    check_adaln_args(x, tokens_per_frame, per_token={"h": h}, per_frame={"gate": gate, "shift": shift, "scale": scale})
    x_new = _gated(x, h, gate, tokens_per_frame)
    return x_new, _modulate(x_new, shift, scale, tokens_per_frame, eps)


# ---- local frame attention ----------------------------------------------------------------------


class _GatherFrames(torch.autograd.Function):
    """``t[idx]`` for frames ``t [F, ...]``; the backward sums the copies' gradients in fp32 (at
    least), as the kernels do: a key frame sits in up to ``2 window + 1`` windows, and summing
    their bf16 gradients in bf16 would round at every add."""

    @staticmethod
    def forward(ctx, t: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dtype = t.shape, t.dtype
        return t[idx]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        acc = torch.float32 if ctx.dtype in _HALF else ctx.dtype
        out = grad.new_zeros(ctx.shape, dtype=acc)
        out.index_add_(0, idx.reshape(-1), grad.reshape(-1, *ctx.shape[1:]).to(acc))
        return out.to(ctx.dtype), None


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, return_lse: bool) -> tuple[Tensor, Tensor | None]:
    """Attention of ``q [N, H, Lq, d]`` to ``k, v [N, H, Lk, d]`` where ``mask`` (broadcast to
    ``[N, 1, Lq, Lk]``) allows; every row must allow at least one key. Returns ``(out, lse [N, H, Lq])``."""
    if not return_lse:  # SDPA's fused kernels; they do not return the log-sum-exp
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q.to(acc) @ k.to(acc).transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ v.to(acc)
    return out.to(q.dtype), lse


def local_frame_attention_stock(
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
) -> tuple[Tensor, Tensor | None]:
    """Local frame attention through stock kernels (see :func:`flowception_ext.ops.local_frame_attention`).

    ``max_frames`` (the longest video, in frames) fixes the layouts; without it one host sync
    reads it from ``cu_seqlens``, with the value check of ``cu_seqlens``. With it, the values are
    checked on the CPU only (elsewhere a check would cost a host sync per layer).
    """
    check_local_attention_args(q, k, v, cu_seqlens, tokens_per_frame, window, check_values=False)
    P, (T, _, d) = tokens_per_frame, q.shape
    num_frames = T // P
    lengths = cu_seqlens.diff()
    if max_frames is None:  # one host sync for the check and the longest video
        longest = F.pad(lengths, (0, 1)).max()  # 0 for an empty batch
        fine, max_frames = torch.stack([cu_seqlens_fine(cu_seqlens, num_frames).to(torch.int64), longest]).tolist()
        check_cu_seqlens(cu_seqlens, num_frames, fine=bool(fine))
    elif cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():  # a traced check would break the graph
        check_cu_seqlens(cu_seqlens, num_frames)
    scale = d**-0.5 if scale is None else scale
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if num_frames == 0:  # empty, but in the graph of q, k and v as the kernels' outputs are
        out = q + k + v
        return out, (out.sum(-1).t().to(lse_dtype) if return_lse else None)
    video = torch.repeat_interleave(torch.arange(lengths.numel(), device=q.device), lengths, output_size=num_frames)
    start, end = cu_seqlens[:-1][video], cu_seqlens[1:][video]  # [F] the frames of each frame's video
    frame = torch.arange(num_frames, device=q.device)
    left = max_frames - 1 if window < 0 else min(window, max_frames - 1)
    right = 0 if causal else left
    qf, kf, vf = (t.unflatten(0, (num_frames, P)) for t in (q, k, v))  # [F, P, H, d]

    if (left + right + 1) * num_frames <= max_frames * max_frames * lengths.numel():
        # Frames as a batch: the P queries of frame f against the keys of frames f-left..f+right.
        idx = frame[:, None] + torch.arange(-left, right + 1, device=q.device)  # [F, S]
        valid = (idx >= start[:, None]) & (idx < end[:, None])
        idx = torch.where(valid, idx, frame[:, None])  # masked slots read the frame itself

        def windows(t: Tensor) -> Tensor:  # [F, P, H, d] -> [F, H, S*P, d]
            return _GatherFrames.apply(t, idx).flatten(1, 2).transpose(1, 2)

        mask = valid.repeat_interleave(P, dim=1)[:, None, None, :]  # [F, 1, 1, S*P]
        out, lse = _attend(qf.transpose(1, 2), windows(kf), windows(vf), mask, scale, return_lse)
        out = out.transpose(1, 2).flatten(0, 1)  # [T, H, d]
        lse = None if lse is None else lse.permute(1, 0, 2).flatten(1)  # [H, T]
        return out, lse

    # Videos as a batch, padded to max_frames: every query of a video against all its keys.
    L = max_frames
    slot = torch.arange(L, device=q.device)
    idx = cu_seqlens[:-1, None] + slot  # [B, L]
    valid = slot < lengths[:, None]
    idx = torch.where(valid, idx, 0).clamp(max=num_frames - 1)  # padding slots read frame 0
    allowed = torch.ones(L, L, dtype=torch.bool, device=q.device)
    if window >= 0:
        allowed = (slot[:, None] - slot[None, :]).abs() <= window
    if causal:
        allowed = allowed & (slot[:, None] >= slot[None, :])
    # Padding query slots attend to every slot, so no row is empty (their outputs are dropped).
    pair = (valid[:, None, :] & allowed) | ~valid[:, :, None]  # [B, L(query), L(key)]
    mask = pair.repeat_interleave(P, dim=1).repeat_interleave(P, dim=2)[:, None]  # [B, 1, L*P, L*P]

    def videos(t: Tensor) -> Tensor:  # [F, P, H, d] -> [B, H, L*P, d]
        return _GatherFrames.apply(t, idx).flatten(1, 2).transpose(1, 2)

    out, lse = _attend(videos(qf), videos(kf), videos(vf), mask, scale, return_lse)
    real = video * L + (frame - start)  # each real frame's slot in the [B*L] padded frames
    out = out.transpose(1, 2).unflatten(1, (L, P)).flatten(0, 1)[real].flatten(0, 1)  # [T, H, d]
    if lse is not None:
        lse = lse.unflatten(2, (L, P)).permute(1, 0, 2, 3).flatten(1, 2)[:, real].flatten(1)  # [H, T]
    return out, lse
