"""Pure-PyTorch twins of the compiled ops (``<op>_ref``): the definition the kernels are
tested against, and the fallback when the extension is not available.

The noise of ``ragged_insert`` is Philox4x32-10 keyed by ``(seed, output row)`` followed by
Box-Muller in float64, exactly as ``csrc/common/philox.h``. Philox needs unsigned 32x32->64
products; here they are split into 16-bit halves so every intermediate fits a signed int64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "philox4x32_10_ref",
    "gaussian_rows_ref",
    "ragged_insert_ref",
    "ragged_strip_ref",
    "check_ragged_args",
    "check_same_device",
]

_MASK32 = 0xFFFFFFFF
_INT64_MAX = 2**63 - 1
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _mulhilo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product of uint32 values ``a`` (int64 tensor) and ``m``."""
    p_lo = a * (m & 0xFFFF)  # < 2^48
    p_hi = a * (m >> 16)  # < 2^48
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32_10_ref(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[int, int]) -> tuple[Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 values; returns the four output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def gaussian_rows_ref(rows: Tensor, row_numel: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The Gaussians that ``ragged_insert`` writes into output rows ``rows``: ``[len(rows), row_numel]``."""
    rows = rows.to(torch.int64).reshape(-1, 1)
    seed &= (1 << 64) - 1
    n_blocks = (row_numel + 3) // 4
    block = torch.arange(n_blocks, dtype=torch.int64, device=rows.device).reshape(1, -1)
    zeros = torch.zeros((rows.shape[0], n_blocks), dtype=torch.int64, device=rows.device)
    counter = (zeros + (block & _MASK32), zeros + (block >> 32), zeros + (rows & _MASK32), zeros + (rows >> 32))
    x0, x1, x2, x3 = philox4x32_10_ref(counter, (seed & _MASK32, seed >> 32))

    def box_muller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        u1 = (a.double() + 1.0) * 2.0**-32
        u2 = b.double() * 2.0**-32
        r = torch.sqrt(-2.0 * torch.log(u1))
        theta = 6.283185307179586476925286766559 * u2
        return r * torch.cos(theta), r * torch.sin(theta)

    z0, z1 = box_muller(x0, x1)
    z2, z3 = box_muller(x2, x3)
    z = torch.stack([z0, z1, z2, z3], dim=-1).reshape(rows.shape[0], 4 * n_blocks)[:, :row_numel]
    if dtype in (torch.float16, torch.bfloat16):  # round through float32, as the kernels do
        z = z.float()
    return z.to(dtype)


def check_same_device(frames: Tensor, **tensors: Tensor) -> None:
    """ValueError naming the first tensor that is not on the device of ``frames``."""
    for name, t in tensors.items():
        if t.device != frames.device:
            raise ValueError(f"{name} must be on the same device as frames ({frames.device}), got {t.device}")


def check_ragged_args(frames: Tensor, cu_seqlens: Tensor, per_frame: Tensor, per_frame_name: str, per_frame_dtype: torch.dtype) -> None:
    """The argument checks of the ragged ops, with the kernels' messages (ValueError/TypeError)."""
    if not isinstance(frames, Tensor) or frames.dim() < 1:
        raise ValueError("frames must have a leading frame dimension, got a 0-d tensor")
    if frames.dtype not in _FLOATING:
        raise TypeError(f"frames must be float32, float64, float16 or bfloat16, got {frames.dtype}")
    if cu_seqlens.dtype != torch.int64:
        raise TypeError(f"cu_seqlens must be int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be a 1-D tensor [B+1] with at least one entry, got shape {tuple(cu_seqlens.shape)}")
    check_same_device(frames, cu_seqlens=cu_seqlens, **{per_frame_name: per_frame})
    n = frames.shape[0]
    cu = cu_seqlens.tolist()
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {cu[0]}")
    for b in range(len(cu) - 1):
        if cu[b + 1] < cu[b]:
            raise ValueError(f"cu_seqlens must be non-decreasing, but cu_seqlens[{b + 1}] = {cu[b + 1]} < cu_seqlens[{b}] = {cu[b]}")
    if cu[-1] != n:
        raise ValueError(f"cu_seqlens must end at the number of frames ({n}), got {cu[-1]}")
    if per_frame.dtype != per_frame_dtype:
        raise TypeError(f"{per_frame_name} must be {str(per_frame_dtype).removeprefix('torch.')}, got {per_frame.dtype}")
    if per_frame.dim() != 1 or per_frame.shape[0] != n:
        raise ValueError(f"{per_frame_name} must be a 1-D tensor with one entry per frame ({n}), got shape {tuple(per_frame.shape)}")


def _video_of_frame(cu_seqlens: Tensor) -> Tensor:
    lengths = cu_seqlens.diff()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)


def ragged_insert_ref(
    frames: Tensor, cu_seqlens: Tensor, counts: Tensor, total_new: int, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Insert ``counts[j]`` fresh N(0, I) frames right after frame ``j``.

    Returns ``(out [N+M, *S], out_cu_seqlens [B+1], src_pos [N], new_pos [M])``: ``out[src_pos]
    == frames`` and ``out[new_pos]`` are the new frames, in order.
    """
    check_ragged_args(frames, cu_seqlens, counts, "counts", torch.int64)
    if total_new < 0:
        raise ValueError(f"total_new must be >= 0, got {total_new}")
    if counts.numel() and int(counts.min()) < 0:
        j = int((counts < 0).nonzero()[0])
        raise ValueError(f"counts must be >= 0, but counts[{j}] = {int(counts[j])}")
    n = frames.shape[0]
    total = sum(counts.tolist())  # exact: a wrapped int64 sum could match a bogus total_new
    if n + total > _INT64_MAX:
        raise ValueError(f"counts too large: frames.size(0) + counts.sum() overflows int64 ({n} + {total})")
    if total != total_new:
        raise ValueError(f"total_new ({total_new}) must equal counts.sum() ({total})")
    before = torch.cumsum(counts, 0) - counts
    src_pos = torch.arange(n, device=frames.device) + before
    # the k-th new frame after frame j sits at src_pos[j] + k (k = 1..counts[j])
    owner = torch.repeat_interleave(torch.arange(n, device=frames.device), counts)
    rank = torch.arange(total_new, device=frames.device) - torch.repeat_interleave(before, counts)
    new_pos = src_pos[owner] + rank + 1
    per_video = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.int64, device=frames.device)
    per_video.index_add_(0, _video_of_frame(cu_seqlens), counts)
    out_cu = cu_seqlens + torch.cat([per_video.new_zeros(1), torch.cumsum(per_video, 0)])
    out = frames.new_empty((n + total_new, *frames.shape[1:])).contiguous()
    out[src_pos] = frames
    row_numel = frames[0].numel() if n else int(torch.Size(frames.shape[1:]).numel())
    noise = gaussian_rows_ref(new_pos, row_numel, seed, frames.dtype)
    out[new_pos] = noise.reshape(total_new, *frames.shape[1:])
    return out, out_cu, src_pos, new_pos


def ragged_strip_ref(frames: Tensor, cu_seqlens: Tensor, keep: Tensor, total_kept: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the frames where ``keep`` is set. Returns ``(out [K, *S], out_cu_seqlens, src_index [K])``."""
    check_ragged_args(frames, cu_seqlens, keep, "keep", torch.bool)
    if total_kept < 0:
        raise ValueError(f"total_kept must be >= 0, got {total_kept}")
    if int(keep.sum()) != total_kept:
        raise ValueError(f"total_kept ({total_kept}) must equal keep.sum() ({int(keep.sum())})")
    src_index = keep.nonzero().reshape(-1)
    per_video = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.int64, device=frames.device)
    per_video.index_add_(0, _video_of_frame(cu_seqlens), keep.to(torch.int64))
    out_cu = torch.cat([per_video.new_zeros(1), torch.cumsum(per_video, 0)])
    return frames[src_index].contiguous(), out_cu, src_index


# ---- AdaLN -------------------------------------------------------------------------------
# Per-frame adaptive LayerNorm on packed tokens x [T, D]: token t belongs to frame
# t // tokens_per_frame, and per-frame vectors (shift, scale, gate) are [F, D] with
# F = T / tokens_per_frame. The references gather the per-frame rows (`scale[frame]`).

__all__ += ["check_adaln_args", "adaln_modulate_ref", "gated_residual_ref", "gated_residual_adaln_ref"]


def check_adaln_args(
    x: Tensor,
    tokens_per_frame: int,
    per_token: dict[str, Tensor] | None = None,
    per_frame: dict[str, Tensor] | None = None,
    x_name: str = "x",
) -> int:
    """The argument checks of the AdaLN ops, with the kernels' messages; returns the frame count F.

    ``x`` (called ``x_name``) must be floating ``[T, D]`` with T a multiple of
    ``tokens_per_frame``; ``per_token`` tensors ``[T, D]`` and ``per_frame`` tensors ``[F, D]``,
    all on x's device with x's dtype.
    """
    if x.dim() != 2:
        raise ValueError(f"{x_name} must be a 2-D tensor [T, D] of tokens, got shape {list(x.shape)}")
    if x.dtype not in _FLOATING:
        raise TypeError(f"{x_name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
    num_tokens, dim = x.shape
    if num_tokens % tokens_per_frame != 0:
        raise ValueError(
            f"{x_name} has T = {num_tokens} tokens, which is not a multiple of tokens_per_frame = {tokens_per_frame}"
        )
    num_frames = num_tokens // tokens_per_frame
    for tensors, rows, meaning in (
        (per_token or {}, num_tokens, "one per token"),
        (per_frame or {}, num_frames, "one per frame: T / tokens_per_frame"),
    ):
        for name, t in tensors.items():
            if t.device != x.device:
                raise ValueError(f"{name} must be on the same device as {x_name} ({x.device}), got {t.device}")
            if t.dtype != x.dtype:
                raise TypeError(f"{name} must have the dtype of {x_name} ({x.dtype}), got {t.dtype}")
            if t.dim() != 2 or t.shape[1] != dim:
                raise ValueError(
                    f"{name} must be a 2-D tensor with D = {dim} columns (as {x_name}), got shape {list(t.shape)}"
                )
            if t.shape[0] != rows:
                raise ValueError(f"{name} must have {rows} rows ({meaning}), got {t.shape[0]}")
    return num_frames


def _frame_of_token(x: Tensor, tokens_per_frame: int) -> Tensor:
    return torch.arange(x.shape[0], device=x.device) // tokens_per_frame


def adaln_modulate_ref(x: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float = 1e-6) -> Tensor:
    """``LayerNorm(x) * (1 + scale[frame]) + shift[frame]`` (no affine), frame = token // tokens_per_frame."""
    check_adaln_args(x, tokens_per_frame, per_frame={"shift": shift, "scale": scale})
    frame = _frame_of_token(x, tokens_per_frame)
    return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale[frame]) + shift[frame]


def gated_residual_ref(x: Tensor, h: Tensor, gate: Tensor, tokens_per_frame: int) -> Tensor:
    """``x + gate[frame] * h``, frame = token // tokens_per_frame."""
    check_adaln_args(x, tokens_per_frame, per_token={"h": h}, per_frame={"gate": gate})
    return x + gate[_frame_of_token(x, tokens_per_frame)] * h


def gated_residual_adaln_ref(
    x: Tensor, h: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """``x_new = gated_residual(x, h, gate)`` and ``adaln_modulate(x_new, shift, scale)``: ``(x_new, y)``."""
    x_new = gated_residual_ref(x, h, gate, tokens_per_frame)
    return x_new, adaln_modulate_ref(x_new, shift, scale, tokens_per_frame, eps)
# ---- Local frame attention ---------------------------------------------------------------

__all__ += ["local_frame_mask", "local_frame_attention_ref", "check_local_attention_args"]


def local_frame_mask(
    num_frames: int, tokens_per_frame: int, window: int, causal: bool = False, device: torch.device | str | None = None
) -> Tensor:
    """Dense bool mask ``[n*P, n*P]`` of one video (True = attend): frame ``f`` sees frame ``g``
    when ``|f - g| <= window`` (``window = -1``: always) and, if ``causal``, ``g <= f``."""
    f = torch.arange(num_frames, device=device)
    diff = f.view(-1, 1) - f.view(1, -1)  # f - g
    allowed = torch.ones_like(diff, dtype=torch.bool) if window < 0 else diff.abs() <= window
    if causal:
        allowed &= diff >= 0
    return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def check_local_attention_args(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, tokens_per_frame: int, window: int) -> None:
    """The argument checks of ``local_frame_attention``, with the kernel's messages."""
    if q.dim() != 3:
        raise ValueError(f"q must be a 3-D tensor [T, H, d], got shape {tuple(q.shape)}")
    if q.dtype not in _FLOATING:
        raise TypeError(f"q must be float32, float64, float16 or bfloat16, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    if not 1 <= q.shape[2] <= 256:
        raise ValueError(f"head dim q.size(2) must be between 1 and 256, got {q.shape[2]}")
    if tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
    if window < -1:
        raise ValueError(f"window must be >= 0, or -1 for whole videos, got {window}")
    if q.shape[0] % tokens_per_frame:
        raise ValueError(
            f"the number of tokens q.size(0) = {q.shape[0]} must be a multiple of tokens_per_frame = {tokens_per_frame}"
        )
    frames = q.new_empty((q.shape[0] // tokens_per_frame, 0))
    check_ragged_args(frames, cu_seqlens, torch.empty(frames.shape[0], dtype=torch.int64, device=q.device), "unused", torch.int64)


def local_frame_attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    tokens_per_frame: int,
    window: int = -1,
    scale: float | None = None,
    *,
    causal: bool = False,
) -> tuple[Tensor, Tensor]:
    """Attention within each video through a dense block mask per video (explicit math in
    float32, float64 for float64 inputs). Returns ``(out [T, H, d], lse [H, T])``; differentiable."""
    check_local_attention_args(q, k, v, cu_seqlens, tokens_per_frame, window)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    outs, lses = [], []
    cu = cu_seqlens.tolist()
    for b in range(len(cu) - 1):
        lo, hi = cu[b] * tokens_per_frame, cu[b + 1] * tokens_per_frame
        qb, kb, vb = (t[lo:hi].transpose(0, 1).to(acc) for t in (q, k, v))  # (H, n*P, d)
        mask = local_frame_mask(cu[b + 1] - cu[b], tokens_per_frame, window, causal, q.device)
        scores = (qb @ kb.transpose(1, 2) * scale).masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # (H, n*P)
        outs.append((torch.exp(scores - lse.unsqueeze(-1)) @ vb).transpose(0, 1))
        lses.append(lse)
    if not outs:
        return torch.empty_like(q), q.new_empty((q.shape[1], 0), dtype=acc)
    return torch.cat(outs).to(q.dtype), torch.cat(lses, dim=1)
