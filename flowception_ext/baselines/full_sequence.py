"""Full-sequence flow matching (SPEC §8): every frame present, one shared time per video,
a fixed length chosen before sampling."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..packing import PackedVideos
from ._common import (BaselineOutput, check_context, check_steps, model_device_and_dtype, noise_frames,
                      resolve_frame_shape)

__all__ = ["sample_full_sequence"]


@torch.no_grad()
def sample_full_sequence(
    model: torch.nn.Module,
    context: Sequence[Tensor] | None = None,
    *,
    num_frames: int,
    steps: int = 50,
    num_videos: int | None = None,
    labels: Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    frame_shape: tuple[int, int, int] | None = None,
    progress: bool = True,
) -> BaselineOutput:
    """Euler sampling of ``num_frames`` frames per video with one shared time.

    ``context``: per video, clean leading frames ``[n_ctx, C, H, W]`` (e.g. the image of
    image-to-video); they stay fixed. The others start as N(0, I) at t = 0 and reach t = 1 after
    ``steps`` Euler steps of size ``1/steps``.

    Devices and randomness: sampling runs on the model's device (its first parameter); contexts
    and labels are moved there and the videos are returned there. ``generator`` (one, or a list
    with one per video) may live on the CPU or on the model's device: the noise is drawn on the
    generator's device and moved to the model's, so a CPU generator gives the same noise on every
    device. Any other generator device is a ``ValueError``.
    """
    check_steps("steps", steps)
    check_steps("num_frames", num_frames)
    shape = resolve_frame_shape(model, context, frame_shape)
    ctx = check_context(context, num_videos, shape, num_frames)
    device, dtype = model_device_and_dtype(model)
    labels = None if labels is None else labels.to(device)
    noise = noise_frames(num_frames, shape, generator, len(ctx), device, dtype)
    videos = [torch.cat([c.to(device, dtype), z[c.shape[0]:]]) for c, z in zip(ctx, noise)]
    is_context = [torch.arange(num_frames, device=device) < c.shape[0] for c in ctx]
    times = [ic.to(torch.float32) for ic in is_context]
    state = PackedVideos.from_list(videos, times=times, is_context=is_context)
    flowing = ~state.is_context
    x = state.frames.clone()
    was_training = model.training
    model.eval()
    try:
        for step in tqdm(range(steps), desc="full-sequence", disable=not progress):
            t_new = (step + 1) / steps
            v, _ = model(state.replace(frames=x), labels)
            dt = t_new - step / steps
            x[flowing] += dt * v[flowing].to(x.dtype)
            state = state.replace(times=torch.where(flowing, torch.full_like(state.times, t_new), state.times))
    finally:
        model.train(was_training)
    out = list(torch.split(x, num_frames))
    return BaselineOutput(out, model_evaluations=steps, frame_evaluations=steps * x.shape[0])
