"""Flowception losses (docs/algorithm.md §4): hand-computed values, batch-level reductions, the Poisson
gradient, hazard weighting, empty sets and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from flowception_ext import PackedVideos
from flowception_ext.losses import flowception_loss
from flowception_ext.noising import NoisingConfig, TrainingState, make_training_state
from flowception_ext.schedules import CosineKappa, LinearKappa


def tiny_state(dtype=torch.float64) -> TrainingState:
    """Two videos with frames [1, 1, 2] (C·H·W = 2): 3 and 2 present frames.

    frame:      0      1      2      3      4
    video:      0      0      0      1      1
    context:    yes    no     no     no     no
    flowing:    no     yes    yes    yes    no    (frame 4 is terminal)
    insertable: yes    yes    yes    yes    yes
    K:          2      0      1      3      0
    """
    n = 5
    target = torch.tensor([[0.0, 0.0], [1.0, 2.0], [5.0, 5.0], [-1.0, 0.5], [3.0, 3.0]], dtype=dtype).view(n, 1, 1, 2)
    inputs = PackedVideos(
        frames=torch.zeros(n, 1, 1, 2, dtype=dtype),
        cu_seqlens=torch.tensor([0, 3, 5]),
        times=torch.tensor([1.0, 0.3, 0.5, 0.6, 1.0], dtype=dtype),
        is_context=torch.tensor([True, False, False, False, False]),
        insertable=torch.ones(n, dtype=torch.bool),
    )
    return TrainingState(
        inputs=inputs,
        velocity_target=target,
        flowing=torch.tensor([False, True, True, True, False]),
        insert_counts=torch.tensor([2, 0, 1, 3, 0]),
        tau_g=torch.tensor([0.5, 1.25], dtype=torch.float64),
        tau_max=torch.tensor([1.9, 1.7], dtype=torch.float64),
        t_ins=torch.zeros(7, dtype=torch.float64),
        source_index=torch.tensor([0, 1, 2, 5, 6]),
        roles=torch.zeros(7, dtype=torch.int8),
        task=torch.zeros(2, dtype=torch.int64),
        cond_dropped=torch.zeros(2, dtype=torch.bool),
    )


def tiny_outputs(dtype=torch.float64):
    # Errors v − target on the flowing frames: frame 1 (1, −1) → 2, frame 2 (2, 0) → 4,
    # frame 3 (0.5, 0.5) → 0.5. Frames 0 and 4 are off by a lot, but they are not flowing.
    velocity = torch.tensor([[9.0, 9.0], [2.0, 1.0], [7.0, 5.0], [-0.5, 1.0], [-7.0, 3.0]], dtype=dtype)
    log_rate = torch.tensor([0.0, math.log(2.0), -1.0, math.log(3.0), 0.5], dtype=dtype)
    return velocity.view(5, 1, 1, 2), log_rate


def test_hand_computed_values():
    state = tiny_state()
    velocity, log_rate = tiny_outputs()
    out = flowception_loss(velocity, log_rate, state, insertion_weight=0.5)
    # L_vel = (2 + 4 + 0.5) / (3 flowing frames · 2 elements) = 13/12: a mean over the batch's
    # flowing frames (per-video means would give ((2 + 4) / 4 + 0.5 / 2) / 2 = 0.875).
    assert out.velocity.item() == pytest.approx(13 / 12, rel=1e-15)
    # L_ins = Σ (λ − K ℓ) / 5 slots: (1 − 2·0) + (2 − 0) + (e⁻¹ − 1·(−1)) + (3 − 3 log 3) + (e^0.5 − 0)
    expected_ins = (1 + 2 + (math.exp(-1) + 1) + (3 - 3 * math.log(3)) + math.exp(0.5)) / 5
    assert out.insertion.item() == pytest.approx(expected_ins, rel=1e-14)
    assert out.total.item() == pytest.approx(13 / 12 + 0.5 * expected_ins, rel=1e-14)


def test_velocity_weight():
    state = tiny_state()
    velocity, log_rate = tiny_outputs()
    # Frame errors 2, 4, 0.5 on the flowing frames 1–3; weights on non-flowing frames are unused.
    weight = torch.tensor([7.0, 0.5, 0.0, 2.0, 7.0], dtype=torch.float64)
    out = flowception_loss(velocity, log_rate, state, velocity_weight=weight)
    assert out.velocity.item() == pytest.approx((0.5 * 2 + 0 * 4 + 2 * 0.5) / 6, rel=1e-15)
    ones = flowception_loss(velocity, log_rate, state, velocity_weight=torch.ones(5, dtype=torch.float64))
    assert ones.velocity.item() == flowception_loss(velocity, log_rate, state).velocity.item()
    with pytest.raises(ValueError, match=r"velocity_weight must be \[N\] = \[5\]"):
        flowception_loss(velocity, log_rate, state, velocity_weight=weight[:4])
    with pytest.raises(TypeError, match="velocity_weight must be a floating"):
        flowception_loss(velocity, log_rate, state, velocity_weight=torch.ones(5, dtype=torch.int64))


def test_non_insertable_slots_are_ignored():
    state = tiny_state()
    state.inputs = state.inputs.replace(insertable=torch.tensor([True, True, False, True, True]))
    state.insert_counts = torch.tensor([2, 0, 0, 3, 0])
    velocity, log_rate = tiny_outputs()
    out = flowception_loss(velocity, log_rate, state)
    expected_ins = (1 + 2 + (3 - 3 * math.log(3)) + math.exp(0.5)) / 4
    assert out.insertion.item() == pytest.approx(expected_ins, rel=1e-14)


def test_hazard_weighting():
    state = tiny_state()
    velocity, log_rate = tiny_outputs()
    with pytest.raises(ValueError, match="kappa"):
        flowception_loss(velocity, log_rate, state, hazard_weighting=True)
    out = flowception_loss(velocity, log_rate, state, hazard_weighting=True, kappa="linear")
    # Linear κ: ρ(0.5) = 2 for video 0; τ_g = 1.25 >= 1 gives ρ = 0 for video 1.
    expected_ins = 2 * (1 + 2 + (math.exp(-1) + 1)) / 5
    assert out.insertion.item() == pytest.approx(expected_ins, rel=1e-14)
    out = flowception_loss(velocity, log_rate, state, hazard_weighting=True, kappa=CosineKappa())
    rho = CosineKappa().hazard(0.5)
    assert out.insertion.item() == pytest.approx(rho * (1 + 2 + (math.exp(-1) + 1)) / 5, rel=1e-14)


def test_insertion_gradient_vanishes_at_k():
    """d L_ins / d ℓ_j = (exp(ℓ_j) − K_j) / #slots: zero exactly where λ = K."""
    state = tiny_state()
    state.insert_counts = torch.tensor([2, 1, 4, 3, 1])
    velocity, _ = tiny_outputs()
    k = state.insert_counts.double()
    log_rate = k.log().requires_grad_()
    flowception_loss(velocity, log_rate, state).insertion.backward()
    torch.testing.assert_close(log_rate.grad, (log_rate.detach().exp() - k) / 5, rtol=1e-15, atol=1e-16)
    assert log_rate.grad.abs().max() <= 1e-15  # exp(log K) is K up to one ulp
    # Away from λ = K the gradient has the sign of λ − K.
    for shift in (-0.3, 0.3):
        ell = (k.log() + shift).requires_grad_()
        flowception_loss(velocity, ell, state).insertion.backward()
        assert (torch.sign(ell.grad) == math.copysign(1, shift)).all()
    # With K = 0 the loss keeps pushing the rate down: gradient λ / #slots > 0.
    state.insert_counts = torch.zeros(5, dtype=torch.int64)
    ell = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    flowception_loss(velocity, ell, state).insertion.backward()
    torch.testing.assert_close(ell.grad, torch.full_like(ell, 0.2))


