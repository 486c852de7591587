"""The recipe options of docs/experiments/recipe_audit.md: start frames, context noise, the
insertion loss's slots, the rotary positions, the context channels' initialisation. Each off by
default, leaving the old behaviour, but ``context_init`` (measured better: recipe_study.md)."""

from __future__ import annotations

import pytest
import torch

import flowception_ext as fe
from flowception_ext.losses import flowception_loss
from flowception_ext.model.dit import rope_angles, rope_axis_dims
from flowception_ext.noising import ROLE_CONTEXT, ROLE_START, NoisingConfig, make_training_state


def batch(lengths=(5, 1, 7, 2), seed=0) -> fe.PackedVideos:
    g = torch.Generator().manual_seed(seed)
    return fe.PackedVideos.from_list([torch.randn(n, 3, 4, 4, generator=g) for n in lengths])


def draw(config: NoisingConfig, seed=1, videos=None):
    return make_training_state(videos or batch(), generator=torch.Generator().manual_seed(seed), config=config)


def test_start_last_makes_the_last_frame_a_starting_frame():
    videos = batch()
    last = torch.zeros(videos.num_frames, dtype=torch.bool)
    last[videos.cu_seqlens[1:] - 1] = True
    for seed in range(5):
        state = draw(NoisingConfig(start_last=True, tasks={"unconditional": 0.5, "image_to_video": 0.5}), seed)
        roles = state.roles.long()
        assert bool(((roles == ROLE_START) | (roles == ROLE_CONTEXT))[last].all())
        assert bool((state.t_ins[last] == 0).all())
        off = draw(NoisingConfig(tasks={"unconditional": 0.5, "image_to_video": 0.5}), seed)
        assert torch.equal(off.roles[~last], state.roles[~last])  # the other frames' roles are unchanged
    # off: a long video's last frame is inserted some of the time
    assert any(int(draw(NoisingConfig(), seed).roles[last][2]) != ROLE_START for seed in range(10))


def test_context_noise_jitters_the_context_inputs_only():
    config = dict(tasks={"image_to_video": 1.0}, p_uncond=0.0)
    clean = draw(NoisingConfig(**config))
    noisy = draw(NoisingConfig(**config, context_noise=0.1))
    ctx = clean.inputs.is_context
    assert bool(ctx.any())
    src = clean.source_index[ctx]
    assert torch.equal(clean.inputs.frames[ctx], batch().frames[src])  # 0: exactly the clean frames
    jitter = noisy.inputs.frames[ctx] - batch().frames[src]
    assert 0.05 < float(jitter.std()) < 0.2
    assert torch.equal(noisy.inputs.frames[~ctx], clean.inputs.frames[~ctx])  # drawn after the rest
    assert torch.equal(noisy.velocity_target, clean.velocity_target)
    with pytest.raises(ValueError, match="context_noise"):
        NoisingConfig(context_noise=-1)


def test_rate_slots_flowing_drops_the_slots_of_finished_frames():
    state = draw(NoisingConfig(tasks={"unconditional": 0.5, "image_to_video": 0.5}), seed=3)
    n = state.inputs.num_frames
    log_rate = torch.linspace(-1, 1, n)
    velocity = torch.zeros_like(state.velocity_target)
    every = flowception_loss(velocity, log_rate, state)
    flowing = flowception_loss(velocity, log_rate, state, rate_slots="flowing")
    nll = log_rate.exp() - state.insert_counts * log_rate
    keep = state.inputs.insertable & (state.flowing | state.inputs.is_context)
    assert torch.allclose(flowing.insertion, nll[keep].sum() / keep.sum())
    assert torch.allclose(every.insertion, nll[state.inputs.insertable].sum() / state.inputs.insertable.sum())
    with pytest.raises(ValueError, match="rate_slots"):
        flowception_loss(velocity, log_rate, state, rate_slots="all")
    with pytest.raises(ValueError, match="rate_slots"):
        fe.TrainConfig(rate_slots="all")


