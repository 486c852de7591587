"""The Flowception sampler (docs/algorithm.md §6), tested with stub models."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from scipy import stats
from torch import nn

from flowception_ext import PackedVideos
from flowception_ext.sampling import Context, SampleOutput, guided_prediction, sample
from flowception_ext.schedules import kappa_from_name

SHAPE = (1, 2, 2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Stub(nn.Module):
    """``velocity(videos, labels)`` and ``log_rate(videos, labels)`` given as functions; records its calls."""

    def __init__(self, velocity=None, log_rate=None):
        super().__init__()
        self.velocity = velocity or (lambda v, labels: torch.zeros_like(v.frames))
        self.log_rate = log_rate or (lambda v, labels: torch.full((v.num_frames,), -math.inf))
        self.calls: list[tuple[PackedVideos, object, bool]] = []

    def forward(self, videos: PackedVideos, labels=None):
        self.calls.append((videos, labels, self.training))
        return self.velocity(videos, labels), self.log_rate(videos, labels)


def constant_rate(log_rate: float) -> Stub:
    return Stub(velocity=lambda v, labels: -v.frames, log_rate=lambda v, labels: torch.full((v.num_frames,), log_rate))


def value_rate() -> Stub:
    """Rates and velocities that depend on each frame's own values only (batch-independent)."""
    return Stub(velocity=lambda v, labels: -v.frames, log_rate=lambda v, labels: v.frames[:, 0, 0, 0].clamp(-3, 1) - 0.5)


class Oracle(nn.Module):
    """Exact insertion rates for a hidden target length ``n``: the model tracks a hidden final
    position for every present frame (new frames, recognised by ``t == 0``, take random missing
    positions of their slot's gap; surplus Poisson frames get fractional positions, which fill
    nothing) and returns as each slot's log-rate the log of the number of integer positions still
    missing between it and the next present frame (-inf for none)."""

    def __init__(self, n: int, seed: int = 0):
        super().__init__()
        self.n, self.rng = n, random.Random(seed)
        self.positions: list[list[float]] | None = None

    def forward(self, videos: PackedVideos, labels=None):
        if self.positions is None:  # one starting frame per video, at position 0
            assert videos.lengths.tolist() == [1] * videos.num_videos
            self.positions = [[0.0] for _ in range(videos.num_videos)]
        rates = []
        for b, (times, old) in enumerate(zip(videos.split(videos.times), self.positions)):
            fresh = (times == 0).tolist()
            if len(fresh) != len(old):  # frames were inserted since the last call
                self.positions[b] = self._assign(old, fresh)
            pos = self.positions[b]
            for p, q in zip(pos, pos[1:] + [float(self.n)]):
                missing = math.ceil(q) - math.floor(p) - 1
                rates.append(math.log(missing) if missing > 0 else -math.inf)
        return torch.zeros_like(videos.frames), torch.tensor(rates)

    def _assign(self, old: list[float], fresh: list[bool]) -> list[float]:
        """Old frames keep their positions, in order; each run of new frames takes random free
        positions of its gap (and positions between the last of them and the gap's end if the
        sampler inserted more frames than are missing)."""
        old_iter = iter(old)
        result = [math.nan if is_new else next(old_iter) for is_new in fresh]
        j = 0
        while j < len(result):
            if not math.isnan(result[j]):
                j += 1
                continue
            start = j
            while j < len(result) and math.isnan(result[j]):
                j += 1
            left = result[start - 1]
            right = result[j] if j < len(result) else float(self.n)
            free = list(range(math.floor(left) + 1, math.ceil(right)))
            chosen = sorted(self.rng.sample(free, min(j - start, len(free))))
            surplus = j - start - len(chosen)
            base = chosen[-1] if chosen else left
            result[start:j] = chosen + [base + (right - base) * (i + 1) / (surplus + 1) for i in range(surplus)]
        return result


def run(model, context=None, **kwargs) -> SampleOutput:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("generator", gen(0))
    if context is None:
        kwargs.setdefault("frame_shape", SHAPE)
    return sample(model, context, **kwargs)