def test_velocity_gradient():
    state = tiny_state()
    velocity, log_rate = tiny_outputs()
    velocity.requires_grad_()
    flowception_loss(velocity, log_rate, state).velocity.backward()
    expected = 2 * (velocity.detach() - state.velocity_target) / 6 * state.flowing.view(-1, 1, 1, 1)
    torch.testing.assert_close(velocity.grad, expected, rtol=0, atol=1e-15)


def test_empty_sets_give_zero():
    state = tiny_state()
    state.flowing = torch.zeros(5, dtype=torch.bool)
    state.inputs = state.inputs.replace(insertable=torch.zeros(5, dtype=torch.bool))
    velocity, log_rate = (x.requires_grad_() for x in tiny_outputs())
    out = flowception_loss(velocity, log_rate, state)
    assert out.velocity.item() == 0 and out.insertion.item() == 0 and out.total.item() == 0
    out.total.backward()  # still part of the graph, with zero gradients
    assert (velocity.grad == 0).all() and (log_rate.grad == 0).all()


def test_low_precision_inputs_reduce_in_float32():
    state = tiny_state(torch.bfloat16)
    velocity, log_rate = tiny_outputs(torch.bfloat16)
    out = flowception_loss(velocity, log_rate, state)
    assert out.total.dtype == torch.float32
    ref = flowception_loss(*tiny_outputs(), tiny_state())
    assert out.velocity.item() == pytest.approx(ref.velocity.item(), rel=1e-2)
    assert out.insertion.item() == pytest.approx(ref.insertion.item(), rel=1e-2)


def test_on_a_sampled_state():
    """On a real training state, the exact predictions give L_vel = 0 and the insertion loss
    at λ = K (K > 0) is the Poisson NLL Σ (K − K log K) / #slots."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (64,), generator=g)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    videos = PackedVideos.from_padded(torch.randn(64, 8, 2, 2, 2, generator=g),
                                      torch.arange(8) < lengths[:, None])
    assert torch.equal(videos.cu_seqlens, cu)
    state = make_training_state(videos, generator=g, config=NoisingConfig(kappa=LinearKappa()))
    k = state.insert_counts.double()
    log_rate = torch.where(k > 0, k.log(), -30.0)
    out = flowception_loss(state.velocity_target.clone(), log_rate, state)
    assert out.velocity.item() == 0
    ins = state.inputs.insertable
    expected = torch.where(k > 0, k - k * k.log(), math.exp(-30))[ins].sum() / ins.sum()
    assert out.insertion.item() == pytest.approx(expected.item(), rel=1e-12)


def test_bad_input():
    state = tiny_state()
    velocity, log_rate = tiny_outputs()
    with pytest.raises(ValueError, match=r"velocity must have the shape .*\(5, 1, 1, 2\)"):
        flowception_loss(velocity[:3], log_rate, state)
    with pytest.raises(ValueError, match=r"velocity must have the shape"):
        flowception_loss(velocity.view(5, 2, 1, 1), log_rate, state)
    with pytest.raises(ValueError, match=r"log_rate must be \[N\] = \[5\]"):
        flowception_loss(velocity, log_rate[:, None], state)
    with pytest.raises(ValueError, match="log_rate"):
        flowception_loss(velocity, [0.0] * 5, state)
    with pytest.raises(TypeError, match="log_rate must be a floating"):
        flowception_loss(velocity, torch.zeros(5, dtype=torch.int64), state)
