"""Pure-PyTorch twins of the compiled ops (``<op>_ref``): the definition the kernels are
tested against, and the fallback when the extension is not available.

The noise of ``ragged_insert`` is Philox4x32-10 keyed by ``(seed, output row)`` followed by
Box-Muller exactly as ``csrc/common/philox.h`` and ``csrc/common/gaussian.h``: the same integer
stream, and the same IEEE-rounded operations (float64 for float64 output, float32 for the other
dtypes) in the same order, so the kernels and this reference agree bit for bit. Philox needs unsigned 32x32->64 products; here
they are split into 16-bit halves so every intermediate fits a signed int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "philox4x32_10_ref",
    "gaussian_pair_ref",
    "gaussian_rows_ref",
    "ragged_insert_ref",
    "ragged_strip_ref",
    "check_ragged_args",
    "check_cu_seqlens",
    "cu_seqlens_fine",
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


@dataclass(frozen=True)
class _GaussianConstants:
    """The constants of ``Constants<T>`` in csrc/common/gaussian.h for one compute dtype (given
    as hex literals, so both sides hold the same numbers)."""

    dtype: torch.dtype
    int_dtype: torch.dtype  # same width, for the bit manipulation
    mantissa_bits: int
    bias: int
    sin: tuple[float, ...]
    cos: tuple[float, ...]
    atanh: tuple[float, ...]
    newton_steps: int
    sqrt_fit: tuple[float, ...]
    ln2_hi: float
    ln2_lo: float
    sqrt2: float
    pi_over_2pow31: float


def _hex(*values: str) -> tuple[float, ...]:
    return tuple(float.fromhex(v) for v in values)


_GAUSSIAN_DOUBLE = _GaussianConstants(
    torch.float64, torch.int64, 52, 1023,
    sin=_hex("-0x1.5555555555555p-3", "0x1.1111111111111p-7", "-0x1.a01a01a01a01ap-13", "0x1.71de3a556c734p-19",
             "-0x1.ae64567f544e4p-26", "0x1.6124613a86d09p-33", "-0x1.ae7f3e733b81fp-41", "0x1.952c77030ad4ap-49",
             "-0x1.2f49b46814157p-57"),
    cos=_hex("0x1.5555555555555p-5", "-0x1.6c16c16c16c17p-10", "0x1.a01a01a01a01ap-16", "-0x1.27e4fb7789f5cp-22",
             "0x1.1eed8eff8d898p-29", "-0x1.93974a8c07c9dp-37", "0x1.ae7f3e733b81fp-45", "-0x1.6827863b97d97p-53"),
    atanh=_hex("0x1.5555555555555p-2", "0x1.999999999999ap-3", "0x1.2492492492492p-3", "0x1.c71c71c71c71cp-4",
               "0x1.745d1745d1746p-4", "0x1.3b13b13b13b14p-4", "0x1.1111111111111p-4", "0x1.e1e1e1e1e1e1ep-5",
               "0x1.af286bca1af28p-5", "0x1.8618618618618p-5", "0x1.642c8590b2164p-5"),
    newton_steps=3,
    sqrt_fit=(0.53495, 0.513005, -0.037415),
    ln2_hi=float.fromhex("0x1.62e42fee00000p-1"),
    ln2_lo=float.fromhex("0x1.a39ef35793c76p-33"),
    sqrt2=float.fromhex("0x1.6a09e667f3bcdp+0"),
    pi_over_2pow31=float.fromhex("0x1.921fb54442d18p-30"),
)
_GAUSSIAN_FLOAT = _GaussianConstants(
    torch.float32, torch.int32, 23, 127,
    sin=_hex("-0x1.555556p-3", "0x1.111112p-7", "-0x1.a01a02p-13", "0x1.71de3ap-19", "-0x1.ae6456p-26"),
    cos=_hex("0x1.555556p-5", "-0x1.6c16c2p-10", "0x1.a01a02p-16", "-0x1.27e4fcp-22", "0x1.1eed8ep-29"),
    atanh=_hex("0x1.555556p-2", "0x1.99999ap-3", "0x1.24924ap-3", "0x1.c71c72p-4", "0x1.745d18p-4"),
    newton_steps=2,
    sqrt_fit=_hex("0x1.11e4f8p-1", "0x1.06a898p-1", "-0x1.3280f2p-5"),
    ln2_hi=float.fromhex("0x1.62e4p-1"),
    ln2_lo=float.fromhex("0x1.7f7d1cp-20"),
    sqrt2=float.fromhex("0x1.6a09e6p+0"),
    pi_over_2pow31=float.fromhex("0x1.921fb6p-30"),
)


def _horner(coefficients: tuple[float, ...], z: Tensor) -> Tensor:
    p = torch.full_like(z, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        p = p * z + c
    return p


def _split_exponent(x: Tensor, k: _GaussianConstants) -> tuple[Tensor, Tensor]:
    """x = 2^e m with m in [1, 2) for x > 0: (m, e), read off the bits."""
    bits = x.view(k.int_dtype)
    e = (bits >> k.mantissa_bits) - k.bias
    m = ((bits & ((1 << k.mantissa_bits) - 1)) | (k.bias << k.mantissa_bits)).view(k.dtype)
    return m, e


def _log_uniform(a: Tensor, k: _GaussianConstants) -> Tensor:
    """ln((a + 1) / 2^32) for uint32 words ``a`` (int64 tensor), as ``log_uniform`` in gaussian.h."""
    n = a.to(k.dtype) + 1.0
    m, e = _split_exponent(n, k)
    e = e + (m > k.sqrt2).to(e.dtype)
    num = (a + 1 - (1 << e.long())).to(k.dtype)  # exact integer, then one rounding
    s = num / (n + ((e + k.bias) << k.mantissa_bits).view(k.dtype))
    z, t = s * s, s + s
    ln_m = t + t * (z * _horner(k.atanh, z))
    q = (e - 32).to(k.dtype)
    return q * k.ln2_hi + (q * k.ln2_lo + ln_m)


def _sqrt_newton(v: Tensor, k: _GaussianConstants) -> Tensor:
    """sqrt of ``v >= 0`` as ``sqrt_newton`` in gaussian.h (torch.sqrt is not correctly rounded on
    every backend, so it could not be matched bit for bit)."""
    m, e = _split_exponent(v, k)
    odd = (e & 1) == 1
    m = torch.where(odd, m * 2.0, m)
    e = e - odd.to(e.dtype)
    y = k.sqrt_fit[0] + m * (k.sqrt_fit[1] + m * k.sqrt_fit[2])
    for _ in range(k.newton_steps):
        y = 0.5 * (y + m / y)
    scale = ((e // 2 + k.bias) << k.mantissa_bits).view(k.dtype)
    return torch.where(v == 0.0, 0.0, y * scale)


def _sincos_turn(b: Tensor, k: _GaussianConstants) -> tuple[Tensor, Tensor]:
    """sin and cos of 2π b / 2^32 for uint32 words ``b`` (int64 tensor), as ``sincos_turn``."""
    q = (b + (1 << 29)) >> 30  # nearest quadrant, 0..4
    x = (b - (q << 30)).to(k.dtype) * k.pi_over_2pow31
    z = x * x
    s = x + (x * z) * _horner(k.sin, z)
    c = (1.0 + (-0.5) * z) + (z * z) * _horner(k.cos, z)
    q = q & 3
    sin = torch.where(q == 0, s, torch.where(q == 1, c, torch.where(q == 2, -s, -c)))
    cos = torch.where(q == 0, c, torch.where(q == 1, -s, torch.where(q == 2, -c, s)))
    return sin, cos


def _box_muller(a: Tensor, b: Tensor, k: _GaussianConstants) -> tuple[Tensor, Tensor]:
    r = _sqrt_newton(-2.0 * _log_uniform(a, k), k)
    sin, cos = _sincos_turn(b, k)
    return r * cos, r * sin


def gaussian_pair_ref(a: Tensor, b: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Box-Muller on Philox words ``a``, ``b`` (uint32 values in int64 tensors): ``(r cos θ, r sin θ)``
    with ``r = sqrt(-2 ln((a + 1) / 2^32))`` and ``θ = 2π b / 2^32``, computed in float64 for
    ``dtype=float64`` and in float32 otherwise, bit for bit as the kernels do."""
    k = _GAUSSIAN_DOUBLE if dtype == torch.float64 else _GAUSSIAN_FLOAT
    return _box_muller(a.to(torch.int64), b.to(torch.int64), k)


