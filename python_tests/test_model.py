"""FlowceptionDiT: packing exactness, locality of windowed attention, persistence, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from flowception_ext import FlowceptionConfig, FlowceptionDiT, PackedVideos
from flowception_ext.model.config import PRESETS


def make_model(seed: int = 0, **overrides) -> FlowceptionDiT:
    """A tiny model with random (not adaLN-Zero) weights, so every path contributes."""
    kwargs = dict(in_channels=2, frame_size=(4, 6), patch_size=2, depth=2, hidden_size=48, num_heads=4)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = FlowceptionDiT(FlowceptionConfig(**kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08)
    return model.eval()


def make_videos(lengths, seed=0, channels=2, size=(4, 6), context_every=3) -> PackedVideos:
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(n, channels, *size, generator=g) for n in lengths]
    times = [torch.rand(n, generator=g) for n in lengths]
    ctx = [torch.arange(n) % context_every == 0 for n in lengths]
    times = [torch.where(c, torch.ones_like(t), t) for t, c in zip(times, ctx)]
    return PackedVideos.from_list(frames, times=times, is_context=ctx)


@pytest.mark.parametrize("window", [None, 0, 1, 3])
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("length_conditioning", [False, True])
def test_packing_is_exact(window, attention, length_conditioning):
    if length_conditioning and attention == "causal":
        pytest.skip("length_conditioning is bidirectional only")
    model = make_model(window=window, attention=attention, num_classes=3, length_conditioning=length_conditioning,
                       prediction="clean" if window == 1 else "velocity", mlp="swiglu" if window == 3 else "gelu")
    lengths = [3, 1, 6, 4]
    videos = make_videos(lengths)
    labels = torch.tensor([0, 2, 3, 1])
    with torch.no_grad():
        vel, rate = model(videos, labels)
        for b, n in enumerate(lengths):
            lo, hi = int(videos.cu_seqlens[b]), int(videos.cu_seqlens[b + 1])
            alone = PackedVideos.from_list([videos.frames[lo:hi]], times=[videos.times[lo:hi]],
                                           is_context=[videos.is_context[lo:hi]])
            v1, r1 = model(alone, labels[b : b + 1])
            # "clean" divides by 1 - t, scaling rounding differences with the velocity
            rtol = 1e-5 if model.config.prediction == "clean" else 0.0
            torch.testing.assert_close(v1, vel[lo:hi], atol=1e-5, rtol=rtol)
            assert (rate[lo:hi] - r1).abs().max() <= 1e-5


@pytest.mark.parametrize("window", [0, 1, 2])
def test_window_locality_one_block(window):
    model = make_model(depth=1, window=window)
    videos = make_videos([7])
    f = 3
    with torch.no_grad():
        base, base_rate = model(videos)
        for g in range(7):
            frames = videos.frames.clone()
            frames[g] += torch.randn_like(frames[g])
            vel, rate = model(videos.replace(frames=frames))
            changed = (vel[f] - base[f]).abs().max() > 1e-6 or (rate[f] - base_rate[f]).abs() > 1e-6
            assert changed == (abs(g - f) <= window), (g, f)


def test_causal_frames_do_not_see_the_future():
    model = make_model(depth=2, attention="causal")
    videos = make_videos([5])
    with torch.no_grad():
        base, _ = model(videos)
        frames = videos.frames.clone()
        frames[3] += 1.0
        vel, _ = model(videos.replace(frames=frames))
    assert torch.equal(vel[:3], base[:3])
    assert not torch.allclose(vel[3:], base[3:])


def test_zero_init_outputs():
    cfg = FlowceptionConfig(in_channels=2, frame_size=(4, 6), patch_size=2, depth=2, hidden_size=48, num_heads=4)
    vel, rate = FlowceptionDiT(cfg)(make_videos([2, 3]))
    assert torch.equal(vel, torch.zeros_like(vel)) and torch.equal(rate, torch.zeros_like(rate))


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_clean_prediction_is_the_velocity_to_the_predicted_frame(attention):
    # Same weights: the "clean" model's velocity is (raw output − X_t) / (1 − t), 0 at t = 1.
    velocity_model = make_model(attention=attention, window=1)
    clean_model = FlowceptionDiT(FlowceptionConfig(**{**velocity_model.config.to_dict(), "prediction": "clean"}))
    clean_model.load_state_dict(velocity_model.state_dict())
    videos = make_videos([3, 5, 4], seed=1)
    times = torch.where(videos.is_context, videos.times, videos.times * 0.99)
    times[-1] = 1 - 1e-4  # within the loss weight's floor: the velocity is still exact
    videos = videos.replace(times=times)
    with torch.no_grad():
        raw, rate = velocity_model(videos)
        vel, rate_clean = clean_model(videos)
    assert torch.equal(rate, rate_clean)
    flowing = videos.times < 1
    gap = (1 - videos.times)[:, None, None, None]
    torch.testing.assert_close(vel[flowing], ((raw - videos.frames) / gap)[flowing])
    assert torch.equal(vel[~flowing], torch.zeros_like(vel[~flowing]))
    # One Euler step of size 1 − t lands on the predicted frame, however close t is to 1.
    torch.testing.assert_close((videos.frames + gap * vel)[flowing], raw[flowing])


def test_clean_prediction_keeps_times_near_one_in_bfloat16():
    # bf16 rounds t = 0.999 to 1; the velocity must still move the frame.
    model = make_model(prediction="clean").to(torch.bfloat16)
    videos = make_videos([3], context_every=10)
    videos = videos.replace(frames=videos.frames.to(torch.bfloat16), times=torch.tensor([0.999, 0.5, 1.0]))
    with torch.no_grad():
        vel, _ = model(videos)
    assert vel.dtype == torch.bfloat16
    assert vel[0].abs().max() > 10 and vel[1].abs().max() > 0 and not vel[2].any()


def test_velocity_loss_weight_caps_the_clean_frame_weight():
    times = torch.tensor([0.0, 0.5, 0.9, 0.95, 0.99, 1.0])
    assert make_model().velocity_loss_weight(times) is None
    weight = make_model(prediction="clean", clean_min_gap=0.1).velocity_loss_weight(times)
    torch.testing.assert_close(weight, torch.tensor([1.0, 1.0, 1.0, 0.25, 0.01, 0.0]))
    # weight · ‖v − (X¹ − ε)‖² = ‖X̂¹ − X¹‖² / max(1 − t, gap)² for the clean prediction X̂¹
    g = torch.Generator().manual_seed(0)
    x1, eps, x_hat = (torch.randn(5, 7, generator=g) for _ in range(3))
    t = times[:5, None]
    x_t = t * x1 + (1 - t) * eps
    v = (x_hat - x_t) / (1 - t)
    lhs = weight[:5] * (v - (x1 - eps)).square().sum(1)
    rhs = (x_hat - x1).square().sum(1) / (1 - t[:, 0]).clamp(min=0.1).square()
    torch.testing.assert_close(lhs, rhs)


def test_context_channel_is_used():
    model = make_model(depth=1)
    videos = make_videos([4], context_every=10)  # only frame 0 is context
    with torch.no_grad():
        a, _ = model(videos)
        b, _ = model(videos.drop_context())
    assert not torch.allclose(a, b)


def test_length_conditioning_sees_count_and_index():
    # With window = 0 a frame attends only to itself, so only the embeddings can tell it how long
    # its video is and where it sits.
    plain, counted = make_model(window=0), make_model(window=0, length_conditioning=True)
    frame = make_videos([1])
    for model, expect_change in ((plain, False), (counted, True)):
        with torch.no_grad():
            alone = model(frame)
            in_video = model(PackedVideos.from_list([torch.cat([frame.frames, torch.randn(4, 2, 4, 6)])],
                                                    times=[torch.cat([frame.times, torch.rand(4)])],
                                                    is_context=[torch.arange(5) == 0]))
        for x, y in zip(alone, in_video):
            assert torch.allclose(x, y[:1], atol=1e-6) != expect_change


def test_swiglu_feed_forward():
    gelu, swiglu = make_model(), make_model(mlp="swiglu")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(swiglu) - count(gelu)) <= 0.01 * count(gelu)  # two thirds of the units: the same size
    block = swiglu.blocks[0]
    assert block.fc1.out_features == 2 * block.fc2.in_features == 2 * swiglu.config.mlp_hidden
    h = torch.randn(5, swiglu.config.hidden_size)
    value, gate = (h @ block.fc1.weight.T + block.fc1.bias).split(swiglu.config.mlp_hidden, dim=-1)
    expected = (value * gate * torch.sigmoid(gate)) @ block.fc2.weight.T + block.fc2.bias
    torch.testing.assert_close(block.feed_forward(h), expected)
    # A config saved before the option existed loads as the GELU layer it was trained with.
    old = {k: v for k, v in gelu.config.to_dict().items() if k != "mlp"}
    assert FlowceptionConfig.from_dict(old).mlp == "gelu"


def test_save_and_load_roundtrip(tmp_path):
    model = make_model(num_classes=2, window=1, length_conditioning=True)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["window"] == 1
    loaded = FlowceptionDiT.from_pretrained(tmp_path / "m")
    videos = make_videos([3, 2])
    with torch.no_grad():
        for x, y in zip(model(videos), loaded(videos)):
            assert torch.equal(x, y)
    model.save_pretrained(tmp_path / "m")  # overwriting an existing directory works


def test_load_refuses_pickle_and_bad_files(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    torch.save(model.state_dict(), weights)  # a pickle payload under the safetensors name
    with pytest.raises(ValueError, match="model.safetensors"):
        FlowceptionDiT.from_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match="model.safetensors"):
        FlowceptionDiT.from_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"depth": 3, "bogus": 1}')
    with pytest.raises(ValueError, match="config.json"):
        FlowceptionDiT.from_pretrained(tmp_path / "m")


def test_presets():
    for name in PRESETS:
        cfg = FlowceptionConfig.from_preset(name, in_channels=4, frame_size=32, patch_size=2, window=2)
        assert cfg.window == 2 and cfg.frame_size == (32, 32)
    paper = FlowceptionConfig.from_preset("paper", in_channels=16, frame_size=(8, 8), patch_size=2)
    assert (paper.depth, paper.hidden_size, paper.num_heads) == (38, 1536, 24)
    with torch.device("meta"):  # constructible without allocating 2B parameters
        model = FlowceptionDiT(paper)
    assert sum(p.numel() for p in model.parameters()) > 1e9
    with pytest.raises(ValueError, match="unknown preset"):
        FlowceptionConfig.from_preset("huge")


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(frame_size=(5, 6)), "divisible by patch_size"),
        (dict(hidden_size=50), "divisible by num_heads"),
        (dict(window=-2), "window"),
        (dict(attention="sideways"), "attention"),
        (dict(depth=0), "depth"),
        (dict(length_conditioning=True, attention="causal"), "length_conditioning"),
        (dict(prediction="noise"), "prediction"),
        (dict(clean_min_gap=0.0), "clean_min_gap"),
        (dict(clean_min_gap=1.5), "clean_min_gap"),
        (dict(mlp="relu"), "mlp"),
        (dict(mlp_ratio=0.01), "no hidden units"),
    ],
)
def test_config_errors(overrides, match):
    kwargs = dict(in_channels=2, frame_size=(4, 6), patch_size=2, depth=2, hidden_size=48, num_heads=4)
    with pytest.raises(ValueError, match=match):
        FlowceptionConfig(**{**kwargs, **overrides})


def test_forward_bad_input():
    model = make_model(num_classes=2)
    good = make_videos([2, 3])
    with pytest.raises(ValueError, match="frames must have frames of shape"):
        model(make_videos([2], channels=3))
    with pytest.raises(ValueError, match="frames must have frames of shape"):
        model(make_videos([2], size=(4, 4)))
    with pytest.raises(ValueError, match="times"):
        model(good.replace(times=good.times * 2))
    with pytest.raises(ValueError, match="times"):
        model(good.replace(times=torch.full_like(good.times, float("nan"))))
    with pytest.raises(ValueError, match="is_context"):
        model(good.replace(is_context=good.is_context[:-1]))
    with pytest.raises(ValueError, match="empty"):
        model(PackedVideos.from_list([torch.zeros(0, 2, 4, 6)]))
    with pytest.raises(ValueError, match="labels"):
        model(good, torch.tensor([0]))
    with pytest.raises(ValueError, match="labels"):
        model(good, torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="PackedVideos"):
        model(good.frames)
    with pytest.raises(ValueError, match="unconditional"):
        make_model()(good, torch.tensor([0, 1]))


# ---- training signal and FLOP accounting ----------------------------------------------------


def test_tiny_model_overfits_one_training_state():
    """Excess loss (above the Poisson NLL's floor Σ K − K log K) falls >= 90% within 300 steps."""
    from flowception_ext import NoisingConfig, flowception_loss, make_training_state

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    clean = PackedVideos.from_list([torch.rand(n, 2, 4, 6, generator=g) * 2 - 1 for n in (5, 8, 3)])
    state = make_training_state(clean, generator=g, config=NoisingConfig(p_uncond=0.0))
    model = FlowceptionDiT(FlowceptionConfig(in_channels=2, frame_size=(4, 6), patch_size=2, depth=2,
                                             hidden_size=64, num_heads=4))
    k = state.insert_counts[state.inputs.insertable].double()
    floor = float(torch.where(k > 0, k - k * k.clamp(min=1).log(), 0).mean())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = flowception_loss(*model(state.inputs), state).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] - floor <= 0.1 * (losses[0] - floor), (losses[0], losses[-1], floor)


