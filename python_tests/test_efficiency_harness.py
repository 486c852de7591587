"""The efficiency harness (bench/efficiency.py): padded == packed, the per-length FLOP table, and
a quick run's JSON and figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from flowception_ext.baselines import make_full_sequence_state
from flowception_ext.costs import count_flops
from flowception_ext.losses import flowception_loss
from flowception_ext.model import FlowceptionConfig, FlowceptionDiT
from flowception_ext.noising import make_training_state
from flowception_ext.packing import PackedVideos

# The harness is a script of the checkout's bench/, imported by name so that its spawned
# memory-measuring children can import it too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import efficiency  # noqa: E402


def test_step_flops_add_up_over_videos():
    """The per-length table is exact: a packed batch costs the sum of its videos."""
    args = efficiency.parse_args(["--quick", "--frame-size", "8"])
    model = efficiency.build_model(args)
    state = make_training_state(efficiency.random_videos(3, 5, args, 0), generator=torch.Generator().manual_seed(1))
    whole = count_flops(lambda: efficiency.train_step(model, state))
    parts = [count_flops(lambda: efficiency.train_step(model, make_full_sequence_state(efficiency.random_videos(1, m, args, 0))))
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
    outputs, grads = [], []
    for forward in (model, efficiency.padded_forward):
        v, log_rate = model(state.inputs) if forward is model else forward(model, state.inputs)
        flowception_loss(v, log_rate, state).total.backward()
        outputs.append((v, log_rate))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        model.zero_grad()
    (v, log_rate), (v_pad, log_rate_pad) = outputs
    assert v_pad.shape == v.shape
    assert (v_pad - v).abs().max() <= 1e-5 and (log_rate_pad - log_rate).abs().max() <= 1e-5
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[0].abs().max()


def test_quick_main_writes_named_keys(tmp_path):
    path = tmp_path / "eff.json"
    argv = ["--quick", "--frame-size", "8", "--n", "4", "--sweep", "4", "--draws", "50", "--steps", "2",
            "--repeats", "1", "--json", str(path), "--plot", str(tmp_path / "eff.png")]
    assert efficiency.main(argv) == 0
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
