"""The Flowception sampler (docs/algorithm.md §6): coupled denoising and frame insertion on packed, growing batches.

Every step evaluates the model on the packed batch, moves each flowing frame along its flow
(Euler in the solver coordinate ``u``, ``t = u^γ``) and, while the global time ``t_g < 1``,
inserts fresh noise frames in the insertable slots (Bernoulli or Poisson draws at rate
``h ρ(t_g) λ``). Insertions go through :meth:`PackedVideos.insert` (the ``ragged_insert`` op):
the batch grows in place of a fixed-size buffer, and nothing is ever padded.

Model interface: ``model(videos: PackedVideos, labels=None) -> (velocity [N, C, H, W], log_rate [N])``.
With guidance (a scale != 1) the unconditional prediction is
``model(videos.drop_context(), labels=None)``: context frames become ordinary clean frames (see
:meth:`PackedVideos.drop_context`) and the labels are replaced by ``None`` (the model's null label).
"""

from __future__ import annotations

import bisect
import heapq
import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import _devices
from .._utils import check_int, describe
from ..packing import PackedVideos
from ..schedules import KappaScheduler, kappa_from_name
from .common import (Callback, Context, Randomness, SampleHistory, SampleOutput, SamplerState, check_callback,
                     check_contexts, check_labels, device_and_dtype, eval_mode, resolve_frame_shape)

__all__ = ["INSERTION_MODES", "ORDERS", "guided_prediction", "sample"]

INSERTION_MODES = ("bernoulli", "poisson")
ORDERS = ("learned", "random", "hierarchical", "left_to_right")

# Log-rates are clamped before exponentiation: exp(-1000) is exactly 0 in every float type (a
# "never insert" model), and e^30 frames per slot already exceeds any video while keeping
# Poisson draws finite.
_LOG_RATE_MIN, _LOG_RATE_MAX = -1000.0, 30.0


# ---- guidance ------------------------------------------------------------------------------


def guided_prediction(
    model: nn.Module,
    videos: PackedVideos,
    labels: Tensor | None = None,
    rate_guidance: float = 1.0,
    velocity_guidance: float = 1.0,
) -> tuple[Tensor, Tensor, int]:
    """Velocity and log-rate with guidance, and the number of model passes (1 or 2).

    With both scales at 1, a single conditional pass. Otherwise a second, unconditional pass
    ``model(videos.drop_context(), None)``; velocities combine linearly,
    ``v = v_u + w_v (v_c − v_u)``, and rates geometrically, ``λ = λ_c^w · λ_u^(1−w)``, i.e.
    ``log λ = w log λ_c + (1 − w) log λ_u`` (log-rates clamped to [-1000, 30] first, so the
    combination stays finite). Log-rates are returned in float64.
    """
    v_c, log_c = _predict(model, videos, labels)
    if rate_guidance == 1 and velocity_guidance == 1:
        return v_c, log_c, 1
    v_u, log_u = _predict(model, videos.drop_context(), None)
    v = v_c if velocity_guidance == 1 else v_u + velocity_guidance * (v_c - v_u)
    log_rate = log_c if rate_guidance == 1 else rate_guidance * log_c + (1 - rate_guidance) * log_u
    return v, log_rate.clamp(_LOG_RATE_MIN, _LOG_RATE_MAX), 2


def _predict(model: nn.Module, videos: PackedVideos, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    out = model(videos, labels=labels)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"the model must return (velocity, log_rate), got {describe(out)}")
    velocity, log_rate = out
    n = videos.num_frames
    if not isinstance(velocity, Tensor) or velocity.shape != videos.frames.shape:
        raise ValueError(f"the model returned a velocity of {describe(velocity)}, expected shape {tuple(videos.frames.shape)}")
    if not isinstance(log_rate, Tensor) or log_rate.shape != (n,):
        raise ValueError(f"the model returned a log_rate of {describe(log_rate)}, expected shape ({n},)")
    if not (log_rate < math.inf).all():  # NaN or +inf; -inf (rate 0) is fine
        raise ValueError("the model returned NaN or +inf log-rates")
    return velocity, log_rate.double().clamp(_LOG_RATE_MIN, _LOG_RATE_MAX)


