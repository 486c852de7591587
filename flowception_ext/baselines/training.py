"""Training states of the baselines (docs/algorithm.md §8), in the same :class:`TrainingState` form as
Flowception's so the same loss and trainer serve them (their insertion targets are all 0 and
unused: the baselines have no rate head).

* full-sequence: every frame present with one shared time ``t ~ config.time_distribution``
  per video; frame 0 is context for image-to-video samples.
* autoregressive: per video a target frame ``k`` is drawn uniformly among the frames that
  can be generated; frames ``< k`` are clean context, frame ``k`` is noisy, later frames are
  stripped (never copied). With a frame-causal model this is teacher forcing of the
  left-to-right generator.

``generator`` may live on the CPU or on the frames' device: every number is drawn on the
generator's device and moved to the frames' (a CPU generator gives the same state on every
device); ``None`` draws from the global generators.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _devices
from ..noising import (ROLE_CONTEXT, ROLE_FREE, ROLE_START, TASKS, NoisingConfig, TrainingState,
                       check_training_videos)
from ..packing import PackedVideos

__all__ = ["make_full_sequence_state", "make_autoregressive_state"]


def _draw_tasks(videos: PackedVideos, generator, config: NoisingConfig) -> tuple[Tensor, Tensor]:
    """Task index per video and whether frame 0 is context (image-to-video or interpolation)."""
    where = torch.device("cpu") if generator is None else generator.device  # tasks: the global CPU generator
    probs = torch.tensor(config.task_probs, dtype=torch.float64, device=where)
    task = torch.multinomial(probs, videos.num_videos, replacement=True, generator=generator)
    task = task.to(videos.frames.device)
    first_is_context = (task != TASKS.index("unconditional")) & (videos.lengths > 1)
    return task, first_is_context


def _time(config: NoisingConfig, n: int, generator, device: torch.device) -> Tensor:
    """``n`` draws of ``config.time_distribution`` on the generator's device, moved to ``device``."""
    where = device if generator is None else generator.device
    return config.time_distribution.sample((n,), generator=generator, device=where).to(device)


def _finish(present: PackedVideos, num_clean: int, source_index: Tensor, t: Tensor, context: Tensor,
            task: Tensor, generator, config: NoisingConfig, tau_g: Tensor) -> TrainingState:
    """Noise the present clean frames (context stays clean) and assemble the state."""
    x1 = present.frames
    eps = _devices.draw(torch.randn, x1.shape, generator, x1.device, x1.dtype)
    tt = t.to(x1.dtype)[:, None, None, None]
    noisy = torch.where(context[:, None, None, None], x1, tt * x1 + (1 - tt) * eps)
    inputs = PackedVideos(noisy, present.cu_seqlens, t.to(present.times.dtype), context, torch.ones_like(context))
    drop = _devices.draw(torch.rand, (present.num_videos,), generator, x1.device) < config.p_uncond
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
    _check(videos, generator)
    task, first_is_context = _draw_tasks(videos, generator, config)
    t_video = _time(config, videos.num_videos, generator, videos.frames.device)
    vid = videos.video_index
    context = first_is_context[vid] & (videos.position == 0)
    t = torch.where(context, torch.ones_like(t_video[vid]), t_video[vid])
    return _finish(videos, videos.num_frames, torch.arange(videos.num_frames, device=videos.frames.device), t,
                   context, task, generator, config, t_video)


def make_autoregressive_state(videos: PackedVideos, *, generator: torch.Generator | None = None,
                              config: NoisingConfig = NoisingConfig()) -> TrainingState:
    """Autoregressive teacher forcing: clean prefix, one noisy target frame, the rest stripped."""
    _check(videos, generator)
    task, first_is_context = _draw_tasks(videos, generator, config)
    lengths = videos.lengths
    lo = first_is_context.long()  # the first generable frame
    u = _devices.draw(torch.rand, (videos.num_videos,), generator, videos.frames.device, torch.float64)
    target = lo + (u * (lengths - lo)).long().clamp(max=(lengths - lo - 1).clamp(min=0))  # (B,)
    t_video = _time(config, videos.num_videos, generator, videos.frames.device)
    vid, pos = videos.video_index, videos.position
    keep = pos <= target[vid]
    stripped, source_index = videos.strip(keep)
    vid, pos = vid[source_index], pos[source_index]
    context = pos < target[vid]
    t = torch.where(context, torch.ones_like(t_video[vid]), t_video[vid])
    return _finish(stripped, videos.num_frames, source_index, t, context, task, generator, config, t_video)


def _check(videos: PackedVideos, generator: torch.Generator | None) -> None:
    check_training_videos(videos)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    _devices.check_generators(generator, videos.frames.device, videos.num_videos, user="the frames are")
