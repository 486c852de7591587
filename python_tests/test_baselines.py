"""Baseline samplers: requested lengths, KV cache == recomputation, determinism, bad input."""

from __future__ import annotations

import pytest
import torch

from flowception_ext.sampling import Context, SampleOutput, sample_autoregressive, sample_full_sequence
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
    assert cached.num_frame_evals < recomputed.num_frame_evals


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
    assert out.num_model_evals == 4


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
    with pytest.raises(ValueError, match="context frames of video 0 have shape"):
        sample_full_sequence(model, [torch.randn(1, 3, 4, 6)], num_frames=3)
    with pytest.raises(ValueError, match="more than num_frames"):
        sample_full_sequence(model, [torch.randn(4, 2, 4, 6)], num_frames=3)
    with pytest.raises(ValueError, match="must be a prefix"):
        sample_full_sequence(model, Context.interpolate(torch.randn(2, 2, 4, 6)), num_frames=3)
    with pytest.raises(ValueError, match="same number of context"):
        sample_autoregressive(model, [torch.randn(1, 2, 4, 6), torch.randn(2, 2, 4, 6)], num_frames=3)
    with pytest.raises(ValueError, match="num_videos"):
        sample_full_sequence(model, num_frames=3, num_videos=0)


class FakeCudaGenerator(torch.Generator):
    """A CPU generator that claims to live on cuda:0 (to test the device checks without a GPU)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)


@pytest.mark.parametrize("sampler", ["full_sequence", "autoregressive"])
def test_cpu_generators_give_the_same_videos_twice_and_other_devices_are_refused(sampler):
    model = make_model(rate_head=False)

    def run(generator):
        if sampler == "full_sequence":
            return sample_full_sequence(model, num_videos=2, num_frames=3, steps=2, generator=generator, progress=False)
        return sample_autoregressive(model, num_videos=2, num_frames=3, steps_per_frame=2, generator=generator,
                                     progress=False)
    for make in (lambda: torch.Generator().manual_seed(0), lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]):
        a, b = run(make()), run(make())
        assert all(torch.equal(x, y) for x, y in zip(a.videos, b.videos))
    with pytest.raises(ValueError, match="generator is on cuda:0 but the model is on cpu"):
        run(FakeCudaGenerator())
    with pytest.raises(ValueError, match=r"generator\[0\] is on cuda:0"):
        run([FakeCudaGenerator(), torch.Generator()])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        run(7)


def test_baseline_training_states_refuse_rather_than_drop_a_generator():
    from flowception_ext import PackedVideos
    from flowception_ext.baselines.training import make_autoregressive_state, make_full_sequence_state

    videos = PackedVideos.from_list([torch.randn(3, 2, 4, 6), torch.randn(2, 2, 4, 6)])
    for make in (make_full_sequence_state, make_autoregressive_state):
        a = make(videos, generator=torch.Generator().manual_seed(1))
        b = make(videos, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a.inputs.frames, b.inputs.frames) and torch.equal(a.task, b.task)
        with pytest.raises(ValueError, match="generator is on cuda:0 but the frames are on cpu"):
            make(videos, generator=FakeCudaGenerator())


@pytest.mark.cuda
def test_cuda_baselines_with_a_cpu_generator_match_the_cpu():
    from flowception_ext import PackedVideos
    from flowception_ext.baselines.training import make_full_sequence_state
    from flowception_ext.noising import NoisingConfig

    model = make_model(rate_head=False)
    ctx = [torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    kw = dict(num_frames=4, steps=3, progress=False)
    cpu = sample_full_sequence(model, ctx, generator=torch.Generator().manual_seed(0), **kw)
    gpu = sample_full_sequence(model.cuda(), ctx, generator=torch.Generator().manual_seed(0), **kw)
    for a, b in zip(cpu.videos, gpu.videos):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
    out = sample_autoregressive(model, ctx, num_frames=3, steps_per_frame=2, progress=False,
                                generator=torch.Generator(device="cuda").manual_seed(0))
    assert out.videos[0].device.type == "cuda"
    # Training states: a CPU generator gives the CPU state on the GPU; a CUDA one is used, not dropped.
    config = NoisingConfig(tasks={"unconditional": 0.5, "image_to_video": 0.5})
    videos = PackedVideos.from_list([torch.randn(3, 2, 4, 6) for _ in range(8)])
    on_cpu = make_full_sequence_state(videos, generator=torch.Generator().manual_seed(2), config=config)
    on_gpu = make_full_sequence_state(videos.to("cuda"), generator=torch.Generator().manual_seed(2), config=config)
    assert torch.equal(on_gpu.task.cpu(), on_cpu.task)
    torch.testing.assert_close(on_gpu.inputs.frames.cpu(), on_cpu.inputs.frames)
    tasks = [make_full_sequence_state(videos.to("cuda"), generator=torch.Generator(device="cuda").manual_seed(2),
                                      config=config).task for _ in range(2)]
    assert torch.equal(tasks[0], tasks[1])


@pytest.mark.parametrize("sampler", ["full_sequence", "autoregressive"])
def test_one_convention_context_callback_output(sampler):
    """The baselines take a Context like sample() does, call back after every step and return a SampleOutput."""
    model = make_model(attention="causal" if sampler == "autoregressive" else "bidirectional", rate_head=False)
    run = sample_full_sequence if sampler == "full_sequence" else sample_autoregressive
    steps = {"steps": 3} if sampler == "full_sequence" else {"steps_per_frame": 3}
    image = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(4))
    kw = dict(num_frames=4, num_videos=2, progress=False, **steps)
    with_context = run(model, Context.image_to_video(image), generator=torch.Generator().manual_seed(0), **kw)
    with_tensors = run(model, [image[None], image[None]], generator=torch.Generator().manual_seed(0), **kw)
    assert isinstance(with_context, SampleOutput) and with_context.completed
    assert all(torch.equal(a, b) for a, b in zip(with_context.videos, with_tensors.videos))
    for video, flags, start in zip(with_context.videos, with_context.is_context, with_context.insert_step):
        assert torch.equal(video[0], image) and flags.tolist() == [True, False, False, False]
        assert start.shape == (4,) and start[0] == -1
    assert with_context.num_model_evals > 0 and with_context.num_frame_evals >= with_context.num_model_evals

    seen = []

    def stop_after_two(step, state):
        seen.append((step, state.videos.num_videos, bool(state.finished.any())))
        return step == 1

    stopped = run(model, Context.image_to_video(image), callback=stop_after_two, **kw)
    assert not stopped.completed and stopped.num_steps == 2 and [s[0] for s in seen] == [0, 1]
    assert all(n == 2 and finished for _, n, finished in seen)  # the context frame is final from the start
    with pytest.raises(TypeError, match="callback"):
        run(model, callback=3, **kw)


def test_old_import_path_still_works_with_a_warning():
    import flowception_ext.baselines as baselines

    with pytest.warns(DeprecationWarning, match="moved to flowception_ext.sampling"):
        assert baselines.sample_full_sequence is sample_full_sequence
    with pytest.warns(DeprecationWarning):
        assert baselines.BaselineOutput is SampleOutput
    with pytest.raises(AttributeError):
        baselines.sample_nothing  # noqa: B018