# ---- fixed insertion orders (Table 2 ablation) --------------------------------------------


class _FixedOrder:
    """Data-independent insertions reaching exactly ``target_length`` frames per video.

    Layout: the ``M = target_length − initial length`` missing frames are split as evenly as possible
    over the video's initial insertable slots (earlier slots get the remainder), which fixes the
    final position of every frame. The missing positions are then revealed in an order:
    ``random`` (a uniform permutation), ``hierarchical`` (repeatedly the middle of the longest run of
    missing positions, leftmost on ties: coarse to fine) or ``left_to_right`` (increasing positions;
    with one slot, always the last slot). Timing keeps the learned sampler's step budget: ``M``
    insertion times ``κ⁻¹(U)`` are drawn, sorted and quantised to steps ``⌊t · steps⌋ < steps``;
    the j-th earliest time reveals the j-th position of the order. A revealed frame is inserted in the
    slot of the present frame just left of its final position.
    """

    def __init__(self, order: str, insertable: list[list[bool]], target_length: int, steps: int,
                 kappa: KappaScheduler, rng: Randomness):
        self.present: list[list[int]] = []  # per video: sorted final positions of the present frames
        self.pending: list[dict[int, list[int]]] = []  # per video: step -> final positions revealed then
        for b, flags in enumerate(insertable):
            missing_total = target_length - len(flags)
            slots = [i for i, f in enumerate(flags) if f]
            if missing_total > 0 and not slots:
                raise ValueError(f"video {b} has no insertable frame, so it cannot grow to target_length={target_length}")
            gaps = [0] * len(flags)
            for k, i in enumerate(slots):
                gaps[i] = missing_total // len(slots) + (k < missing_total % len(slots))
            starts = [i + sum(gaps[:i]) for i in range(len(flags))]
            missing = [p for i in slots for p in range(starts[i] + 1, starts[i] + 1 + gaps[i])]
            g = rng.for_video(b)
            cpu = torch.device("cpu")  # the schedule is host-side bookkeeping
            if order == "random":
                missing = [missing[i] for i in _devices.randperm(len(missing), g, cpu).tolist()]
            elif order == "hierarchical":
                missing = _coarse_to_fine(missing)
            u = _devices.draw(torch.rand, (len(missing),), g, cpu, torch.float64)
            when = (kappa.inverse(u) * steps).floor().clamp(max=steps - 1).long().sort().values.tolist()
            schedule: dict[int, list[int]] = {}
            for k, p in zip(when, missing):
                schedule.setdefault(k, []).append(p)
            self.present.append(starts)
            self.pending.append(schedule)

    def counts(self, step: int) -> list[int]:
        """New frames per present frame (packed order) at ``step``; updates the present positions."""
        counts = []
        for present, schedule in zip(self.present, self.pending):
            c = [0] * len(present)
            new = schedule.pop(step, [])
            for p in new:
                c[bisect.bisect_left(present, p) - 1] += 1
            for p in new:
                bisect.insort(present, p)
            counts.extend(c)
        return counts


def _coarse_to_fine(missing: list[int]) -> list[int]:
    """Order sorted positions by repeatedly taking the middle of the longest run of consecutive ones."""
    runs: list[tuple[int, int, int]] = []  # (−length, start, end) for a min-heap on (longest, leftmost)
    for p in missing:
        if runs and runs[-1][2] == p - 1:
            _, start, _ = runs.pop()
            runs.append((start - p - 1, start, p))
        else:
            runs.append((-1, p, p))
    heapq.heapify(runs)
    order = []
    while runs:
        _, start, end = heapq.heappop(runs)
        mid = (start + end) // 2
        order.append(mid)
        for a, z in ((start, mid - 1), (mid + 1, end)):
            if a <= z:
                heapq.heappush(runs, (a - z - 1, a, z))
    return order