def linear_flops(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


@pytest.mark.parametrize("window, mlp", [(None, "gelu"), (1, "gelu"), (None, "swiglu")])
def test_flop_counter_matches_analytic_count(window, mlp):
    from torch.utils.flop_counter import FlopCounterMode

    from flowception_ext import build_info

    if not build_info()["cpu_kernels"]:
        pytest.skip("the flop formulas are registered on the compiled ops")
    cfg = FlowceptionConfig(in_channels=2, frame_size=(4, 6), patch_size=2, depth=2, hidden_size=48, num_heads=4,
                            window=window, mlp=mlp)
    model = FlowceptionDiT(cfg)
    lengths = [3, 1, 6]
    videos = make_videos(lengths)
    with FlopCounterMode(display=False) as counter:
        velocity, log_rate = model(videos)
        (velocity.square().mean() + log_rate.square().mean()).backward()
    measured = counter.get_total_flops()

    n, p, d, c = sum(lengths), cfg.tokens_per_frame, cfg.hidden_size, cfg.in_channels
    t, l, pp = n * p, cfg.patch_tokens, cfg.patch_size**2
    hidden = int(d * cfg.mlp_ratio) if mlp == "gelu" else 128  # SwiGLU: 2/3 of 4 · 48 units, two projections
    fc1_out = hidden if mlp == "gelu" else 2 * hidden
    fwd_and_bwd = lambda f: 3 * f  # noqa: E731  forward + grad input + grad weight
    total = linear_flops(n * l, 2 * c * pp, d) * 2  # patch embedding: no grad w.r.t. its input
    total += linear_flops(n, 256, d) * 2 + fwd_and_bwd(linear_flops(n, d, d))  # time embedding MLP
    per_block = (linear_flops(n, d, 6 * d) + linear_flops(t, d, 3 * d) + linear_flops(t, d, d)
                 + linear_flops(t, d, fc1_out) + linear_flops(t, hidden, d))
    total += cfg.depth * fwd_and_bwd(per_block)
    total += fwd_and_bwd(linear_flops(n, d, 2 * d) + linear_flops(n * l, d, c * pp))  # final AdaLN + velocity head
    total += fwd_and_bwd(linear_flops(n, d, d) + linear_flops(n, d, 1))  # rate head
    w = 10**9 if window is None else window
    pairs = sum(min(f + w, m - 1) - max(f - w, 0) + 1 for m in lengths for f in range(m)) * p * p
    total += cfg.depth * 3.5 * 4 * cfg.head_dim * cfg.num_heads * pairs  # attention: forward 1x, backward 2.5x (as SDPA)
    # per-element AdaLN ops (their registered formulas): per block modulate + fused + gated residual,
    # forward (8 + 10 + 2) and backward (15 + 19 + 3); the final modulate 8 + 15
    total += (cfg.depth * (8 + 10 + 2 + 15 + 19 + 3) + 8 + 15) * t * d
    assert abs(measured - total) <= 0.01 * total, (measured, total)