def gaussian_rows_ref(rows: Tensor, row_numel: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The Gaussians that ``ragged_insert`` writes into output rows ``rows``: ``[len(rows), row_numel]``."""
    rows = rows.to(torch.int64).reshape(-1, 1)
    seed &= (1 << 64) - 1
    n_blocks = (row_numel + 3) // 4
    block = torch.arange(n_blocks, dtype=torch.int64, device=rows.device).reshape(1, -1)
    zeros = torch.zeros((rows.shape[0], n_blocks), dtype=torch.int64, device=rows.device)
    counter = (zeros + (block & _MASK32), zeros + (block >> 32), zeros + (rows & _MASK32), zeros + (rows >> 32))
    x0, x1, x2, x3 = philox4x32_10_ref(counter, (seed & _MASK32, seed >> 32))

    # float64 noise is computed in float64, every other dtype in float32 and rounded from it
    z0, z1 = gaussian_pair_ref(x0, x1, dtype)
    z2, z3 = gaussian_pair_ref(x2, x3, dtype)
    z = torch.stack([z0, z1, z2, z3], dim=-1).reshape(rows.shape[0], 4 * n_blocks)[:, :row_numel]
    return z.to(dtype)


def check_same_device(frames: Tensor, **tensors: Tensor) -> None:
    """ValueError naming the first tensor that is not on the device of ``frames``."""
    for name, t in tensors.items():
        if t.device != frames.device:
            raise ValueError(f"{name} must be on the same device as frames ({frames.device}), got {t.device}")


def check_ragged_args(frames: Tensor, cu_seqlens: Tensor, per_frame: Tensor, per_frame_name: str,
                      per_frame_dtype: torch.dtype, *, check_values: bool = True) -> None:
    """The argument checks of the ragged ops, with the kernels' messages (ValueError/TypeError);
    the values of ``cu_seqlens`` only with ``check_values``."""
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
    if per_frame.dtype != per_frame_dtype:
        raise TypeError(f"{per_frame_name} must be {str(per_frame_dtype).removeprefix('torch.')}, got {per_frame.dtype}")
    if per_frame.dim() != 1 or per_frame.shape[0] != n:
        raise ValueError(f"{per_frame_name} must be a 1-D tensor with one entry per frame ({n}), got shape {tuple(per_frame.shape)}")
    if check_values:
        check_cu_seqlens(cu_seqlens, n)


def cu_seqlens_fine(cu_seqlens: Tensor, num_frames: int) -> Tensor:
    """0-d bool tensor: ``cu_seqlens`` starts at 0, never decreases and ends at ``num_frames`` (no host sync)."""
    return (cu_seqlens[0] == 0) & (cu_seqlens[-1] == num_frames) & (cu_seqlens.diff() >= 0).all()


def check_cu_seqlens(cu_seqlens: Tensor, num_frames: int, fine: bool | None = None) -> None:
    """ValueError unless ``cu_seqlens`` starts at 0, never decreases and ends at ``num_frames``.
    Vectorised: one host sync when the values are fine (none if the caller read ``fine`` off
    :func:`cu_seqlens_fine` with its own values), more only to word an error."""
    if fine is None:
        fine = bool(cu_seqlens_fine(cu_seqlens, num_frames))
    if fine:
        return
    diff = cu_seqlens.diff()
    cu0, cu_last = int(cu_seqlens[0]), int(cu_seqlens[-1])
    if cu0 != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {cu0}")
    if (diff < 0).any():
        b = int((diff < 0).nonzero()[0])
        raise ValueError(f"cu_seqlens must be non-decreasing, but cu_seqlens[{b + 1}] = {int(cu_seqlens[b + 1])} "
                         f"< cu_seqlens[{b}] = {int(cu_seqlens[b])}")
    raise ValueError(f"cu_seqlens must end at the number of frames ({num_frames}), got {cu_last}")


def _video_of_frame(cu_seqlens: Tensor, num_frames: int) -> Tensor:
    """The video of each frame, ``[num_frames]`` (no host sync)."""
    lengths = cu_seqlens.diff()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths,
                                   output_size=num_frames)


def ragged_insert_ref(
    frames: Tensor, cu_seqlens: Tensor, counts: Tensor, total_new: int, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Insert ``counts[j]`` fresh N(0, I) frames right after frame ``j``.

    Returns ``(out [N+M, *S], out_cu_seqlens [B+1], src_pos [N], new_pos [M])``: ``out[src_pos]
    == frames`` and ``out[new_pos]`` are the new frames, in order.
    """
    check_ragged_args(frames, cu_seqlens, counts, "counts", torch.int64, check_values=False)
    n = frames.shape[0]
    # One host sync for every value check; the exact (Python) sum only where int64 could wrap.
    stats = [cu_seqlens_fine(cu_seqlens, n).to(torch.int64)]
    if n:
        stats += [counts.min(), counts.max(), counts.sum()]
    fine, lo, hi, total = torch.stack(stats).tolist() + ([] if n else [0, 0, 0])
    check_cu_seqlens(cu_seqlens, n, fine=bool(fine))
    if total_new < 0:
        raise ValueError(f"total_new must be >= 0, got {total_new}")
    if lo < 0:
        j = int((counts < 0).nonzero()[0])
        raise ValueError(f"counts must be >= 0, but counts[{j}] = {int(counts[j])}")
    if hi > (_INT64_MAX - n) // max(n, 1):
        total = sum(counts.tolist())  # exact: a wrapped int64 sum could match a bogus total_new
        if n + total > _INT64_MAX:
            raise ValueError(f"counts too large: frames.size(0) + counts.sum() overflows int64 ({n} + {total})")
    if total != total_new:
        raise ValueError(f"total_new ({total_new}) must equal counts.sum() ({total})")
    before = torch.cumsum(counts, 0) - counts
    src_pos = torch.arange(n, device=frames.device) + before
    # the k-th new frame after frame j sits at src_pos[j] + k (k = 1..counts[j])
    owner = torch.repeat_interleave(torch.arange(n, device=frames.device), counts, output_size=total_new)
    rank = torch.arange(total_new, device=frames.device) - before[owner]
    new_pos = src_pos[owner] + rank + 1
    per_video = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.int64, device=frames.device)
    per_video.index_add_(0, _video_of_frame(cu_seqlens, n), counts)
    out_cu = cu_seqlens + torch.cat([per_video.new_zeros(1), torch.cumsum(per_video, 0)])
    out = frames.new_empty((n + total_new, *frames.shape[1:])).contiguous()
    out[src_pos] = frames
    row_numel = frames[0].numel() if n else int(torch.Size(frames.shape[1:]).numel())
    noise = gaussian_rows_ref(new_pos, row_numel, seed, frames.dtype)
    out[new_pos] = noise.reshape(total_new, *frames.shape[1:])
    return out, out_cu, src_pos, new_pos