# ---- the sampler ---------------------------------------------------------------------------


@torch.no_grad()
def sample(
    model: nn.Module,
    context: Context | Sequence[Context] | None = None,
    *,
    num_videos: int | None = None,
    n_start: int = 1,
    steps: int = 100,
    insertion: str = "bernoulli",
    kappa: str | dict | KappaScheduler | None = None,
    rate_guidance: float = 1.0,
    velocity_guidance: float = 1.0,
    gamma: float = 1.0,
    max_frames: int | None = 256,
    labels: Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    order: str = "learned",
    target_length: int | None = None,
    frame_shape: tuple[int, int, int] | None = None,
    progress: bool = True,
    callback: Callback | None = None,
    return_history: bool = False,
) -> SampleOutput:
    """Generate videos with Flowception (docs/algorithm.md §6).

    Devices and randomness: sampling runs on the model's device (its first parameter or buffer; for
    a model without tensors, the context's device, else the CPU). Contexts and labels are moved there,
    and the outputs live there. Random numbers are drawn on the generator's device and moved to
    the model's, so a CPU ``torch.Generator`` gives the same draws whatever device the model is on
    (the diffusers convention); a generator on the model's device works too. Any other generator
    device is a ``ValueError``. The same seed gives the same videos on every run.

    Args:
        model: ``model(videos, labels=None) -> (velocity [N, C, H, W], log_rate [N])``. Run in eval
            mode under ``torch.no_grad`` (its training mode is restored afterwards).
        context: one :class:`Context` (shared by all ``num_videos`` videos), one per video, or
            ``None`` (unconditional). Frames are moved to the model's device; the first context's
            dtype is the dtype of the sampled frames (without context, the model's).
        num_videos: batch size; defaults to the number of contexts (1 without context).
        n_start: noise frames present from the start (``t = 0``), placed right after the last
            *insertable* context frame (after the last frame for image-to-video and extension,
            between the last two keyframes for interpolation) or alone without context. A video
            needs at least one frame: ``n_start = 0`` requires a context.
        steps: ``1/h``. Insertions happen during the first ``steps`` steps (``t_g < 1``); a frame
            needs ``steps`` steps to become clean, so a run takes between ``steps`` and
            ``2·steps`` steps.
        insertion: ``"bernoulli"`` (at most one frame per slot and step, probability
            ``min(1, h ρ(t_g) λ)``) or ``"poisson"`` (``Poisson(h ρ(t_g) λ)`` frames).
        kappa: insertion scheduler (name, dict or instance; see :mod:`flowception_ext.schedules`):
            the one the model was trained with (``NoisingConfig.kappa``), since the rate head learns
            insertion counts for the states that scheduler produces. ``None``: the one recorded in
            ``model.config.extra["kappa"]`` (``flowception train`` records it), else linear.
        rate_guidance, velocity_guidance: guidance scales ``w >= 0`` (see :func:`guided_prediction`);
            1 = no guidance (one model pass per step), otherwise two passes.
        gamma: time reparameterisation ``t = u^γ`` of the per-frame solver coordinate ``u``
            (``γ = 1``: plain Euler in ``t``; ``γ > 1``: smaller steps near the noise).
        max_frames: per-video cap (``None``: no cap). Drawn insertions that would exceed it are
            discarded from the rightmost slots, and ``max_frames_hit`` reports it.
        labels: class labels ``[B]`` passed to the model (``None``: unconditional).
        generator: one ``torch.Generator`` (on the CPU or the model's device) for the batch, or a
            list with one per video; ``None`` uses the global generator of the model's device.
            With one generator, draws are made for the packed batch at once and new
            frames' noise comes from the ``ragged_insert`` kernel (seeded from the generator). With
            one per video, every draw of video ``b`` (starting noise, insertion draws, fixed-order
            schedules and the noise of its new frames, which is drawn per video and written into
            the new rows) comes from ``generator[b]`` in amounts that depend only on that video, so
            each video is independent of the batch it is sampled in — bit for bit if the model's
            output for a video does not depend on the rest of the batch either.
        order: ``"learned"`` (the model's rates) or a data-independent order for the paper's
            Table 2 ablation — ``"random"``, ``"hierarchical"``, ``"left_to_right"`` — that ignores
            the rates and inserts exactly ``target_length − initial length`` frames per video
            within the same step budget (see :class:`_FixedOrder`).
        target_length: final length for the non-learned orders (required there, rejected otherwise).
        frame_shape: ``(C, H, W)`` when there is no context; defaults to the model's
            ``config.in_channels`` and ``config.frame_size`` when it has them.
        progress: show a tqdm progress bar.
        callback: ``callback(step, state)`` after every step (see :class:`SamplerState`); return
            True to stop early.
        return_history: record the global time and lengths after every step.

    Returns:
        :class:`SampleOutput`.
    """
    contexts, num_videos = check_contexts(context, num_videos)
    check_int("steps", steps, 1)
    check_int("n_start", n_start, 0)
    if insertion not in INSERTION_MODES:
        raise ValueError(f"insertion must be one of {INSERTION_MODES}, got {insertion!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    for name, value in (("rate_guidance", rate_guidance), ("velocity_guidance", velocity_guidance)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    check_callback(callback)
    if kappa is None:
        kappa = getattr(getattr(model, "config", None), "extra", {}).get("kappa", "linear")
    kappa = kappa_from_name(kappa)
    shape = resolve_frame_shape(model, contexts, frame_shape)
    device, dtype = device_and_dtype(model, contexts)
    labels = check_labels(labels, num_videos, device)

    _check_lengths(contexts, n_start, max_frames, order, target_length)
    rng = Randomness(generator, num_videos, device)

    videos = _initial_batch(contexts, n_start, shape, device, dtype, rng)
    ages = torch.where(videos.is_context, steps, 0)  # flow steps taken; u = ages / steps
    insert_step = torch.full((videos.num_frames,), -1, dtype=torch.int64, device=device)
    insert_time = torch.zeros(videos.num_frames, dtype=torch.float64, device=device)
    hit = torch.zeros(num_videos, dtype=torch.bool, device=device)
    fixed = (None if order == "learned" else
             _FixedOrder(order, [f.tolist() for f in videos.split(videos.insertable)], target_length, steps, kappa, rng))

    h = 1.0 / steps
    step, evals, frame_evals, completed = 0, 0, 0, True
    history_t, history_len = [], []
    bar = tqdm(total=2 * steps, disable=not progress, desc="flowception", leave=False)
    with eval_mode(model), bar:
        while True:
            t_g = step * h
            inserting = step < steps
            if not inserting and not bool((ages < steps).any()):  # context frames have ages == steps
                break
            v, log_rate, passes = guided_prediction(model, videos, labels, rate_guidance, velocity_guidance)
            evals += passes
            frame_evals += passes * videos.num_frames

            videos, ages = _flow_step(videos, ages, v, steps, gamma)

            if inserting:
                lengths = videos.lengths.tolist()
                if fixed is None:
                    scale = h * float(kappa.hazard(t_g))
                    if not math.isfinite(scale):
                        raise ValueError(f"the hazard of kappa={kappa.to_dict()} is infinite at t_g={t_g}; "
                                         "use a scheduler with a finite hazard (e.g. polynomial with power >= 1, or early)")
                    mean = torch.where(videos.insertable, scale * log_rate.exp(), 0.0)
                    counts = rng.draw(_insertion_draw(insertion), lengths, mean)
                else:
                    counts = torch.tensor(fixed.counts(step), dtype=torch.int64, device=device)
                counts, dropped = _cap(counts, videos, max_frames)
                hit |= dropped
                total_new = int(counts.sum())
                if total_new:
                    videos, src, new = _insert(videos, counts, total_new, rng, dtype)
                    ages = _move(ages, src, new, 0)
                    insert_step = _move(insert_step, src, new, step)
                    insert_time = _move(insert_time, src, new, t_g)

            step += 1
            t_g = min(step * h, 1.0)
            bar.update(1)
            if return_history:
                history_t.append(t_g)
                history_len.append(videos.lengths)
            if callback is not None:
                state = SamplerState(step - 1, t_g, videos, _finished(videos, t_g), insert_step, insert_time, hit)
                if callback(step - 1, state) is True:
                    completed = False
                    break

    history = None
    if return_history:
        history = SampleHistory(torch.tensor(history_t, dtype=torch.float64), torch.stack(history_len))
    return SampleOutput(
        videos=videos.to_list(),
        insert_step=videos.split(insert_step),
        insert_time=videos.split(insert_time),
        is_context=videos.split(videos.is_context),
        max_frames_hit=hit.tolist(),
        num_model_evals=evals,
        num_frame_evals=frame_evals,
        num_steps=step,
        completed=completed,
        history=history,
        info={"kappa": kappa.to_dict()},
    )


def _initial_batch(contexts: list[Context | None], n_start: int, shape: tuple[int, int, int],
                   device: torch.device, dtype: torch.dtype, rng: Randomness) -> PackedVideos:
    """The context frames (t = 1) with ``n_start`` noise frames (t = 0) after the last insertable one."""
    noise = rng.noise([n_start] * len(contexts), shape, device, dtype).split([n_start] * len(contexts))
    frames, is_context, insertable = [], [], []
    for c, start in zip(contexts, noise):
        given = c.frames.to(device, dtype) if c is not None else start[:0]
        flags = c.insertable.tolist() if c is not None else []
        at = max((i + 1 for i, f in enumerate(flags) if f), default=0)
        frames.append(torch.cat([given[:at], start, given[at:]]))
        is_context.append(torch.tensor([True] * at + [False] * n_start + [True] * (len(flags) - at)))
        insertable.append(torch.tensor(flags[:at] + [True] * n_start + flags[at:], dtype=torch.bool))
    videos = PackedVideos.from_list(frames, is_context=is_context, insertable=insertable)
    return videos.replace(times=videos.is_context.to(videos.times.dtype))


def _flow_step(videos: PackedVideos, ages: Tensor, velocity: Tensor, steps: int,
               gamma: float) -> tuple[PackedVideos, Tensor]:
    """One Euler step in the solver coordinate ``u = ages / steps`` (``t = u^γ``) for the flowing frames."""
    active = ages < steps  # context frames have ages == steps
    t_old = (ages.double() / steps) ** gamma
    ages = ages + active.long()
    t_new = (ages.double() / steps) ** gamma
    dt = (t_new - t_old).to(videos.frames.dtype).view(-1, 1, 1, 1)
    frames = torch.where(active.view(-1, 1, 1, 1), videos.frames + dt * velocity.to(videos.frames.dtype), videos.frames)
    times = torch.where(videos.is_context, 1.0, t_new).to(videos.times.dtype)
    return videos.replace(frames=frames, times=times), ages


def _finished(videos: PackedVideos, t_g: float) -> Tensor:
    """Clean frames that no insertion can precede any more (see :class:`SamplerState`)."""
    clean = videos.times == 1
    if t_g >= 1.0:
        return clean
    slots = videos.insertable.long().cumsum(0)
    first = torch.cat([slots.new_zeros(1), slots])[videos.cu_seqlens[:-1]]  # insertable frames before each video
    before = slots - videos.insertable.long() - first[videos.video_index]  # insertable frames before each frame
    return clean & (before == 0)


def _insertion_draw(insertion: str) -> Callable[..., Tensor]:
    """``draw(n, generator, mean) -> counts`` for the insertion mode (one draw per slot)."""
    if insertion == "bernoulli":
        # rand < p never fires for p = 0 (rand can return exactly 0)
        return lambda n, g, mean: (_devices.draw(torch.rand, (n,), g, mean.device, torch.float64)
                                   < mean.clamp(max=1.0)).long()
    return lambda n, g, mean: _devices.poisson(mean, g).long()


def _cap(counts: Tensor, videos: PackedVideos, max_frames: int | None) -> tuple[Tensor, Tensor]:
    """Clip insertions so no video exceeds ``max_frames``, keeping the leftmost; returns (counts, dropped [B])."""
    if max_frames is None:
        return counts, torch.zeros(videos.num_videos, dtype=torch.bool, device=counts.device)
    vid = videos.video_index
    csum = counts.cumsum(0)
    base = torch.cat([csum.new_zeros(1), csum])[videos.cu_seqlens[:-1]]  # new frames before each video
    before = csum - counts - base[vid]  # new frames left of each slot, within its video
    budget = (max_frames - videos.lengths)[vid]
    kept = torch.minimum(counts, (budget - before).clamp(min=0))
    dropped = torch.zeros(videos.num_videos, dtype=torch.int64, device=counts.device).index_add_(0, vid, counts - kept)
    return kept, dropped > 0


def _insert(videos: PackedVideos, counts: Tensor, total_new: int, rng: Randomness,
            dtype: torch.dtype) -> tuple[PackedVideos, Tensor, Tensor]:
    """Insert the new noise frames; with per-video generators their noise comes from each video's generator."""
    if rng.per_video is None:  # the kernel's noise is keyed by a seed drawn from the generator, on any device
        return videos.insert(counts, total_new, generator=rng.shared)
    per_video = torch.zeros(videos.num_videos, dtype=torch.int64, device=counts.device)
    per_video.index_add_(0, videos.video_index, counts)
    videos, src, new = videos.insert(counts, total_new, seed=0)  # kernel noise replaced below
    shape = videos.frame_shape
    noise = rng.noise(per_video.tolist(), shape, new.device, dtype)
    videos.frames.index_copy_(0, new, noise)
    return videos, src, new


def _move(values: Tensor, src: Tensor, new: Tensor, fill: float | int) -> Tensor:
    """A per-frame vector after an insertion: old entries at ``src``, ``fill`` at the new rows."""
    out = values.new_full((src.numel() + new.numel(),), fill)
    return out.index_copy_(0, src, values)


def _check_lengths(contexts: list[Context | None], n_start: int, max_frames: int | None, order: str,
                   target_length: int | None) -> None:
    """Every video has a frame to grow from and room under ``max_frames``; ``target_length`` fits the order."""
    ctx_flags = [c.insertable.tolist() if c is not None else [] for c in contexts]
    for b, flags in enumerate(ctx_flags):
        if n_start > 0 and flags and not any(flags):
            raise ValueError(f"context of video {b} has no insertable frame: there is no slot for the n_start starting frames")
        if n_start == 0 and not flags:
            raise ValueError("n_start must be >= 1 without context (a video needs a frame to grow from)")
    initial_lengths = [len(f) + n_start for f in ctx_flags]
    if max_frames is not None:
        check_int("max_frames", max_frames, 1)
        if max_frames < max(initial_lengths):
            raise ValueError(f"max_frames ({max_frames}) is below the initial length of a video "
                             f"(context + n_start = {max(initial_lengths)})")
    if order == "learned":
        if target_length is not None:
            raise ValueError("target_length only applies to the non-learned orders (order='learned' uses the model's rates)")
    else:
        if target_length is None:
            raise ValueError(f"order={order!r} needs target_length")
        check_int("target_length", target_length, max(initial_lengths))
        if max_frames is not None and target_length > max_frames:
            raise ValueError(f"target_length ({target_length}) exceeds max_frames ({max_frames})")