def keyframes(k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, *SHAPE, generator=gen(100 + seed))


# ---- 1. no insertion: exact step count, context untouched ----------------------------------


@pytest.mark.parametrize("steps", [1, 7, 10])
@pytest.mark.parametrize("with_context", [False, True])
def test_zero_rate_no_insertion_and_exact_steps(steps, with_context):
    model = Stub(velocity=lambda v, labels: torch.ones_like(v.frames))  # nonzero velocity, even for context frames
    context = Context.extend(keyframes(3)) if with_context else None
    seen = []
    out = run(model, context, num_videos=2, n_start=2, steps=steps,
              callback=lambda step, state: seen.append((step, state.t_g, state.videos.times.clone(), state.finished.clone())))
    start = [False] * 3 + [True] * 2 if with_context else [True] * 2
    assert out.lengths == [len(start)] * 2
    assert out.num_steps == out.num_model_evals == steps == math.ceil(1 / (1 / steps))
    assert out.completed and out.max_frames_hit == [False, False]
    for step, t_g, times, finished in seen:
        assert t_g == pytest.approx((step + 1) / steps)
        flowing = torch.tensor(start * 2)
        torch.testing.assert_close(times[flowing], torch.full((4,), (step + 1) / steps), rtol=0, atol=1e-6)
        last = step == steps - 1
        assert finished[flowing].all() == last and finished[flowing].any() == last
        assert finished[~flowing].all()  # the passive prefix of an extension is final from the start
    assert (seen[-1][2] == 1).all()
    for b in range(2):
        assert out.insert_step[b].tolist() == [-1] * len(start)
        assert out.is_context[b].tolist() == [not s for s in start]
        if with_context:
            assert torch.equal(out.videos[b][:3], keyframes(3))  # bit-identical, in order


def test_flow_reaches_noise_plus_velocity_with_gamma():
    noise = run(Stub(), num_videos=2, steps=9).videos  # zero velocity: the starting noise itself
    times = []
    v = torch.tensor([0.5, -2.0, 3.0, 1.0]).view(1, *SHAPE)
    out = run(Stub(velocity=lambda p, labels: v.expand_as(p.frames)), num_videos=2, steps=9, gamma=2.0,
              callback=lambda step, state: times.append(float(state.videos.times[0])))
    torch.testing.assert_close(times, [((k + 1) / 9) ** 2 for k in range(9)])
    for a, b in zip(out.videos, noise):
        torch.testing.assert_close(a, b + v, rtol=1e-5, atol=1e-5)


# ---- 2. exact-rate oracle: lengths and insertion times ------------------------------------


@pytest.mark.parametrize("insertion,kappa", [("bernoulli", "linear"), ("poisson", "linear"), ("bernoulli", "cosine")])
def test_oracle_rates_reach_target_length_and_times_follow_kappa(insertion, kappa):
    n, steps = 20, 100
    out = run(Oracle(n, seed=1), num_videos=64, steps=steps, insertion=insertion, kappa=kappa)
    mean = sum(out.lengths) / len(out.lengths)
    assert abs(mean - n) <= 0.03 * n, mean
    inserted = torch.cat(out.insert_step) >= 0
    assert int(inserted.sum()) > 1000
    # a frame inserted during step k was drawn on [k h, (k + 1) h): test the step midpoints
    times = torch.cat(out.insert_time)[inserted] + 0.5 / steps
    assert stats.kstest(kappa_from_name(kappa).kappa(times).numpy(), "uniform").pvalue > 1e-3
    wrong = "cosine" if kappa == "linear" else "linear"  # the test has the power to tell them apart
    assert stats.kstest(kappa_from_name(wrong).kappa(times).numpy(), "uniform").pvalue < 1e-6
    assert all(out.insert_step[b].max() < steps for b in range(64))
    assert out.num_steps <= 2 * steps


