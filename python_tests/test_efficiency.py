"""Efficiency benchmark: analytic cost model, padded == packed, the uniform-τ_g draw and the CLI's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowception_ext.efficiency import (
    _present_counts_mc,
    analytic_sampling_ratio,
    analytic_train_attention_ratio,
    analytic_train_attention_ratio_limit,
    build_model,
    count_flops,
    drawn_present_lengths,
    main,
    padded_forward,
    parse_args,
    random_videos,
    train_step,
)
from flowception_ext.baselines.training import make_full_sequence_state
from flowception_ext.losses import flowception_loss
from flowception_ext.model import FlowceptionConfig, FlowceptionDiT
from flowception_ext.noising import make_training_state
from flowception_ext.packing import PackedVideos


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


def test_step_flops_add_up_over_videos():
    """The per-length table is exact: a packed batch costs the sum of its videos."""
    args = parse_args(["--quick", "--frame-size", "8"])
    model = build_model(args)
    state = make_training_state(random_videos(3, 5, args, 0), generator=torch.Generator().manual_seed(1))
    whole = count_flops(lambda: train_step(model, state))
    parts = [count_flops(lambda: train_step(model, make_full_sequence_state(random_videos(1, m, args, 0))))
             for m in state.inputs.lengths.tolist()]
    for key in ("attention", "total"):
        assert whole[key] == sum(p[key] for p in parts) > 0


@pytest.mark.parametrize("window", [None, 1])
def test_padded_forward_and_gradients_match_packed(window):
    torch.manual_seed(0)
    cfg = FlowceptionConfig(in_channels=2, frame_size=(8, 8), patch_size=4, depth=2, hidden_size=24, num_heads=2,
                            window=window)
    model = FlowceptionDiT(cfg)
    for p in model.parameters():  # leave adaLN-Zero: zero output layers would hide any difference
        torch.nn.init.normal_(p, std=0.1)
    videos = PackedVideos.from_list([torch.randn(k, 2, 8, 8) for k in (5, 2, 7)])
    state = make_training_state(videos, generator=torch.Generator().manual_seed(3))
    grads = []
    for padded in (False, True):
        v, log_rate = padded_forward(model, state.inputs) if padded else model(state.inputs)
        flowception_loss(v, log_rate, state).total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        model.zero_grad()
        if padded:
            assert v.shape == ref[0].shape
            assert (v - ref[0]).abs().max() <= 1e-5 and (log_rate - ref[1]).abs().max() <= 1e-5
        ref = (v, log_rate)
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[0].abs().max()


def test_quick_main_writes_named_keys(tmp_path):
    path = tmp_path / "eff.json"
    argv = ["--quick", "--frame-size", "8", "--n", "4", "--sweep", "4", "--draws", "50", "--steps", "2",
            "--repeats", "1", "--json", str(path), "--plot", str(tmp_path / "eff.png")]
    assert main(argv) == 0
    results = json.loads(path.read_text())
    for key in ("train_attn_flop_ratio_uniform", "train_attn_flop_ratio_uniform_analytic",
                "train_attn_flop_ratio_configured", "train_attn_flop_ratio_configured_analytic",
                "train_total_flop_ratio_configured", "train_wallclock_ratio", "padded_over_packed_wallclock",
                "sampling_flop_ratio", "sampling_flop_ratio_analytic", "sampling_wallclock_ratio"):
        assert isinstance(results[key], float) and results[key] > 0, key
    row = results["per_n"]["4"]
    assert row["sampling_flops_ar_nocache"] > 0 and row["sampling_flops_ar_cache"] > 0
    assert (tmp_path / "eff.png").stat().st_size > 0
    assert set(results["peak_memory"]) >= {"peak_rss_mib_train_flowception", "peak_rss_mib_train_padded",
                                           "peak_rss_mib_sampling_full_sequence"}
