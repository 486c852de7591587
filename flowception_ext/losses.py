"""The Flowception training losses (docs/algorithm.md §4): flow-matching velocity loss on flowing frames and
Poisson insertion loss on insertable slots, both averaged over the whole batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._utils import describe
from .noising import TrainingState
from .schedules import KappaScheduler, kappa_from_name

__all__ = ["LossOutput", "RATE_SLOTS", "flowception_loss"]

RATE_SLOTS = ("insertable", "flowing")


@dataclass
class LossOutput:
    """``total = velocity + insertion_weight · insertion`` (scalars, float32 or wider)."""

    total: Tensor
    velocity: Tensor
    insertion: Tensor


def flowception_loss(
    velocity: Tensor,
    log_rate: Tensor | None,
    state: TrainingState,
    *,
    insertion_weight: float = 1.0,
    hazard_weighting: bool = False,
    kappa: str | dict | KappaScheduler | None = None,
    velocity_weight: Tensor | None = None,
    rate_slots: str = "insertable",
) -> LossOutput:
    """The Flowception loss of a model output on a training state.

    * ``L_vel = Σ_{flowing i} w_i ‖v_i − (X¹_i − ε_i)‖² / (#flowing frames in the batch · C·H·W)``
      with ``w_i = 1``, or ``velocity_weight`` (e.g. :meth:`FlowceptionDiT.velocity_loss_weight`);
    * ``L_ins = Σ_{insertable j} w_j (λ_j − K_j log λ_j) / (#insertable slots in the batch)`` with
      ``λ = exp(ℓ)`` computed from the log-rate ``ℓ`` (no overflow of ``log λ``); ``w_j = 1``, or
      the hazard ``ρ(min(τ_g, 1))`` of the slot's video with ``hazard_weighting`` (the ELBO form).

    An empty set (no flowing frame, no insertable slot) gives 0, still connected to the graph.

    Args:
        velocity: ``[N, C, H, W]`` predicted velocity of every present frame.
        log_rate: ``[N]`` predicted log insertion rate of every present frame's slot, or ``None`` for a
            model without a rate head (then the loss is the velocity loss alone).
        state: the training state the prediction was made on.
        insertion_weight: ``w_ins`` in ``L = L_vel + w_ins · L_ins``.
        hazard_weighting: weight each slot by ``ρ(min(τ_g, 1))``; needs ``kappa``.
        kappa: the scheduler the state was drawn with (only used for hazard weighting).
        velocity_weight: ``[N]`` non-negative weight of each frame's squared velocity error
            (``None``: all 1). Pass ``model.velocity_loss_weight(state.inputs.times)``: a model
            predicting clean frames needs it (see :meth:`FlowceptionDiT.velocity_loss_weight`).
        rate_slots: which slots the insertion loss covers: ``"insertable"`` (every insertable
            slot, as docs/algorithm.md §4) or ``"flowing"`` (only those of context frames and of
            frames still flowing, τ < 1: a finished frame's slot drops out, as in the reference
            code).
    """
    target = state.velocity_target
    if not isinstance(velocity, Tensor) or velocity.shape != target.shape:
        raise ValueError(f"velocity must have the shape of state.velocity_target {tuple(target.shape)}, "
                         f"got {describe(velocity)}")
    if log_rate is not None and (not isinstance(log_rate, Tensor) or log_rate.shape != (target.shape[0],)):
        raise ValueError(f"log_rate must be [N] = [{target.shape[0]}] (one per present frame), got {describe(log_rate)}")
    if velocity_weight is not None and (not isinstance(velocity_weight, Tensor)
                                        or velocity_weight.shape != (target.shape[0],)):
        raise ValueError(f"velocity_weight must be [N] = [{target.shape[0]}] (one per present frame), "
                         f"got {describe(velocity_weight)}")
    for name, x in (("velocity", velocity), ("log_rate", log_rate), ("velocity_weight", velocity_weight)):
        if x is not None and not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if rate_slots not in RATE_SLOTS:
        raise ValueError(f"rate_slots must be one of {RATE_SLOTS}, got {rate_slots!r}")
    if hazard_weighting and kappa is None:
        raise ValueError("hazard_weighting needs kappa (the scheduler the state was drawn with)")

    # Velocity: sum over the flowing frames, divided by their number in the batch (not per video).
    dtype = torch.promote_types(velocity.dtype, torch.float32)
    sq = (velocity.to(dtype) - target.to(dtype)).square().flatten(1).sum(1)  # [N]
    if velocity_weight is not None:
        sq = sq * velocity_weight.to(dtype)
    denom = (state.flowing.sum() * math.prod(target.shape[1:])).clamp(min=1)
    l_vel = torch.where(state.flowing, sq, 0).sum() / denom

    if log_rate is None:  # a model without a rate head (the baselines): velocity loss only
        return LossOutput(total=l_vel, velocity=l_vel, insertion=torch.zeros_like(l_vel))

    # Insertion: Poisson NLL (up to log K!) λ − K log λ = exp(ℓ) − K ℓ, over the insertable slots.
    ell = log_rate.to(torch.promote_types(log_rate.dtype, torch.float32))
    insertable = state.inputs.insertable
    if rate_slots == "flowing":  # a finished frame's slot drops out; a context frame's stays
        insertable = insertable & (state.flowing | state.inputs.is_context)
    nll = ell.exp() - state.insert_counts.to(ell.dtype) * ell
    if hazard_weighting:
        rho = kappa_from_name(kappa).hazard(state.tau_g.clamp(max=1))  # ρ(1) = 0
        nll = nll * rho.to(ell.dtype)[state.inputs.video_index]
    l_ins = torch.where(insertable, nll, 0).sum() / insertable.sum().clamp(min=1)

    return LossOutput(total=l_vel + insertion_weight * l_ins, velocity=l_vel, insertion=l_ins)
