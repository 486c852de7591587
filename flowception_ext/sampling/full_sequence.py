"""Full-sequence flow matching (docs/algorithm.md §8): every frame present, one shared time per
video, a fixed length chosen before sampling."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._utils import check_int
from ..packing import PackedVideos
from .common import (Callback, Context, Randomness, SampleOutput, SamplerState, check_callback, check_labels,
                     device_and_dtype, eval_mode, prefix_contexts, resolve_frame_shape)

__all__ = ["sample_full_sequence"]


@torch.no_grad()
def sample_full_sequence(
    model: torch.nn.Module,
    context: Context | Sequence[Context] | Sequence[Tensor] | None = None,
    *,
    num_frames: int,
    steps: int = 50,
    num_videos: int | None = None,
    labels: Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    frame_shape: tuple[int, int, int] | None = None,
    progress: bool = True,
    callback: Callback | None = None,
) -> SampleOutput:
    """Euler sampling of ``num_frames`` frames per video with one shared time.

    The frames of the ``context`` lead each video and stay fixed (image-to-video, extension: a
    :class:`Context` whose only insertable frame is its last; a plain ``[n, C, H, W]`` tensor per
    video is taken as :meth:`Context.extend`). The other frames start as N(0, I) at ``t = 0`` and
    reach ``t = 1`` after ``steps`` Euler steps of size ``1/steps``.

    Arguments, devices and randomness follow the convention of :mod:`flowception_ext.sampling`
    (see :func:`~flowception_ext.sampling.sample`): one ``Context`` shared by ``num_videos`` videos
    (1 by default) or one per video; the model's device; a CPU generator gives the same noise on
    every device, and a list of generators (one per video) makes each video independent of its
    batch. ``callback(step, state)`` sees a :class:`SamplerState` after every step; returning True
    stops early.
    """
    check_int("steps", steps, 1)
    check_int("num_frames", num_frames, 1)
    check_callback(callback)
    contexts, num_videos = prefix_contexts(context, num_videos, num_frames)
    shape = resolve_frame_shape(model, contexts, frame_shape)
    device, dtype = device_and_dtype(model, contexts)
    labels = check_labels(labels, num_videos, device)
    n_ctx = [0 if c is None else len(c) for c in contexts]
    noise = Randomness(generator, num_videos, device).noise([num_frames] * num_videos, shape, device, dtype)
    videos = [torch.cat([c.frames.to(device, dtype), z[n:]]) if c is not None else z
              for c, n, z in zip(contexts, n_ctx, noise.split(num_frames))]
    is_context = [torch.arange(num_frames, device=device) < n for n in n_ctx]
    state = PackedVideos.from_list(videos, times=[ic.to(torch.float32) for ic in is_context], is_context=is_context)
    flowing = ~state.is_context
    x = state.frames.clone()
    never = torch.full((x.shape[0],), -1, dtype=torch.int64, device=device)  # every frame is there from the start
    at_start = torch.zeros(x.shape[0], dtype=torch.float64, device=device)
    completed = True
    with eval_mode(model):
        for step in tqdm(range(steps), desc="full-sequence", disable=not progress):
            t_new = (step + 1) / steps
            v, _ = model(state.replace(frames=x), labels)
            x[flowing] += (t_new - step / steps) * v[flowing].to(x.dtype)
            state = state.replace(times=torch.where(flowing, torch.full_like(state.times, t_new), state.times))
            if callback is not None:
                now = state.replace(frames=x.clone())
                done = SamplerState(step, t_new, now, now.times == 1, never, at_start,
                                    torch.zeros(num_videos, dtype=torch.bool, device=device))
                if callback(step, done) is True:
                    completed = False
                    break
    num_steps = step + 1
    return SampleOutput(
        videos=list(x.split(num_frames)),
        insert_step=list(never.split(num_frames)),
        insert_time=list(at_start.split(num_frames)),
        is_context=state.split(state.is_context),
        max_frames_hit=[False] * num_videos,
        num_model_evals=num_steps,
        num_steps=num_steps,
        completed=completed,
        num_frame_evals=num_steps * x.shape[0],
    )
