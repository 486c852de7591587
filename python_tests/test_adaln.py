"""Per-frame AdaLN ops (adaln_modulate, gated_residual, gated_residual_adaln) vs their references."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import flowception_ext
from flowception_ext.ops import adaln_modulate, gated_residual, gated_residual_adaln
from flowception_ext.ops.reference import adaln_modulate_ref, gated_residual_adaln_ref, gated_residual_ref

from conftest import requires_extension

# (frames F, tokens per frame, D): D not a multiple of any vector width, one token per frame,
# a single frame, no tokens, a long row; then a few random ones.
_rng = random.Random(6)
SHAPES = [(3, 4, 1), (2, 5, 7), (2, 3, 1151), (6, 1, 33), (1, 9, 64), (0, 4, 8), (3, 2, 0)] + [
    (_rng.randint(1, 5), _rng.randint(1, 70), _rng.randint(1, 300)) for _ in range(3)
]
LOW_PRECISION = (torch.bfloat16, torch.float16)
EPS = 1e-6


def _tensor(shape, dtype, gen, contiguous=True, scale=1.0):
    """Random values rounded to `dtype`, as float64 (so every path starts from the same numbers)."""
    if contiguous:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
    else:  # every other column of a wider tensor
        t = torch.randn(shape[0], 2 * shape[1], generator=gen, dtype=torch.float64)[:, ::2]
    return (t * scale).to(dtype).to(torch.float64)


# Each case: (our op, its reference, names of the [T, D] inputs, names of the [F, D] inputs).
def _modulate(ours):
    def run(x, shift, scale, tpf):
        return ((adaln_modulate if ours else adaln_modulate_ref)(x, shift, scale, tpf, EPS),)

    return run


def _gated(ours):
    def run(x, h, gate, tpf):
        return ((gated_residual if ours else gated_residual_ref)(x, h, gate, tpf),)

    return run


def _fused(ours):
    def run(x, h, gate, shift, scale, tpf):
        return (gated_residual_adaln if ours else gated_residual_adaln_ref)(x, h, gate, shift, scale, tpf, EPS)

    return run


CASES = {
    "adaln_modulate": (_modulate, ["x"], ["shift", "scale"]),
    "gated_residual": (_gated, ["x", "h"], ["gate"]),
    "gated_residual_adaln": (_fused, ["x", "h"], ["gate", "shift", "scale"]),
}


def _inputs(case, frames, tpf, dim, dtype, contiguous, seed=0):
    _, per_token, per_frame = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    tokens = [_tensor((frames * tpf, dim), dtype, gen, contiguous) for _ in per_token]
    per_frame_t = [_tensor((frames, dim), dtype, gen, contiguous, scale=0.5) for _ in per_frame]
    return tokens + per_frame_t


def _outputs_and_grads(run, inputs, dtype, tpf, grad_seed=1):
    """Outputs and input gradients (for random output gradients) of `run` computed in `dtype`, as float64."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    outs = run(*leaves, tpf)
    gen = torch.Generator().manual_seed(grad_seed)
    grads_out = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, grads_out, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(l) for g, l in zip(grads, leaves)]
    return [t.detach().double() for t in (*outs, *grads)]


@requires_extension
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, shape, dtype, contiguous):
    frames, tpf, dim = shape
    make = CASES[case][0]
    inputs = _inputs(case, frames, tpf, dim, dtype, contiguous)
    exact = _outputs_and_grads(make(False), inputs, torch.float64, tpf)
    ours = _outputs_and_grads(make(True), inputs, dtype, tpf)
    same_precision_ref = _outputs_and_grads(make(False), inputs, dtype, tpf)
    for i, (o, e, r) in enumerate(zip(ours, exact, same_precision_ref)):
        assert o.shape == e.shape
        err = (o - e).abs().max().item() if o.numel() else 0.0
        ref_err = (r - e).abs().max().item() if r.numel() else 0.0
        if dtype in LOW_PRECISION:  # at most twice the error of PyTorch in the same precision
            assert err <= 2 * ref_err + 1e-6, f"tensor {i}: error {err} vs reference's {ref_err}"
        else:
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            assert err <= max(tol, 2 * ref_err), f"tensor {i}: error {err}"