@pytest.mark.parametrize("recorded", ["cosine", "linear"])
def test_without_kappa_the_sampler_uses_the_one_the_model_was_trained_with(recorded):
    oracle = Oracle(20, seed=1)
    oracle.config = SimpleNamespace(extra={"kappa": {"name": recorded}})  # as `flowception train` records it
    out = run(oracle, num_videos=64, steps=100)
    assert out.info["kappa"] == {"name": recorded}
    inserted = torch.cat(out.insert_step) >= 0
    times = torch.cat(out.insert_time)[inserted] + 0.5 / 100
    assert stats.kstest(kappa_from_name(recorded).kappa(times).numpy(), "uniform").pvalue > 1e-3
    wrong = "cosine" if recorded == "linear" else "linear"
    assert stats.kstest(kappa_from_name(wrong).kappa(times).numpy(), "uniform").pvalue < 1e-6
    # a model with nothing recorded is sampled with the linear scheduler
    assert run(Oracle(20, seed=1), num_videos=2, steps=10).info["kappa"] == {"name": "linear"}


# ---- 3. tasks: interpolation, image-to-video, extension ------------------------------------


@pytest.mark.parametrize("insertion", ["bernoulli", "poisson"])
def test_interpolation_inserts_only_in_insertable_slots(insertion):
    frames = keyframes(5)
    # slots: after 0 yes, after 1 no (frames 1 and 2 are adjacent), after 2 yes, after 3 yes, after 4 (last) no
    context = Context(frames, [True, False, True, True, False])
    out = run(constant_rate(1.0), context, num_videos=3, steps=30, insertion=insertion, max_frames=40)
    for video, is_ctx in zip(out.videos, out.is_context):
        where = is_ctx.nonzero().flatten().tolist()
        assert torch.equal(video[is_ctx], frames)  # bit-identical, in order
        assert where[0] == 0 and where[-1] == len(video) - 1  # the passive last keyframe stays last
        assert where[2] == where[1] + 1  # nothing between adjacent given frames
        assert where[1] > 1 and where[3] > where[2] + 1 and where[4] > where[3] + 1  # the open gaps were filled


def test_image_to_video_keeps_the_image_first_and_extension_keeps_the_prefix():
    image = keyframes(1)[0]
    out = run(constant_rate(0.0), Context.image_to_video(image), num_videos=2, steps=20, max_frames=30)
    for video, is_ctx in zip(out.videos, out.is_context):
        assert len(video) > 2 and torch.equal(video[0], image) and is_ctx.tolist() == [True] + [False] * (len(video) - 1)
    prefix = keyframes(4)
    out = run(constant_rate(0.0), Context.extend(prefix), steps=20, max_frames=30)
    assert len(out.videos[0]) > 5 and torch.equal(out.videos[0][:4], prefix)
    assert out.is_context[0].tolist() == [True] * 4 + [False] * (len(out.videos[0]) - 4)


def test_context_helpers_set_the_flags_of_spec_3_1():
    k = keyframes(4)
    assert Context.interpolate(k).insertable.tolist() == [True, True, True, False]
    assert Context.extend(k).insertable.tolist() == [False, False, False, True]
    assert Context.image_to_video(k[0]).insertable.tolist() == [True]
    assert Context(list(k), [True, False, True, False]).frames.shape == (4, *SHAPE)


def test_starting_frames_go_after_the_last_insertable_context_frame():
    out = run(Stub(), Context.interpolate(keyframes(3)), n_start=2, steps=2)
    assert out.is_context[0].tolist() == [True, True, False, False, True]
    out = run(Stub(), Context.interpolate(keyframes(3)), n_start=0, steps=2)
    assert out.is_context[0].tolist() == [True, True, True]


# ---- 4. determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("insertion", ["bernoulli", "poisson"])
def test_same_seed_same_videos_different_seed_differs(insertion):
    a, b, c = (run(value_rate(), Context.interpolate(keyframes(3)), num_videos=3, steps=20, insertion=insertion,
                   generator=gen(seed)) for seed in (5, 5, 6))
    assert a.lengths == b.lengths and all(torch.equal(x, y) for x, y in zip(a.videos, b.videos))
    assert all(torch.equal(x, y) for x, y in zip(a.insert_time, b.insert_time))
    assert a.lengths != c.lengths or not all(torch.equal(x, y) for x, y in zip(a.videos, c.videos))


