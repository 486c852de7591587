"""Training states (docs/algorithm.md §3): from clean videos to the partially inserted, partially denoised
states the sampler meets, with the velocity and insertion-count targets.

Per video, :func:`make_training_state`

1. draws a task and the frame **roles** — context (clean, given), starting (present from
   the start) or free (inserted at a random time);
2. draws insertion times ``t_ins = κ⁻¹(u)`` for free frames (0 for the others);
3. draws the global extended time ``τ_g = s · τ_max`` with ``τ_max = max t_ins + 1``,
   redrawing ``s`` for videos without a flowing frame;
4. marks frames with ``τ_i = τ_g − t_ins < 0`` as deleted, strips them (they are never
   noised nor copied), and noises what remains: ``X = t X¹ + (1 − t) ε``, ``t = clip(τ, 0, 1)``;
5. counts the deleted frames in each slot (``K``) and applies conditioning dropout.

Everything is vectorised over the packed batch; the only loop is the (rare) redraw of ``s``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._utils import dataclass_from_dict
from .ops import ragged_strip
from .ops.reference import check_cu_seqlens
from .packing import PackedVideos, times_dtype_for
from .schedules import (KappaScheduler, LinearKappa, LogitNormalTime, TimeDistribution, kappa_from_name,
                        time_distribution_from_name)
from .tasks import TRAINING_TASKS, canonical_task

__all__ = ["TASKS", "ROLE_FREE", "ROLE_START", "ROLE_CONTEXT", "NoisingConfig", "TrainingState",
           "make_training_state"]

TASKS = TRAINING_TASKS
"""Task names; ``TrainingState.task`` holds indices into this tuple."""

ROLE_FREE, ROLE_START, ROLE_CONTEXT = 0, 1, 2
"""Frame roles in ``TrainingState.roles``: inserted at ``t_ins = κ⁻¹(u)``, starting frame, context."""

_MAX_REDRAWS = 10_000  # P(no flowing frame) < 1 per draw, so this is never reached in practice


@dataclass(frozen=True)
class NoisingConfig:
    """How training states are drawn (docs/algorithm.md §3).

    Attributes:
        tasks: probability of each task in :data:`TASKS` (missing names mean 0; must sum to 1):
            ``unconditional`` (no context), ``image_to_video`` (frame 0 is context) and
            ``interpolation`` (scene completion; frame 0 and a random sorted subset are context,
            see ``interpolation_p_last`` and ``interpolation_max_interior``).
        n_start: frames present from the start (>= 1): frame 0 when it is not context, plus
            ``n_start − 1`` further starting frames drawn uniformly among the non-context frames
            after frame 0 (all of them when there are fewer). So image-to-video with ``n_start = 1``
            has no starting frame, as docs/algorithm.md §3.1 reads, and ``s`` is redrawn until a frame flows.
        kappa: insertion scheduler κ (instance, name or ``to_dict()`` form).
        time_distribution: law of ``s`` in ``τ_g = s · τ_max`` (instance, name or dict).
        p_uncond: probability that a video's context (and label) is dropped, for guidance.
        interpolation_p_last: in interpolation samples of >= 3 frames, the probability that the
            last frame is context too (1 = the paper's interpolation setting, first and last
            frames given; 0 = scene completion by extension).
        start_last: the last frame of a video (when it is not context) is a starting frame too,
            present from the start and denoised with the others (the reference code's toy
            setting; frame 0 is always present). Nothing is inserted after it, so it fixes where
            the video ends: sampling must then start from as many frames.
        context_noise: standard deviation of Gaussian noise added to the context frames' inputs
            (the reference code adds 0.1 to its image-to-video context), 0: clean context.
        interpolation_max_interior: in interpolation samples, the number of context frames
            strictly between the first and the last frame is uniform on
            ``{0, ..., min(interpolation_max_interior, n − 2 − last_is_context)}`` (the paper gives
            "at most two" intermediate frames), so at least one frame is always left to generate.

    A video of a single frame has nothing to generate from context, so it is always trained
    unconditionally (its frame is the starting frame).
    """

    tasks: dict = field(default_factory=lambda: {"unconditional": 1.0})
    n_start: int = 1
    kappa: KappaScheduler = field(default_factory=LinearKappa)
    time_distribution: TimeDistribution = field(default_factory=LogitNormalTime)
    p_uncond: float = 0.1
    interpolation_p_last: float = 0.5
    interpolation_max_interior: int = 2
    start_last: bool = False
    context_noise: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, dict):
            raise TypeError(f"tasks must be a dict of task name -> probability, got {type(self.tasks).__name__}")
        object.__setattr__(self, "tasks", {canonical_task(name, "tasks", TASKS): p for name, p in self.tasks.items()})
        for name, p in self.tasks.items():
            if not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
                raise ValueError(f"tasks[{name!r}] must be a finite probability >= 0, got {p!r}")
        if abs(sum(self.tasks.values()) - 1.0) > 1e-6:
            raise ValueError(f"tasks probabilities must sum to 1, got {sum(self.tasks.values())} ({self.tasks})")
        if isinstance(self.n_start, bool) or not isinstance(self.n_start, int) or self.n_start < 1:
            raise ValueError(f"n_start must be an int >= 1 (frame 0 is always present), got {self.n_start!r}")
        for name in ("p_uncond", "interpolation_p_last"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        if not isinstance(self.start_last, bool):
            raise TypeError(f"start_last must be a bool, got {type(self.start_last).__name__}")
        c = self.context_noise
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
            raise ValueError(f"context_noise must be a finite number >= 0, got {c!r}")
        m = self.interpolation_max_interior
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"interpolation_max_interior must be an int >= 0, got {m!r}")
        # Normalise the scheduler and the time distribution to instances (frozen: set via object).
        object.__setattr__(self, "kappa", kappa_from_name(self.kappa))
        object.__setattr__(self, "time_distribution", time_distribution_from_name(self.time_distribution))

    @property
    def task_probs(self) -> list[float]:
        """Probabilities in the order of :data:`TASKS`."""
        return [float(self.tasks.get(name, 0.0)) for name in TASKS]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        d = dataclasses.asdict(self)
        d["tasks"] = dict(self.tasks)
        d["kappa"] = self.kappa.to_dict()
        d["time_distribution"] = self.time_distribution.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NoisingConfig":
        return dataclass_from_dict(cls, d)


@dataclass
class TrainingState:
    """A noisy training state and its targets (docs/algorithm.md §3). ``N`` present frames, ``N_clean`` frames
    in the clean batch, ``B`` videos.

    Attributes:
        inputs: the model input: present frames only — noisy frames, or the clean frame for
            context frames (``t = 1``); times, ``is_context`` (after conditioning dropout),
            ``insertable`` and ``cu_seqlens``.
        velocity_target: ``[N, C, H, W]`` ``X¹ − ε`` for present non-context frames (only the
            ``flowing`` ones enter the loss), 0 for context frames.
        flowing: bool ``[N]``, non-context frames with ``0 <= τ < 1`` (the velocity loss set).
        insert_counts: int64 ``[N]``, ``K`` of each slot: deleted frames between the frame and the
            next present frame (or the end); 0 where not insertable.
        tau_g: float64 ``[B]`` global extended time ``τ_g``.
        tau_max: float64 ``[B]`` ``max t_ins + 1`` of each video.
        t_ins: float64 ``[N_clean]`` insertion time of every clean frame (0 for start and
            context frames); ``t_ins[source_index]`` for the present ones.
        source_index: int64 ``[N]`` row of each present frame in the clean batch.
        roles: int8 ``[N_clean]`` role of every clean frame (:data:`ROLE_FREE`, ...).
        task: int64 ``[B]`` index into :data:`TASKS` of each video's task.
        cond_dropped: bool ``[B]`` videos whose context was dropped (null their labels too).
    """

    inputs: PackedVideos
    velocity_target: Tensor
    flowing: Tensor
    insert_counts: Tensor
    tau_g: Tensor
    tau_max: Tensor
    t_ins: Tensor
    source_index: Tensor
    roles: Tensor
    task: Tensor
    cond_dropped: Tensor


def make_training_state(
    videos: PackedVideos,
    *,
    generator: torch.Generator | None = None,
    config: NoisingConfig = NoisingConfig(),
) -> TrainingState:
    """Draw a noisy training state from a batch of clean videos (docs/algorithm.md §3).

    Args:
        videos: the clean videos. Only ``frames`` and ``cu_seqlens`` are used: roles, times
            and flags are drawn here, so the input's own ``times``/``is_context``/``insertable``
            are ignored. Every video needs at least one frame.
        generator: source of all randomness (on the frames' device); the global one if ``None``.
        config: task mixture, ``n_start``, κ, law of ``s``, ``p_uncond``.
    """
    check_training_videos(videos)
    dev = videos.frames.device
    cu, vid, lengths = videos.cu_seqlens, videos.video_index, videos.lengths
    row = torch.arange(videos.num_frames, device=dev)
    pos = row - cu[vid]  # position inside the video

    task = _draw_tasks(config, lengths, generator)
    roles = _draw_roles(config, task, cu, vid, pos, lengths, generator)
    is_ctx = roles == ROLE_CONTEXT

    # Insertion times: κ⁻¹(u) for free frames, 0 for starting and context frames.
    u = torch.rand(videos.num_frames, generator=generator, dtype=torch.float64, device=dev)
    t_ins = torch.where(roles == ROLE_FREE, config.kappa.inverse(u), torch.zeros_like(u))
    tau_max = torch.zeros(videos.num_videos, dtype=torch.float64, device=dev)
    tau_max = tau_max.scatter_reduce_(0, vid, t_ins, reduce="amax") + 1
    tau_g = _draw_tau_g(config.time_distribution, tau_max, t_ins, is_ctx, vid, generator)

    tau = tau_g[vid] - t_ins  # frame extended times
    present = tau >= 0  # start and context frames have t_ins = 0 <= τ_g
    # docs/algorithm.md §3.1: a context frame is insertable iff the next frame of the video exists and is not context.
    next_not_context = (pos < lengths[vid] - 1) & ~torch.roll(is_ctx, -1)
    insertable = ~is_ctx | next_not_context
    # Each deleted frame falls in the slot of the nearest present frame on its left (frame 0 is
    # always present, so the running max never crosses into the previous video).
    left_present = torch.cummax(torch.where(present, row, -1), 0).values
    counts = torch.zeros(videos.num_frames, dtype=torch.int64, device=dev)
    counts.index_add_(0, left_present[~present], torch.ones_like(left_present[~present]))

    # Strip first: deleted frames are never noised nor copied.
    x1, cu_kept, src = ragged_strip(videos.frames, cu, present, int(present.sum()))
    ctx_kept = is_ctx[src]
    tdtype = times_dtype_for(x1.dtype)
    t = torch.where(ctx_kept, 1.0, tau[src].clamp(0, 1)).to(tdtype)
    compute = torch.promote_types(x1.dtype, tdtype)  # mix low-precision frames in float32
    x1c = x1.to(compute)
    target = x1c - torch.randn(x1.shape, generator=generator, dtype=compute, device=dev)  # X¹ − ε
    target[ctx_kept] = 0
    # t X¹ + (1 − t) ε = X¹ + (t − 1)(X¹ − ε) in one pass; t = 1 gives X¹ exactly (context, terminal).
    noisy = torch.addcmul(x1c, (t.to(compute) - 1).view(-1, 1, 1, 1), target).to(x1.dtype)
    target = target.to(x1.dtype)
    if config.context_noise > 0 and bool(ctx_kept.any()):  # (no draw otherwise: the stream stays as it was)
        ctx_rows = ctx_kept.nonzero().flatten()
        jitter = torch.randn((ctx_rows.numel(), *x1.shape[1:]), generator=generator, dtype=compute, device=dev)
        noisy[ctx_rows] = (noisy[ctx_rows].to(compute) + config.context_noise * jitter).to(x1.dtype)

    inputs = PackedVideos(noisy, cu_kept, t, ctx_kept, insertable[src])
    dropped = torch.rand(videos.num_videos, generator=generator, device=dev) < config.p_uncond
    return TrainingState(
        inputs=inputs.drop_context(dropped),
        velocity_target=target,
        flowing=~ctx_kept & (tau[src] < 1),
        insert_counts=counts[src],
        tau_g=tau_g,
        tau_max=tau_max,
        t_ins=t_ins,
        source_index=src,
        roles=roles.to(torch.int8),
        task=task,
        cond_dropped=dropped,
    )


# ---- steps ---------------------------------------------------------------------------------


def check_training_videos(videos: PackedVideos) -> None:
    """The clean batch a training state is drawn from: a :class:`PackedVideos` of at least one
    video, each with at least one frame, and finite frames (ValueError/TypeError otherwise)."""
    if not isinstance(videos, PackedVideos):
        raise TypeError(f"videos must be a PackedVideos, got {type(videos).__name__}")
    if videos.num_videos == 0:
        raise ValueError("videos must hold at least one video (got an empty batch)")
    check_cu_seqlens(videos.cu_seqlens, videos.num_frames)
    empty = (videos.lengths <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"every video needs at least one frame; video(s) {empty[:10]} of the batch have none")
    # One cheap reduction; NaN and inf propagate through the sum (the full check only runs if not).
    if not torch.isfinite(videos.frames.sum()) and not torch.isfinite(videos.frames).all():
        raise ValueError("videos.frames must be finite (found NaN or inf)")


def _draw_tasks(config: NoisingConfig, lengths: Tensor, generator: torch.Generator | None) -> Tensor:
    probs = torch.tensor(config.task_probs, dtype=torch.float64, device=lengths.device)
    task = torch.multinomial(probs, lengths.numel(), replacement=True, generator=generator)
    return torch.where(lengths >= 2, task, 0)  # a single frame: nothing to generate from context


def _draw_roles(config: NoisingConfig, task: Tensor, cu: Tensor, vid: Tensor, pos: Tensor, lengths: Tensor,
                generator: torch.Generator | None) -> Tensor:
    """Role of every frame (docs/algorithm.md §3.1): context by task, frame 0, then ``n_start − 1`` starting frames."""
    dev = vid.device
    n = lengths[vid]
    first, last = pos == 0, pos == n - 1
    interp = task == TASKS.index("interpolation")
    # Interpolation: frame 0, the last frame (with probability p_last, >= 3 frames) and k interior frames.
    p_last = torch.rand(task.numel(), generator=generator, dtype=torch.float64, device=dev)
    last_ctx = interp & (lengths >= 3) & (p_last < config.interpolation_p_last)
    k_max = (lengths - 2 - last_ctx.long()).clamp(min=0).clamp(max=config.interpolation_max_interior)
    k = (torch.rand(task.numel(), generator=generator, dtype=torch.float64, device=dev) * (k_max + 1)).long()
    interior = _random_subset(~first & ~last, torch.where(interp, k, 0), cu, vid, generator)
    is_ctx = (first & (task != TASKS.index("unconditional"))[vid]) | (last & last_ctx[vid]) | interior

    extra = _random_subset(~first & ~is_ctx, torch.full_like(lengths, config.n_start - 1), cu, vid, generator)
    roles = torch.full_like(pos, ROLE_FREE)
    start = (first & ~is_ctx) | extra
    if config.start_last:
        start |= last & ~is_ctx
    roles[start] = ROLE_START
    roles[is_ctx] = ROLE_CONTEXT
    return roles


def _random_subset(eligible: Tensor, k: Tensor, cu: Tensor, vid: Tensor, generator: torch.Generator | None) -> Tensor:
    """A uniform random subset of ``min(k[b], #eligible)`` eligible frames in each video ``b``."""
    keys = torch.rand(eligible.numel(), generator=generator, dtype=torch.float64, device=eligible.device)
    # Sort by (video, key) with ineligible frames last: the rank inside the video picks the subset.
    order = torch.argsort(2.0 * vid + torch.where(eligible, keys, 1.5))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return eligible & (rank - cu[vid] < k[vid])


def _draw_tau_g(dist: TimeDistribution, tau_max: Tensor, t_ins: Tensor, is_ctx: Tensor, vid: Tensor,
                generator: torch.Generator | None) -> Tensor:
    """``τ_g = s · τ_max``, redrawing ``s`` for the videos with no flowing frame (docs/algorithm.md §3.3)."""
    tau_g = dist.sample(tau_max.shape, generator=generator, device=tau_max.device) * tau_max
    for _ in range(_MAX_REDRAWS):
        tau = tau_g[vid] - t_ins
        flowing = (~is_ctx & (tau >= 0) & (tau < 1)).long()
        stuck = (torch.zeros_like(tau_max, dtype=torch.long).index_add_(0, vid, flowing) == 0).nonzero().flatten()
        if stuck.numel() == 0:
            return tau_g
        tau_g[stuck] = dist.sample(stuck.shape, generator=generator, device=tau_max.device) * tau_max[stuck]
    raise RuntimeError(f"no flowing frame after {_MAX_REDRAWS} draws of s for videos {stuck[:10].tolist()}")