@requires_extension
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_statistics_of_offset_rows(dtype):
    """bf16/fp16 rows are normalised from one pass of sums shifted by the row's first value: rows
    far from zero whose first value is an outlier are the worst case for that cancellation."""
    gen = torch.Generator().manual_seed(3)
    x = 1000 + 4 * torch.randn(6, 1151, generator=gen, dtype=torch.float64)
    x[:, 0] = torch.tensor([1000.0, 1100.0, 900.0, 3000.0, -2000.0, 990.0], dtype=torch.float64)
    inputs = [x.to(dtype).double()] + [_tensor((3, 1151), dtype, gen, scale=0.5) for _ in range(2)]
    exact = _outputs_and_grads(_modulate(False), inputs, torch.float64, 2)
    ours = _outputs_and_grads(_modulate(True), inputs, dtype, 2)
    same_precision_ref = _outputs_and_grads(_modulate(False), inputs, dtype, 2)
    for i, (o, e, r) in enumerate(zip(ours, exact, same_precision_ref)):
        err, ref_err = (o - e).abs().max().item(), (r - e).abs().max().item()
        assert err <= 2 * ref_err + 1e-6, f"tensor {i}: error {err} vs reference's {ref_err}"


@requires_extension
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", [(3, 4, 7), (1, 1, 1), (0, 2, 5), (2, 70, 3)], ids=str)
def test_gradcheck_float64(case, shape):
    frames, tpf, dim = shape
    run = CASES[case][0](True)
    inputs = [t.requires_grad_() for t in _inputs(case, frames, tpf, dim, torch.float64, True)]
    assert torch.autograd.gradcheck(lambda *a: run(*a, tpf), inputs)


def _opcheck_calls(frames, tpf, dim, dtype):
    gen = torch.Generator().manual_seed(3)

    def rand(*shape, grad=False):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad)

    x, h, g, g2 = (rand(frames * tpf, dim, grad=i < 2) for i in range(4))
    shift, scale, gate = (rand(frames, dim, grad=True) for _ in range(3))
    op = torch.ops.flowception
    _, mean, rstd = op.adaln_modulate(x, shift, scale, tpf, EPS)
    return [
        (op.adaln_modulate, (x, shift, scale, tpf, EPS)),
        (op.adaln_modulate_backward, (g, x.detach(), scale.detach(), mean, rstd, tpf)),
        (op.gated_residual, (x, h, gate, tpf)),
        (op.gated_residual_backward, (g, h.detach(), gate.detach(), tpf)),
        (op.gated_residual_adaln, (x, h, gate, shift, scale, tpf, EPS)),
        (op.gated_residual_adaln_backward, (g, g2, x.detach(), h.detach(), gate.detach(), scale.detach(), mean, rstd, tpf)),
    ]


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 4, 7), (0, 3, 5), (2, 1, 1)], ids=str)
def test_opcheck(shape, dtype):
    for op, args in _opcheck_calls(*shape, dtype):
        torch.library.opcheck(op, args)


@requires_extension
def test_same_result_for_any_thread_count(threads):
    inputs = [t.float() for t in _inputs("gated_residual_adaln", 3, 150, 40, torch.float32, True)]
    results = []
    for n in (1, 2):
        threads(n)
        results.append(_outputs_and_grads(_fused(True), inputs, torch.float32, 150))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_falls_back_to_stock_without_extension(monkeypatch):
    monkeypatch.setattr(flowception_ext._extension, "_module", None)  # as if the extension were not built
    x, h, gate, shift, scale = _inputs("gated_residual_adaln", 2, 3, 5, torch.float32, True)
    torch.testing.assert_close(adaln_modulate(x, shift, scale, 3), adaln_modulate_ref(x, shift, scale, 3))
    torch.testing.assert_close(gated_residual(x, h, gate, 3), gated_residual_ref(x, h, gate, 3))
    for a, b in zip(gated_residual_adaln(x, h, gate, shift, scale, 3), gated_residual_adaln_ref(x, h, gate, shift, scale, 3)):
        torch.testing.assert_close(a, b)