@pytest.mark.parametrize("insertion", ["bernoulli", "poisson"])
@pytest.mark.parametrize("order", ["learned", "random"])
def test_per_video_generators_make_videos_independent_of_the_batch(insertion, order):
    contexts = [Context.interpolate(keyframes(3, seed=s)) for s in range(3)]
    kwargs = dict(steps=20, insertion=insertion, order=order, target_length=None if order == "learned" else 9)
    batch = run(value_rate(), contexts, generator=[gen(s) for s in (11, 12, 13)], **kwargs)
    alone = run(value_rate(), [contexts[1]], generator=[gen(12)], **kwargs)
    other = run(value_rate(), [contexts[2], contexts[1]], generator=[gen(7), gen(12)], **kwargs)
    assert len(set(batch.lengths)) > 1 or order != "learned"  # the videos really differ
    for out, b in ((alone, 0), (other, 1)):
        assert torch.equal(out.videos[b], batch.videos[1])
        assert torch.equal(out.insert_step[b], batch.insert_step[1])


# ---- 5. max_frames and guidance ----------------------------------------------------------------


@pytest.mark.parametrize("insertion", ["bernoulli", "poisson"])
def test_max_frames_is_honoured_and_reported(insertion):
    # video 0 (label 0) never inserts, video 1 (label 1) inserts everywhere at a huge rate
    model = Stub(velocity=lambda v, labels: -v.frames,
                 log_rate=lambda v, labels: torch.where(labels[v.video_index] == 1, 30.0, -math.inf))
    out = run(model, num_videos=2, steps=10, max_frames=12, insertion=insertion, labels=torch.tensor([0, 1]))
    assert out.lengths == [1, 12] and out.max_frames_hit == [False, True]
    assert all(labels is not None for _, labels, _ in model.calls)


def test_max_frames_none_means_no_cap():
    out = run(constant_rate(0.0), num_videos=2, steps=30, max_frames=None)
    assert max(out.lengths) > 8 and out.max_frames_hit == [False, False]


def guidance_stub() -> Stub:
    """Predictions that depend on the context flags and the labels."""
    def velocity(v, labels):
        cond = v.is_context[v.video_index].float() if labels is None else labels[v.video_index].float()
        return v.frames * 0.5 + (1 + cond).view(-1, 1, 1, 1) + v.is_context.float().view(-1, 1, 1, 1)

    def log_rate(v, labels):
        has_label = 0.0 if labels is None else labels[v.video_index].float()
        return -1.0 + 0.7 * has_label + 0.4 * v.is_context.float() + 0.1 * v.frames[:, 0, 0, 0]
    return Stub(velocity, log_rate)


@pytest.mark.parametrize("w_rate,w_vel", [(1.0, 1.0), (2.5, 1.0), (1.0, 3.0), (0.0, 0.5), (4.0, 2.0)])
def test_guidance_matches_two_separate_model_calls(w_rate, w_vel):
    model = guidance_stub()
    frames = keyframes(5)
    videos = PackedVideos.from_list([frames[:2], frames[2:]], is_context=[torch.tensor([True, False]), torch.tensor([False, True, False])])
    labels = torch.tensor([2, 3])
    v, log_rate, passes = guided_prediction(model, videos, labels, w_rate, w_vel)
    v_c, l_c = model.velocity(videos, labels), model.log_rate(videos, labels).double()
    v_u, l_u = model.velocity(videos.drop_context(), None), model.log_rate(videos.drop_context(), None).double()
    assert passes == (1 if w_rate == w_vel == 1 else 2)
    torch.testing.assert_close(v, v_u + w_vel * (v_c - v_u))
    torch.testing.assert_close(log_rate.exp(), l_c.exp() ** w_rate * l_u.exp() ** (1 - w_rate))
    if passes == 2:  # the unconditional pass: no context flags, no labels
        uncond_videos, uncond_labels, _ = model.calls[1]
        assert uncond_labels is None and not uncond_videos.is_context.any()


