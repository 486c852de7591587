"""Per-frame AdaLN on packed tokens: modulated LayerNorm and gated residual (docs/algorithm.md §5).

Tokens are rows of ``x [T, D]``; token ``t`` belongs to frame ``t // tokens_per_frame`` and
per-frame vectors (``shift``, ``scale``, ``gate``) are ``[F, D]`` with ``F = T / tokens_per_frame``.
Each op reads and writes every activation once; the backward sums the per-frame gradients
over each frame's (contiguous) rows without atomics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import compiled_op, register
from .backend import select_backend
from .reference import check_adaln_args
from .stock import adaln_modulate_stock, gated_residual_adaln_stock, gated_residual_stock

__all__ = [
    "adaln_modulate",
    "gated_residual",
    "gated_residual_adaln",
    "adaln_modulate_bytes",
    "gated_residual_bytes",
    "gated_residual_adaln_bytes",
]


def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float = 1e-6, *,
                   backend: str | None = None) -> Tensor:
    """``LayerNorm(x) * (1 + scale[frame]) + shift[frame]``, LayerNorm without affine.

    Args:
        x: ``[T, D]`` tokens (float32/64, float16, bfloat16), T a multiple of ``tokens_per_frame``.
        shift, scale: ``[F, D]``, one row per frame, dtype and device of ``x``.
        tokens_per_frame: tokens of each frame (consecutive rows of ``x``).
        eps: added to the variance.
        backend: ``"kernels"``, ``"stock"`` or ``None`` (the device's default; see
            :func:`flowception_ext.ops.select_backend`). The same keyword on every op.

    Returns:
        ``y [T, D]``. Differentiable w.r.t. ``x``, ``shift`` and ``scale``; bf16/fp16 compute in fp32.
    """
    if select_backend(x.device, backend) == "stock":
        return adaln_modulate_stock(x, shift, scale, tokens_per_frame, eps)
    return compiled_op("adaln_modulate")(x, shift, scale, tokens_per_frame, eps)[0]


def gated_residual(x: Tensor, h: Tensor, gate: Tensor, tokens_per_frame: int, *, backend: str | None = None) -> Tensor:
    """``x + gate[frame] * h`` for the residual stream ``x [T, D]``, branch output ``h [T, D]``, ``gate [F, D]``."""
    if select_backend(x.device, backend) == "stock":
        return gated_residual_stock(x, h, gate, tokens_per_frame)
    return compiled_op("gated_residual")(x, h, gate, tokens_per_frame)


def gated_residual_adaln(
    x: Tensor, h: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, tokens_per_frame: int, eps: float = 1e-6, *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """A block's residual add followed by the next modulated norm, in one pass.

    Returns ``(x_new, y)`` with ``x_new = gated_residual(x, h, gate)`` (the new residual stream)
    and ``y = adaln_modulate(x_new, shift, scale)``; both differentiable.
    """
    if select_backend(x.device, backend) == "stock":
        return gated_residual_adaln_stock(x, h, gate, shift, scale, tokens_per_frame, eps)
    x_new, y, _, _ = compiled_op("gated_residual_adaln")(x, h, gate, shift, scale, tokens_per_frame, eps)
    return x_new, y


# ---- bytes each op must move (for bandwidth figures) ---------------------------------------


def _stats_bytes(num_tokens: int, element_size: int) -> int:
    return 2 * num_tokens * (8 if element_size == 8 else 4)  # mean and rstd in the accumulation type


def adaln_modulate_bytes(num_tokens: int, dim: int, num_frames: int, element_size: int, backward: bool = False) -> int:
    """Forward: read x, shift, scale; write y, mean, rstd. Backward: read grad_y, x, scale, mean,
    rstd; write dx, dshift, dscale."""
    token_rows, frame_rows = (3, 3) if backward else (2, 2)
    return (token_rows * num_tokens + frame_rows * num_frames) * dim * element_size + _stats_bytes(num_tokens, element_size)


def gated_residual_bytes(num_tokens: int, dim: int, num_frames: int, element_size: int, backward: bool = False) -> int:
    """Forward: read x, h, gate; write the sum. Backward: read grad, h, gate; write dh, dgate."""
    frame_rows = 2 if backward else 1
    return (3 * num_tokens + frame_rows * num_frames) * dim * element_size


def gated_residual_adaln_bytes(
    num_tokens: int, dim: int, num_frames: int, element_size: int, backward: bool = False
) -> int:
    """Forward: read x, h, gate, shift, scale; write x_new, y, mean, rstd. Backward: read the two
    gradients, x_new, h, gate, scale, mean, rstd; write dx, dh, dgate, dshift, dscale."""
    token_rows, frame_rows = (6, 5) if backward else (4, 3)
    return (token_rows * num_tokens + frame_rows * num_frames) * dim * element_size + _stats_bytes(num_tokens, element_size)


# ---- fake kernels, autograd, flop formulas -------------------------------------------------


def _stats_like(x: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _check_stats(x: Tensor, mean: Tensor, rstd: Tensor) -> None:
    expected = _stats_like(x)
    for name, t in (("mean", mean), ("rstd", rstd)):
        if t.device != x.device:
            raise ValueError(f"{name} must be on the same device as x ({x.device}), got {t.device}")
        if t.dtype != expected.dtype:
            raise TypeError(f"{name} must be {expected.dtype}, got {t.dtype}")
        if t.shape != expected.shape:
            raise ValueError(f"{name} must be a 1-D tensor with one entry per token ({x.shape[0]}), got shape {list(t.shape)}")


def _modulate_fake(x, shift, scale, tokens_per_frame, eps):
    check_adaln_args(x, tokens_per_frame, per_frame={"shift": shift, "scale": scale})
    return x.new_empty(x.shape), _stats_like(x), _stats_like(x)


def _modulate_backward_fake(grad_y, x, scale, mean, rstd, tokens_per_frame):
    check_adaln_args(x, tokens_per_frame, per_token={"grad_y": grad_y}, per_frame={"scale": scale})
    _check_stats(x, mean, rstd)
    return x.new_empty(x.shape), scale.new_empty(scale.shape), scale.new_empty(scale.shape)


def _modulate_setup(ctx, inputs, output):
    x, _shift, scale, ctx.tokens_per_frame, _eps = inputs
    _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, scale, mean, rstd)


def _modulate_backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, scale, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale = torch.ops.flowception.adaln_modulate_backward(grad_y, x, scale, mean, rstd, ctx.tokens_per_frame)
    return dx, dshift, dscale, None, None


def _gated_fake(x, h, gate, tokens_per_frame):
    check_adaln_args(x, tokens_per_frame, per_token={"h": h}, per_frame={"gate": gate})
    return x.new_empty(x.shape)


def _gated_backward_fake(grad_out, h, gate, tokens_per_frame):
    check_adaln_args(h, tokens_per_frame, per_token={"grad_out": grad_out}, per_frame={"gate": gate}, x_name="h")
    return h.new_empty(h.shape), gate.new_empty(gate.shape)


def _gated_setup(ctx, inputs, output):
    _x, h, gate, ctx.tokens_per_frame = inputs
    ctx.save_for_backward(h, gate)


def _gated_backward(ctx, grad_out):
    h, gate = ctx.saved_tensors
    dh, dgate = torch.ops.flowception.gated_residual_backward(grad_out, h, gate, ctx.tokens_per_frame)
    return grad_out, dh, dgate, None


def _fused_fake(x, h, gate, shift, scale, tokens_per_frame, eps):
    check_adaln_args(x, tokens_per_frame, per_token={"h": h}, per_frame={"gate": gate, "shift": shift, "scale": scale})
    return x.new_empty(x.shape), x.new_empty(x.shape), _stats_like(x), _stats_like(x)


def _fused_backward_fake(grad_x_new, grad_y, x_new, h, gate, scale, mean, rstd, tokens_per_frame):
    check_adaln_args(
        x_new,
        tokens_per_frame,
        per_token={"grad_y": grad_y, "grad_x_new": grad_x_new, "h": h},
        per_frame={"scale": scale, "gate": gate},
    )
    _check_stats(x_new, mean, rstd)
    per_frame = [gate.new_empty(gate.shape) for _ in range(3)]
    return x_new.new_empty(x_new.shape), x_new.new_empty(x_new.shape), *per_frame


def _fused_setup(ctx, inputs, output):
    _x, h, gate, _shift, scale, ctx.tokens_per_frame, _eps = inputs
    x_new, _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x_new, h, gate, scale, mean, rstd)


def _fused_backward(ctx, grad_x_new, grad_y, _grad_mean, _grad_rstd):
    x_new, h, gate, scale, mean, rstd = ctx.saved_tensors
    dx, dh, dgate, dshift, dscale = torch.ops.flowception.gated_residual_adaln_backward(
        grad_x_new, grad_y, x_new, h, gate, scale, mean, rstd, ctx.tokens_per_frame
    )
    return dx, dh, dgate, dshift, dscale, None, None


def _flops_per_element(n: int):
    """Flop formula: ``n`` flops per element of the op's first ([T, D]) argument."""

    def formula(first_shape, *args, **kwargs) -> int:
        return n * first_shape[0] * first_shape[1]

    return formula


# Flops per element (multiply-adds count 2): forward norm = statistics 3 + normalise 2 + modulate 3;
# its backward = x̂ and ĝ 4 + two row sums 4 + dx 4 + dshift 1 + dscale 2; the residual x + gate h
# = 2, its backward = dh 1 + dgate 2. The fused op is the sum (+1 in its backward: adding the
# residual stream's gradient to the norm's dx).
register("adaln_modulate", fake=_modulate_fake, flops=_flops_per_element(8),
         backward=_modulate_backward, setup_context=_modulate_setup)
register("adaln_modulate_backward", fake=_modulate_backward_fake, flops=_flops_per_element(15))
register("gated_residual", fake=_gated_fake, flops=_flops_per_element(2),
         backward=_gated_backward, setup_context=_gated_setup)
register("gated_residual_backward", fake=_gated_backward_fake, flops=_flops_per_element(3))
register("gated_residual_adaln", fake=_fused_fake, flops=_flops_per_element(10),
         backward=_fused_backward, setup_context=_fused_setup)
register("gated_residual_adaln_backward", fake=_fused_backward_fake, flops=_flops_per_element(19))