@requires_extension
def test_flop_counter_counts_the_ops():
    x, shift, scale = (t.float().requires_grad_() for t in _inputs("adaln_modulate", 2, 3, 5, torch.float32, True))
    with FlopCounterMode(display=False) as counter:
        adaln_modulate(x, shift, scale, 3).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.flowception.adaln_modulate] == 8 * 6 * 5
    assert counts[torch.ops.flowception.adaln_modulate_backward] == 15 * 6 * 5


# ---- bad input -------------------------------------------------------------------------------


def _bad(case, **overrides):
    """Valid inputs of `case` (T = 6, D = 4, 2 frames of 3 tokens) with some replaced."""
    names = CASES[case][1] + CASES[case][2]
    args = dict(zip(names, (t.float() for t in _inputs(case, 2, 3, 4, torch.float32, True))))
    args.update(overrides)
    return [args[n] for n in names]


BAD = [
    ("adaln_modulate", {"shift": torch.zeros(3, 4)}, 3, ValueError, "shift must have 2 rows"),
    ("adaln_modulate", {}, 4, ValueError, "not a multiple of tokens_per_frame"),
    ("adaln_modulate", {}, 0, ValueError, "tokens_per_frame must be >= 1"),
    ("adaln_modulate", {"scale": torch.zeros(2, 5)}, 3, ValueError, "scale must be a 2-D tensor with D = 4"),
    ("adaln_modulate", {"x": torch.zeros(6, 4, dtype=torch.int64)}, 3, TypeError, "x must be float32"),
    ("adaln_modulate", {"x": torch.zeros(6, 4, 1)}, 3, ValueError, "x must be a 2-D tensor"),
    ("adaln_modulate", {"shift": torch.zeros(2, 4, dtype=torch.float64)}, 3, TypeError, "shift must have the dtype of x"),
    ("adaln_modulate", {"scale": torch.zeros(2, 4, device="meta")}, 3, ValueError, "scale must be on the same device as x"),
    ("gated_residual", {"h": torch.zeros(6, 5)}, 3, ValueError, "h must be a 2-D tensor with D = 4"),
    ("gated_residual", {"gate": torch.zeros(1, 4)}, 3, ValueError, "gate must have 2 rows"),
    ("gated_residual", {"h": torch.zeros(6, 4, dtype=torch.int32)}, 3, TypeError, "h must have the dtype of x"),
    ("gated_residual", {"h": torch.zeros(6, 4, device="meta")}, 3, ValueError, "h must be on the same device as x"),
    ("gated_residual_adaln", {"scale": torch.zeros(4, 4)}, 3, ValueError, "scale must have 2 rows"),
    ("gated_residual_adaln", {"gate": torch.zeros(2, 4, dtype=torch.float16)}, 3, TypeError, "gate must have the dtype"),
]


@pytest.mark.parametrize("ours", [True, False], ids=["op", "reference"])
@pytest.mark.parametrize("case, overrides, tpf, error, match", BAD)
def test_bad_input(case, overrides, tpf, error, match, ours):
    if ours and not flowception_ext.build_info()["cpu_kernels"]:
        pytest.skip("compiled extension not available")
    run = CASES[case][0](ours)
    with pytest.raises(error, match=match):
        run(*_bad(case, **overrides), tpf)


@requires_extension
def test_bad_saved_statistics():
    x, shift, scale = (t.float() for t in _inputs("adaln_modulate", 2, 3, 4, torch.float32, True))
    _, mean, rstd = torch.ops.flowception.adaln_modulate(x, shift, scale, 3, EPS)
    with pytest.raises(TypeError, match="mean must be"):
        torch.ops.flowception.adaln_modulate_backward(x, x, scale, mean.double(), rstd, 3)
    with pytest.raises(ValueError, match="rstd must be a 1-D tensor with one entry per token"):
        torch.ops.flowception.adaln_modulate_backward(x, x, scale, mean, rstd[:5], 3)