def ragged_strip_ref(frames: Tensor, cu_seqlens: Tensor, keep: Tensor, total_kept: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the frames where ``keep`` is set. Returns ``(out [K, *S], out_cu_seqlens, src_index [K])``."""
    check_ragged_args(frames, cu_seqlens, keep, "keep", torch.bool, check_values=False)
    fine, kept = torch.stack([cu_seqlens_fine(cu_seqlens, frames.shape[0]).to(torch.int64), keep.sum()]).tolist()  # one host sync
    check_cu_seqlens(cu_seqlens, frames.shape[0], fine=bool(fine))
    if total_kept < 0:
        raise ValueError(f"total_kept must be >= 0, got {total_kept}")
    if kept != total_kept:
        raise ValueError(f"total_kept ({total_kept}) must equal keep.sum() ({kept})")
    src_index = torch.nonzero_static(keep, size=total_kept).reshape(-1)  # the size is known: no sync
    per_video = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.int64, device=frames.device)
    per_video.index_add_(0, _video_of_frame(cu_seqlens, frames.shape[0]), keep.to(torch.int64))
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


def check_local_attention_args(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, tokens_per_frame: int, window: int,
                               *, check_values: bool = True) -> None:
    """The argument checks of ``local_frame_attention``, with the kernel's messages (the values
    of ``cu_seqlens``, which cost a host sync, only with ``check_values``)."""
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
    check_ragged_args(frames, cu_seqlens, torch.empty(frames.shape[0], dtype=torch.int64, device=q.device), "unused",
                      torch.int64, check_values=check_values)


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
    upcast: bool = True,
) -> tuple[Tensor, Tensor]:
    """Attention within each video through a dense block mask per video (explicit math in
    float32, float64 for float64 inputs). Returns ``(out [T, H, d], lse [H, T])``; differentiable.

    ``upcast=False`` does the math in the inputs' dtype instead: the low-precision reference of
    flash-attn's tests, the error budget of fused bf16/fp16 kernels (``scaled_dot_product_attention``
    rounds its probabilities to the inputs' dtype, as FlashAttention does)."""
    check_local_attention_args(q, k, v, cu_seqlens, tokens_per_frame, window)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else (torch.float32 if upcast else q.dtype)
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
