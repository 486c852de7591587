"""Baseline samplers: requested lengths, KV cache == recomputation, determinism, bad input."""

from __future__ import annotations

import pytest
import torch

from flowception_ext.baselines import sample_autoregressive, sample_full_sequence
from test_model import make_model


@pytest.mark.parametrize("window", [None, 1])
def test_kv_cache_matches_recomputation(window):
    model = make_model(attention="causal", window=window, rate_head=False)
    ctx = [torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    kw = dict(num_frames=5, steps_per_frame=3, generator=torch.Generator().manual_seed(0), progress=False)
    cached = sample_autoregressive(model, ctx, use_cache=True, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    recomputed = sample_autoregressive(model, ctx, use_cache=False, **kw)
    for a, b, c in zip(cached.videos, recomputed.videos, ctx):
        assert a.shape == (5, 2, 4, 6)
        assert torch.equal(a[:1], c)
        assert (a - b).abs().max() <= 1e-5
    assert cached.frame_evaluations < recomputed.frame_evaluations


def test_autoregressive_bidirectional_and_unconditional():
    model = make_model(rate_head=False)
    out = sample_autoregressive(model, num_videos=2, num_frames=3, steps_per_frame=2, progress=False)
    assert [v.shape[0] for v in out.videos] == [3, 3] and not out.info["use_cache"]
    with pytest.raises(ValueError, match="frame-causal"):
        sample_autoregressive(model, num_videos=1, num_frames=2, use_cache=True, progress=False)


def test_full_sequence_lengths_and_context():
    model = make_model(rate_head=False)
    ctx = [torch.randn(1, 2, 4, 6), torch.randn(2, 2, 4, 6)]
    out = sample_full_sequence(model, ctx, num_frames=6, steps=4, progress=False)
    assert [v.shape for v in out.videos] == [torch.Size([6, 2, 4, 6])] * 2
    assert torch.equal(out.videos[0][:1], ctx[0]) and torch.equal(out.videos[1][:2], ctx[1])
    assert out.model_evaluations == 4


def test_per_video_generators_make_videos_batch_independent():
    model = make_model(rate_head=False)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    both = sample_full_sequence(model, num_videos=2, num_frames=3, steps=2, generator=gens([1, 2]), progress=False)
    alone = sample_full_sequence(model, num_videos=1, num_frames=3, steps=2, generator=gens([2]), progress=False)
    assert (both.videos[1] - alone.videos[0]).abs().max() <= 1e-5
    again = sample_full_sequence(model, num_videos=2, num_frames=3, steps=2, generator=gens([1, 2]), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(both.videos, again.videos))


def test_bad_input():
    model = make_model(rate_head=False)
    with pytest.raises(ValueError, match="steps"):
        sample_full_sequence(model, num_videos=1, num_frames=3, steps=0)
    with pytest.raises(ValueError, match="context\\[0\\]"):
        sample_full_sequence(model, [torch.randn(1, 3, 4, 6)], num_frames=3)
    with pytest.raises(ValueError, match="same number of context"):
        sample_autoregressive(model, [torch.randn(1, 2, 4, 6), torch.randn(2, 2, 4, 6)], num_frames=3)
    with pytest.raises(ValueError, match="num_videos"):
        sample_full_sequence(model, num_frames=3)