def test_sampler_uses_guided_velocity_and_rates():
    noise = run(Stub(), num_videos=2, steps=6).videos
    # conditional velocity +1, unconditional -1: guided v = -1 + 3 (1 - (-1)) = 5
    model = Stub(velocity=lambda v, labels: torch.full_like(v.frames, 1.0 if labels is not None else -1.0))
    out = run(model, num_videos=2, steps=6, velocity_guidance=3.0, labels=torch.tensor([0, 1]))
    assert out.num_model_evals == 2 * out.num_steps == 12
    for a, b in zip(out.videos, noise):
        torch.testing.assert_close(a, b + 5.0, rtol=1e-5, atol=1e-5)
    # rates λ_c = e^30 (huge), λ_u = 0: λ_c^w λ_u^(1-w) is 0 for w < 1 and huge for w > 1
    model = Stub(log_rate=lambda v, labels: torch.full((v.num_frames,), 30.0 if labels is not None else -math.inf))
    labels = torch.tensor([0])
    assert run(model, steps=6, rate_guidance=0.5, labels=labels).lengths == [1]
    assert run(model, steps=6, rate_guidance=1.0, labels=labels).lengths[0] > 8
    assert run(model, steps=6, rate_guidance=2.0, labels=labels).lengths[0] > 8


# ---- orders of the Table 2 ablation ------------------------------------------------------------


@pytest.mark.parametrize("order", ["random", "hierarchical", "left_to_right"])
def test_fixed_orders_reach_exactly_the_target_length(order):
    steps = 20
    out = run(constant_rate(-math.inf), num_videos=3, steps=steps, order=order, target_length=9)
    assert out.lengths == [9, 9, 9]
    for s in out.insert_step:
        assert s[0] == -1 and (s[1:] >= 0).all() and (s < steps).all()
    assert out.num_steps <= 2 * steps
    if order == "left_to_right":  # frames appear in position order
        assert all((s[1:].diff() >= 0).all() for s in out.insert_step)
    if order == "hierarchical":  # coarse to fine: the middle of [1, 8] first, then the middles of the halves
        for s in out.insert_step:
            assert s[4] == s[1:].min() and s[6] <= s[[1, 2, 3, 5, 7, 8]].min() and s[2] <= s[[1, 3, 5, 7, 8]].min()


def test_fixed_order_spreads_frames_over_the_insertable_slots():
    out = run(Stub(), Context.interpolate(keyframes(3)), n_start=0, steps=10, order="random", target_length=9)
    assert out.is_context[0].nonzero().flatten().tolist() == [0, 4, 8]  # 6 missing frames: 3 per gap


# ---- callback, history, model mode, shapes -----------------------------------------------------


@pytest.mark.parametrize("task", ["i2v", "extend"])
def test_callback_stops_and_finished_frames_can_be_streamed(task):
    prefix = keyframes(4)
    context = Context.image_to_video(prefix[0]) if task == "i2v" else Context.extend(prefix)
    streamed: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    ready_before_the_end = []

    def stream(step, state):  # emit each video's longest finished prefix as it grows
        for b, (frames, done) in enumerate(zip(state.videos.to_list(), state.videos.split(state.finished))):
            ready = int(done.long().cumprod(0).sum())
            streamed[b].extend(frames[len(streamed[b]):ready].clone())
            if not state.insertions_ended:
                ready_before_the_end.append(ready)
    out = run(constant_rate(0.0), context, num_videos=2, steps=10, callback=stream)
    for b, video in enumerate(out.videos):
        assert torch.equal(torch.stack(streamed[b]), video)
    # the given frames with no insertable slot before them are final at once, nothing else is
    assert ready_before_the_end == [len(context)] * 18
    stop = run(constant_rate(0.0), num_videos=2, steps=10, callback=lambda step, state: step == 2)
    assert stop.num_steps == 3 and not stop.completed


