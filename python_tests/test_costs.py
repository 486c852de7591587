"""The cost model: analytic ratios (closed form vs Monte Carlo), the drawn present lengths, and
FLOP counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowception_ext import ops

from flowception_ext.costs import (
    _present_counts_mc,
    analytic_sampling_ratio,
    analytic_train_attention_ratio,
    analytic_train_attention_ratio_limit,
    count_flops,
    drawn_present_lengths,
)


def test_uniform_ratio_closed_form_matches_monte_carlo_and_tends_to_three():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 32):
        m = _present_counts_mc(n, "uniform_tau", 200_000, rng).astype(float)
        assert n * n / np.mean(m * m) == pytest.approx(analytic_train_attention_ratio(n, "uniform_tau"), rel=0.01)
    assert analytic_train_attention_ratio(1, "uniform_tau") == 1.0
    assert analytic_train_attention_ratio(4096, "uniform_tau") == pytest.approx(3.0, rel=1e-3)
    assert analytic_train_attention_ratio_limit("uniform_tau") == 3.0


def test_configured_ratio_below_uniform_and_converges_to_its_limit():
    limit = analytic_train_attention_ratio_limit("logit_normal")
    assert 1.2 < limit < 1.5  # τ_g spread over [0, 2]: frames are all present half the time
    assert analytic_train_attention_ratio(512, "logit_normal", draws=50_000) == pytest.approx(limit, rel=0.01)
    assert analytic_train_attention_ratio(32, "logit_normal", draws=50_000) < analytic_train_attention_ratio(32, "uniform_tau")


def test_sampling_ratio_counts_the_tail_after_t_g_reaches_one():
    a = analytic_sampling_ratio(64, 16, draws=500)
    assert a["alpha"] == pytest.approx(2.0, abs=0.05)
    assert a["paper_3_over_alpha"] == pytest.approx(1.5, rel=0.03)
    # ∫₀¹ κ² + 1 (all frames present while the last ones finish) = 4/3, so ≈ 0.75, not 1.5
    assert a["attention"] == pytest.approx(0.75, rel=0.06)
    assert analytic_sampling_ratio(1, 8, draws=10)["attention"] == pytest.approx(8 / 9)  # one frame: 9 evaluations


@pytest.mark.parametrize("law, analytic", [("uniform_tau", "uniform_tau"), ("configured", "logit_normal")])
def test_drawn_lengths_follow_the_analytic_law(law, analytic):
    lengths = drawn_present_lengths(8, 20_000, law, torch.Generator().manual_seed(0)).double()
    assert lengths.numel() == 20_000 and int(lengths.min()) >= 1 and int(lengths.max()) <= 8
    assert 64 / float((lengths**2).mean()) == pytest.approx(analytic_train_attention_ratio(8, analytic), rel=0.02)
    with pytest.raises(ValueError, match="law"):
        drawn_present_lengths(8, 10, "beta", torch.Generator())


def test_count_flops_by_hand():
    """A linear layer (2 flops per multiply-add) and the packed attention op (counted apart, at
    the useful query-key pairs of its flop formula)."""
    linear = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8)
    cu = torch.tensor([0, 3, 5])  # videos of 3 and 2 frames, 2 tokens per frame
    q, k, v = (torch.randn(10, 2, 4) for _ in range(3))
    counts = count_flops(lambda: (linear(x), ops.local_frame_attention(q, k, v, cu, 2, backend="kernels")))
    attention = 4 * 4 * 2 * (3 * 3 + 2 * 2) * 2 * 2  # 4 d H · frame pairs · tokens per frame²
    assert attention == ops.local_frame_attention_flops(cu, 2, -1, 2, 4)
    assert counts == {"total": 2 * 3 * 8 * 4 + attention, "attention": attention}
    assert count_flops(lambda: None) == {"total": 0, "attention": 0}