def test_rope_frame_scale_and_dims():
    assert rope_axis_dims(24) == (8, 8, 8) and rope_axis_dims(24, 16) == (16, 4, 4) and rope_axis_dims(30, 30) == (30, 0, 0)
    positions = torch.tensor([[3.0, 1.0, 2.0]])
    base = rope_angles(positions, 24, 10000.0)
    assert torch.allclose(rope_angles(positions * torch.tensor([20.0, 1, 1]), 24, 10000.0)[:, :4], 20 * base[:, :4])
    torch.manual_seed(0)
    model = fe.FlowceptionDiT(fe.FlowceptionConfig.from_preset("tiny", frame_size=4, patch_size=2,
                                                               rope_frame_scale=20.0, rope_spatial_scale=2.0))
    pos = model.token_positions(batch())
    assert torch.equal(pos[:5, 0], torch.zeros(5)) and torch.equal(pos[5:10, 0], torch.full((5,), 20.0))
    assert float(pos[:4, 1:].max()) == 2.0  # rows and columns 0..1, doubled
    for bad in (dict(rope_frame_scale=0.0), dict(rope_frame_dims=7), dict(rope_frame_dims=22), dict(rope_frame_dims=26)):
        with pytest.raises(ValueError, match="rope_"):
            fe.FlowceptionConfig.from_preset("tiny", **bad)


def test_qk_norm_normalises_queries_and_keys_per_head():
    torch.manual_seed(0)
    model = fe.FlowceptionDiT(fe.FlowceptionConfig.from_preset("tiny", frame_size=4, patch_size=2, qk_norm=True))
    assert {"blocks.0.q_norm.weight", "blocks.0.k_norm.weight"} <= set(model.state_dict())
    seen = {}
    model.blocks[0].q_norm.register_forward_hook(lambda m, i, o: seen.setdefault("q", o))
    velocity, _ = model(batch())
    rms = seen["q"].square().mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)  # unit RMS per head (weights start at 1)
    velocity.sum().backward()
    assert model.blocks[0].q_norm.weight.grad is not None
    plain = fe.FlowceptionDiT(fe.FlowceptionConfig.from_preset("tiny", frame_size=4, patch_size=2))
    assert "blocks.0.q_norm.weight" not in plain.state_dict()


def _randomised(config: fe.FlowceptionConfig) -> fe.FlowceptionDiT:
    """A model whose zero-initialised layers (adaLN, output) are made random, so its output
    depends on its input; the patch embedding keeps its initialisation."""
    torch.manual_seed(0)
    model = fe.FlowceptionDiT(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith("patch_embed") and bool((param == 0).all()):
                param.normal_(std=0.05)
    return model.eval()


def test_context_init_zero_makes_a_context_frame_read_as_a_clean_frame():
    config = dict(frame_size=4, patch_size=2)
    frames = batch((4, 3)).frames
    times = torch.tensor([1.0, 0.3, 0.5, 0.7, 1.0, 0.2, 0.9])
    flagged = fe.PackedVideos(frames, torch.tensor([0, 4, 7]), times,
                              torch.tensor([True, False, False, False, True, False, False]), torch.ones(7, dtype=torch.bool))
    plain = flagged.drop_context()  # the same frames, clean at t = 1, not flagged
    zero, rand = (_randomised(fe.FlowceptionConfig.from_preset("tiny", **config, context_init=c)) for c in ("zero", "random"))
    assert fe.FlowceptionConfig().context_init == "zero"
    half = zero.patch_embed.in_features // 2
    assert float(zero.patch_embed.weight[:, half:].abs().max()) == 0.0
    assert float(rand.patch_embed.weight[:, half:].abs().max()) > 0.0
    with torch.no_grad():
        assert torch.allclose(zero(flagged)[0], zero(plain)[0], atol=1e-6)
        assert not torch.allclose(rand(flagged)[0], rand(plain)[0], atol=1e-3)
        # without context the two initialisations are the same network (same seed, same draws)
        assert torch.allclose(zero(plain)[0], rand(plain)[0], atol=1e-6)
    with pytest.raises(ValueError, match="context_init"):
        fe.FlowceptionConfig.from_preset("tiny", context_init="ones")