def test_history_records_time_and_lengths():
    out = run(constant_rate(0.0), num_videos=2, steps=10, return_history=True)
    assert out.history.lengths.shape == (out.num_steps, 2)
    assert out.history.lengths[-1].tolist() == out.lengths
    assert out.history.t_g[-1] == 1.0 and (out.history.t_g.diff() >= 0).all()
    assert run(Stub(), steps=2).history is None


def test_eval_mode_during_sampling_and_training_mode_restored():
    model = Stub()
    model.train()
    run(model, steps=3, progress=True)
    assert model.training and not any(training for _, _, training in model.calls)
    grads = []
    run(Stub(velocity=lambda v, labels: (grads.append(torch.is_grad_enabled()), torch.zeros_like(v.frames))[1]), steps=2)
    assert grads == [False, False]


def test_frame_shape_from_model_config():
    model = Stub()
    model.config = SimpleNamespace(in_channels=3, frame_size=(4, 2))
    assert run(model, steps=2, frame_shape=None).videos[0].shape == (1, 3, 4, 2)


# ---- 8. bad input --------------------------------------------------------------------------------


BAD = [
    (dict(steps=0), ValueError, "steps must be >= 1"),
    (dict(steps=2.5), TypeError, "steps must be an int"),
    (dict(rate_guidance=-1.0), ValueError, "rate_guidance must be a finite number >= 0"),
    (dict(velocity_guidance=-0.1), ValueError, "velocity_guidance must be a finite number >= 0"),
    (dict(gamma=0.0), ValueError, "gamma must be"),
    (dict(insertion="binomial"), ValueError, "insertion must be one of"),
    (dict(order="spiral", target_length=5), ValueError, "order must be one of"),
    (dict(order="random"), ValueError, "needs target_length"),
    (dict(target_length=5), ValueError, "target_length only applies"),
    (dict(order="random", target_length=300), ValueError, "exceeds max_frames"),
    (dict(max_frames=0), ValueError, "max_frames must be >= 1"),
    (dict(n_start=3, max_frames=2), ValueError, r"max_frames \(2\) is below the initial length"),
    (dict(n_start=0), ValueError, "n_start must be >= 1 without context"),
    (dict(num_videos=2, generator=[gen(0)]), ValueError, "one per video"),
    (dict(generator=3), TypeError, "generator must be a torch.Generator"),
    (dict(num_videos=2, labels=torch.tensor([1])), ValueError, "labels must be a tensor with one entry per video"),
    (dict(frame_shape=None), ValueError, r"frame_shape=\(C, H, W\) is needed"),
    (dict(frame_shape=(1, 0, 2)), ValueError, "frame_shape must be"),
    (dict(callback=3), TypeError, "callback must be callable"),
    (dict(kappa="quadratic"), ValueError, "unknown kappa scheduler"),
    (dict(kappa={"name": "polynomial", "power": 0.5}), ValueError, "hazard of kappa"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        run(Stub(), **kwargs)


def test_bad_context():
    with pytest.raises(ValueError, match=r"context frames of video 0 have shape \(3, 2, 2\), expected \(1, 2, 2\)"):
        run(Stub(), Context.extend(torch.zeros(2, 3, 2, 2)), frame_shape=SHAPE)
    with pytest.raises(ValueError, match=r"context frames of video 1 have shape"):
        run(Stub(), [Context.extend(torch.zeros(2, *SHAPE)), Context.extend(torch.zeros(2, 1, 2, 3))])
    with pytest.raises(ValueError, match=r"max_frames \(3\) is below the initial length"):
        run(Stub(), Context.interpolate(keyframes(4)), max_frames=3)
    with pytest.raises(ValueError, match="no insertable frame"):
        run(Stub(), Context(keyframes(2), [False, False]))
    with pytest.raises(ValueError, match=r"num_videos \(3\) does not match the number of contexts \(2\)"):
        run(Stub(), [Context.extend(keyframes(2))] * 2, num_videos=3)
    with pytest.raises(TypeError, match="context must be a Context"):
        run(Stub(), [keyframes(2)])
    with pytest.raises(ValueError, match="image must be"):
        Context.image_to_video(keyframes(2))
    with pytest.raises(ValueError, match="keyframes must be"):
        Context.interpolate(keyframes(1))
    with pytest.raises(ValueError, match="insertable must be 3 bools"):
        Context(keyframes(3), [True, False])
    with pytest.raises(TypeError, match="context frames must be floating"):
        Context(torch.zeros(2, *SHAPE, dtype=torch.int64), [True, False])


def test_bad_model_outputs():
    with pytest.raises(ValueError, match="the model returned a velocity of shape"):
        run(Stub(velocity=lambda v, labels: v.frames[:, :1, :1]), steps=2)
    with pytest.raises(ValueError, match="the model returned a log_rate of shape"):
        run(Stub(log_rate=lambda v, labels: torch.zeros(v.num_frames, 1)), steps=2)
    with pytest.raises(ValueError, match="NaN or"):
        run(Stub(log_rate=lambda v, labels: torch.full((v.num_frames,), math.nan)), steps=2)
    class FramesOnly(nn.Module):
        def forward(self, videos, labels=None):
            return videos.frames

    with pytest.raises(TypeError, match=r"must return \(velocity, log_rate\)"):
        run(FramesOnly(), steps=2)


# ---- 9. devices and generators ---------------------------------------------------------------


class FakeCudaGenerator(torch.Generator):
    """A CPU generator that claims to live on cuda:0 (to test the device checks without a GPU)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)


class _Stop(Exception):
    pass


class DeviceProbe(nn.Module):
    """A model on ``device`` that records where its first input lives, then stops the sampler."""

    def __init__(self, device: str):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1, device=device))

    def forward(self, videos: PackedVideos, labels=None):
        self.seen = {"frames": videos.frames.device, "cu_seqlens": videos.cu_seqlens.device,
                     "times": videos.times.device, "labels": labels.device, "dtype": videos.frames.dtype}
        raise _Stop


@pytest.mark.parametrize("insertion", ["bernoulli", "poisson"])
@pytest.mark.parametrize("per_video", [False, True])
def test_a_cpu_generator_gives_bit_identical_videos_twice(insertion, per_video):
    def once():
        generator = [gen(s) for s in (0, 1, 2)] if per_video else torch.Generator().manual_seed(0)
        return run(value_rate(), Context.interpolate(keyframes(3)), num_videos=3, steps=15, insertion=insertion,
                   generator=generator)
    a, b = once(), once()
    assert a.lengths == b.lengths and max(a.lengths) > 3  # frames were inserted
    for field in ("videos", "insert_step", "insert_time"):
        assert all(torch.equal(x, y) for x, y in zip(getattr(a, field), getattr(b, field)))


def test_random_numbers_are_drawn_on_the_generator_device_then_moved():
    from flowception_ext import _devices

    meta = torch.device("meta")
    g, ref = gen(3), gen(3)
    x = _devices.draw(torch.randn, (2, 3), g, meta, torch.float16)
    assert x.device == meta and x.shape == (2, 3) and x.dtype == torch.float16
    torch.randn((2, 3), generator=ref, dtype=torch.float16)  # the same draw, on the CPU
    assert torch.equal(g.get_state(), ref.get_state())
    assert torch.equal(_devices.draw(torch.rand, (4,), gen(1), torch.device("cpu")), torch.rand(4, generator=gen(1)))
    assert _devices.randperm(5, gen(2), meta).device == meta
    rates = torch.full((6,), 2.0)
    assert torch.equal(_devices.poisson(rates, gen(2)), torch.poisson(rates, generator=gen(2)))
    assert _devices.draw(torch.randn, (2,), None, meta).device == meta  # no generator: the device's own


def test_sampling_runs_on_the_model_device_with_a_cpu_generator():
    # A "meta" model: context, labels and noise must all arrive on the model's device; the
    # starting noise comes from the CPU generator (its state advances by exactly one draw).
    model = DeviceProbe("meta")
    g, ref = gen(0), gen(0)
    with pytest.raises(_Stop):
        run(model, Context.image_to_video(keyframes(1)[0]), n_start=2, labels=torch.tensor([4]), generator=g)
    meta = torch.device("meta")
    assert model.seen == {"frames": meta, "cu_seqlens": meta, "times": meta, "labels": meta, "dtype": torch.float32}
    torch.randn((2, *SHAPE), generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())


def test_sampling_device_and_dtype_resolution():
    from flowception_ext.sampling.common import device_and_dtype as _device_and_dtype

    meta, cpu = torch.device("meta"), torch.device("cpu")
    context = Context.extend(keyframes(2).double())
    assert _device_and_dtype(DeviceProbe("meta"), [None]) == (meta, torch.float32)
    assert _device_and_dtype(DeviceProbe("meta"), [context]) == (meta, torch.float64)  # the context's dtype
    assert _device_and_dtype(Stub(), [context]) == (cpu, torch.float64)  # no parameters: the context's device
    assert _device_and_dtype(Stub(), [None]) == (cpu, torch.float32)


def test_a_generator_on_another_device_is_refused():
    model = DeviceProbe("cpu")  # a CPU model: a CUDA generator cannot serve it
    with pytest.raises(ValueError, match=r"generator is on cuda:0 but the model is on cpu"):
        run(model, generator=FakeCudaGenerator())
    with pytest.raises(ValueError, match=r"generator\[1\] is on cuda:0"):
        run(model, num_videos=2, generator=[gen(0), FakeCudaGenerator()])


def test_same_device():
    from flowception_ext._devices import same_device

    assert same_device(torch.device("cpu"), torch.device("cpu"))
    assert same_device(torch.device("cuda", 0), torch.device("cuda", 0))
    assert not same_device(torch.device("cuda", 0), torch.device("cuda", 1))
    assert not same_device(torch.device("cuda", 0), torch.device("cpu"))


def cuda_stub() -> Stub:
    """Exact arithmetic (negation, constant rates), so CPU and CUDA runs agree to rounding."""
    model = Stub(velocity=lambda v, labels: -v.frames,
                 log_rate=lambda v, labels: torch.zeros(v.num_frames, device=v.frames.device))
    model.anchor = nn.Parameter(torch.zeros(1))
    return model


@pytest.mark.cuda
@pytest.mark.parametrize("per_video", [False, True])
def test_cuda_model_with_a_cpu_generator(per_video):
    def once(device: str):
        generator = [gen(s) for s in (0, 1)] if per_video else gen(0)
        return run(cuda_stub().to(device), Context.interpolate(keyframes(3)), num_videos=2, steps=10,
                   generator=generator)
    a, b, cpu = once("cuda"), once("cuda"), once("cpu")
    assert a.videos[0].device.type == "cuda"
    assert a.lengths == b.lengths == cpu.lengths
    for x, y, z in zip(a.videos, b.videos, cpu.videos):
        assert torch.equal(x, y)  # same seed, same videos on every run
        torch.testing.assert_close(x.cpu(), z, rtol=1e-5, atol=1e-5)  # and the same noise as on the CPU


@pytest.mark.cuda
def test_cuda_model_with_a_cuda_generator_and_a_real_model():
    from test_model import make_model

    model = make_model().cuda()
    outs = [sample(model, num_videos=2, steps=6, max_frames=12, progress=False,
                   generator=torch.Generator(device="cuda").manual_seed(0)) for _ in range(2)]
    cpu_gen = [sample(model, num_videos=2, steps=6, max_frames=12, progress=False, generator=gen(0)) for _ in range(2)]
    for a, b in (outs, cpu_gen):  # the same draws on every run (CUDA kernels may reduce in any order)
        assert a.lengths == b.lengths and a.videos[0].device.type == "cuda"
        for x, y in zip(a.videos, b.videos):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
