"""The cost model of Flowception against full-sequence flow matching (docs/algorithm.md §7;
paper §3.4 and App. D): analytic FLOP ratios of training and sampling, the present lengths the
training states draw, and FLOP counting of any callable (``torch.utils.flop_counter``, with this
library's ops registered).

The harness that measures these on the real model, with wall-clock and memory, is
``bench/efficiency.py`` (``flowception bench efficiency`` from a checkout); its figures are in
``bench/RESULTS.md``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .noising import NoisingConfig, make_training_state
from .packing import PackedVideos
from .schedules import UniformTime

__all__ = ["analytic_train_attention_ratio", "analytic_train_attention_ratio_limit", "analytic_sampling_ratio",
           "drawn_present_lengths", "count_flops"]


# ---- analytic model (the state law of §3, the sampler's schedule of §6) -----------------------


def _present_counts_mc(n: int, time_law: str, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Present frames per state under docs/algorithm.md §3 (linear κ, one starting frame, unconditional):
    ``1 + #{i : t_ins_i <= τ_g}`` over ``n − 1`` free frames with ``t_ins ~ U(0, 1)``.
    ``time_law``: ``"uniform_tau"`` (``τ_g ~ U(0, 1)``, the paper) or ``"logit_normal"``
    (``τ_g = s · τ_max``, ``s = sigmoid(N(0, 1))``, ``τ_max = max t_ins + 1``)."""
    t_ins = rng.random((draws, n - 1))
    if time_law == "uniform_tau":
        tau_g = rng.random(draws)
    else:
        tau_max = (t_ins.max(axis=1) if n > 1 else np.zeros(draws)) + 1
        tau_g = tau_max / (1 + np.exp(-rng.standard_normal(draws)))
    return 1 + (t_ins <= tau_g[:, None]).sum(axis=1)


def analytic_train_attention_ratio(n: int, time_law: str, draws: int = 400_000, seed: int = 0) -> float:
    """``n² / E[m²]`` (attention ∝ present tokens²) for the state law at ``n`` frames.

    ``uniform_tau`` is exact: with ``B ~ Bin(n − 1, τ)``, ``E[(1 + B)²]`` averaged over ``τ ~ U(0, 1)``
    is ``1 + (n − 1) + (n − 1)/6 + (n − 1)²/3`` (→ ``n²/3``: the paper's 3×). ``logit_normal`` is a
    Monte Carlo of the docs/algorithm.md §3 law (``draws`` states; relative error ≈ 1e-3)."""
    if time_law == "uniform_tau":
        k = n - 1
        return n * n / (1 + k + k / 6 + k * k / 3)
    m = _present_counts_mc(n, time_law, draws, np.random.default_rng(seed)).astype(np.float64)
    return n * n / float(np.mean(m * m))


def analytic_train_attention_ratio_limit(time_law: str) -> float:
    """``1 / E[min(τ_g, 1)²]`` as ``n → ∞`` (present fraction ``min(τ_g, 1)``, ``τ_max → 2``)."""
    if time_law == "uniform_tau":
        return 3.0
    from scipy import integrate, stats

    # s = sigmoid(z), z ~ N(0, 1); τ_g = 2 s; fraction min(2 s, 1) = 1 for z >= 0.
    def integrand(z: float) -> float:
        return min(2.0 / (1.0 + math.exp(-z)), 1.0) ** 2 * stats.norm.pdf(z)

    value = integrate.quad(integrand, -12, 0)[0] + 0.5
    return 1.0 / value


def analytic_sampling_ratio(n: int, steps: int, draws: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Full-sequence / Flowception attention cost of whole sampling runs at ``steps`` steps per frame.

    The sampler (docs/algorithm.md §6, as ``sample(order="random", target_length=n)`` runs it) inserts the
    ``n − 1`` missing frames at steps ``⌊κ⁻¹(U) · steps⌋``; the model sees ``N_k = 1 + #{inserted
    before step k}`` frames at step ``k``, and the run lasts until the last inserted frame has had
    ``steps`` flow steps (``max insertion step + steps + 1`` evaluations). Full-sequence costs
    ``steps · n²``. Returns the ratio for attention (``Σ N_k²``) and for per-token work (``Σ N_k``),
    the mean number of evaluations, and the paper's idealisation ``3/α`` with ``α = evals/steps``."""
    rng = np.random.default_rng(seed)
    when = np.floor(rng.random((draws, n - 1)) * steps).astype(np.int64)
    evals = (when.max(axis=1) if n > 1 else np.zeros(draws, dtype=np.int64)) + steps + 1
    quad = lin = 0.0
    for d in range(draws):
        inserted = np.bincount(when[d], minlength=steps).cumsum()  # inserted at steps <= k
        present = 1 + np.concatenate([[0], inserted[:-1], np.full(evals[d] - steps, n - 1)])
        quad += float((present.astype(np.float64) ** 2).sum())
        lin += float(present.sum())
    alpha = float(evals.mean()) / steps
    return {"attention": steps * n * n * draws / quad, "tokens": steps * n * draws / lin,
            "evals": float(evals.mean()), "paper_3_over_alpha": 3 / alpha, "alpha": alpha}


# ---- drawn training states and counted FLOPs ------------------------------------------------


def drawn_present_lengths(n: int, draws: int, law: str, generator: torch.Generator, chunk: int = 512) -> Tensor:
    """Present lengths of ``draws`` states of an ``n``-frame video drawn by :func:`make_training_state`
    (default :class:`NoisingConfig`; in batches of ``chunk`` copies of a 1-pixel video: the lengths do
    not depend on pixels). ``law = "configured"`` keeps the default ``τ_g`` sampler; ``"uniform_tau"``
    gives ``τ_g ~ U(0, 1)`` independent of the insertion times (the paper's law): with ``s ~ U(0, 1)``,
    ``τ_g | τ_max ~ U(0, τ_max)``, and keeping a draw with probability ``1[τ_g <= 1] · τ_max / 2``
    (``τ_max <= 2``) leaves exactly ``p(t_ins) · U(τ_g; 0, 1)`` (rejection sampling)."""
    if law not in ("configured", "uniform_tau"):
        raise ValueError(f"law must be 'configured' or 'uniform_tau', got {law!r}")
    config = NoisingConfig(time_distribution=UniformTime()) if law == "uniform_tau" else NoisingConfig()
    videos = PackedVideos.from_list([torch.zeros(n, 1, 1, 1)] * chunk)
    kept: list[Tensor] = []
    while sum(k.numel() for k in kept) < draws:
        state = make_training_state(videos, generator=generator, config=config)
        keep = torch.ones(chunk, dtype=torch.bool)
        if law == "uniform_tau":
            u = torch.rand(chunk, generator=generator, dtype=torch.float64)
            keep = (state.tau_g <= 1) & (u < state.tau_max / 2)
        kept.append(state.inputs.lengths[keep])
    return torch.cat(kept)[:draws]


def count_flops(fn: Callable[[], object]) -> dict[str, int]:
    """FLOPs of ``fn()``: total and attention (every op whose name contains ``attention``)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    counts = counter.get_flop_counts().get("Global", {})
    attn = sum(c for op, c in counts.items() if "attention" in str(op))
    return {"total": int(counter.get_total_flops()), "attention": int(attn)}
