"""Training states of the baselines (SPEC §8), in the same :class:`TrainingState` form as
Flowception's so the same loss and trainer serve them (their insertion targets are all 0 and
unused: the baselines have no rate head).

* full-sequence: every frame present with one shared time ``t ~ config.time_distribution``
  per video; frame 0 is context for image-to-video samples.
* autoregressive: per video a target frame ``k`` is drawn uniformly among the frames that
  can be generated; frames ``< k`` are clean context, frame ``k`` is noisy, later frames are
  stripped (never copied). With a frame-causal model this is teacher forcing of the
  left-to-right generator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..noising import ROLE_CONTEXT, ROLE_FREE, ROLE_START, TASKS, NoisingConfig, TrainingState
from ..packing import PackedVideos

__all__ = ["make_full_sequence_state", "make_autoregressive_state"]


def _draw_tasks(videos: PackedVideos, generator, config: NoisingConfig) -> tuple[Tensor, Tensor]:
    """Task index per video and whether frame 0 is context (image-to-video or interpolation)."""
    probs = torch.tensor(config.task_probs, dtype=torch.float64)
    task = torch.multinomial(probs, videos.num_videos, replacement=True, generator=_cpu(generator))
    task = task.to(videos.frames.device)
    first_is_context = (task != TASKS.index("unconditional")) & (videos.lengths > 1)
    return task, first_is_context


def _cpu(generator):
    return generator if generator is None or generator.device.type == "cpu" else None


def _finish(present: PackedVideos, num_clean: int, source_index: Tensor, t: Tensor, context: Tensor,
            task: Tensor, generator, config: NoisingConfig, tau_g: Tensor) -> TrainingState:
    """Noise the present clean frames (context stays clean) and assemble the state."""
    x1 = present.frames
    eps = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    tt = t.to(x1.dtype)[:, None, None, None]
    noisy = torch.where(context[:, None, None, None], x1, tt * x1 + (1 - tt) * eps)
    inputs = PackedVideos(noisy, present.cu_seqlens, t.to(present.times.dtype), context, torch.ones_like(context))
    drop = torch.rand(present.num_videos, generator=generator, device=x1.device) < config.p_uncond
    inputs = inputs.drop_context(drop)
    roles = torch.full((num_clean,), ROLE_FREE, dtype=torch.int8, device=x1.device)
    roles[source_index] = torch.where(context, ROLE_CONTEXT, ROLE_START).to(torch.int8)
    return TrainingState(
        inputs=inputs,
        velocity_target=torch.where(context[:, None, None, None], torch.zeros_like(x1), x1 - eps),
        flowing=~context,
        insert_counts=torch.zeros_like(source_index),
        tau_g=tau_g.double(),
        tau_max=torch.ones_like(tau_g, dtype=torch.float64),
        t_ins=torch.zeros(num_clean, dtype=torch.float64, device=x1.device),
        source_index=source_index,
        roles=roles,
        task=task,
        cond_dropped=drop,
    )


def make_full_sequence_state(videos: PackedVideos, *, generator: torch.Generator | None = None,
                             config: NoisingConfig = NoisingConfig()) -> TrainingState:
    """Full-sequence flow matching: all frames present, one time per video."""
    _check(videos)
    task, first_is_context = _draw_tasks(videos, generator, config)
    t_video = config.time_distribution.sample((videos.num_videos,), generator=generator,
                                              device=videos.frames.device)
    vid = videos.video_index
    context = first_is_context[vid] & (videos.position == 0)
    t = torch.where(context, torch.ones_like(t_video[vid]), t_video[vid])
    return _finish(videos, videos.num_frames, torch.arange(videos.num_frames, device=videos.frames.device), t,
                   context, task, generator, config, t_video)


def make_autoregressive_state(videos: PackedVideos, *, generator: torch.Generator | None = None,
                              config: NoisingConfig = NoisingConfig()) -> TrainingState:
    """Autoregressive teacher forcing: clean prefix, one noisy target frame, the rest stripped."""
    _check(videos)
    task, first_is_context = _draw_tasks(videos, generator, config)
    lengths = videos.lengths
    lo = first_is_context.long()  # the first generable frame
    u = torch.rand(videos.num_videos, generator=generator, dtype=torch.float64, device=videos.frames.device)
    target = lo + (u * (lengths - lo)).long().clamp(max=(lengths - lo - 1).clamp(min=0))  # (B,)
    t_video = config.time_distribution.sample((videos.num_videos,), generator=generator,
                                              device=videos.frames.device)
    vid, pos = videos.video_index, videos.position
    keep = pos <= target[vid]
    stripped, source_index = videos.strip(keep)
    vid, pos = vid[source_index], pos[source_index]
    context = pos < target[vid]
    t = torch.where(context, torch.ones_like(t_video[vid]), t_video[vid])
    return _finish(stripped, videos.num_frames, source_index, t, context, task, generator, config, t_video)


def _check(videos: PackedVideos) -> None:
    if not isinstance(videos, PackedVideos):
        raise TypeError(f"videos must be a PackedVideos, got {type(videos).__name__}")
    if videos.num_videos == 0 or bool((videos.lengths < 1).any()):
        raise ValueError(f"every video needs at least one frame, got lengths {videos.lengths.tolist()}")
