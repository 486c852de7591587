"""Small pieces shared by the baseline samplers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import _devices


@dataclass
class BaselineOutput:
    """Result of a baseline sampler: the videos and the number of model forward passes
    (``frame_evaluations`` counts frames through the model, summed over passes)."""

    videos: list[Tensor]
    model_evaluations: int = 0
    frame_evaluations: int = 0
    info: dict = field(default_factory=dict)


def resolve_frame_shape(model, context: Sequence[Tensor] | None, frame_shape) -> tuple[int, int, int]:
    cfg = getattr(model, "config", None)
    if frame_shape is None and cfg is not None:
        frame_shape = (cfg.in_channels, *cfg.frame_size)
    if frame_shape is None and context:
        frame_shape = tuple(context[0].shape[1:])
    if frame_shape is None:
        raise ValueError("frame_shape must be given (the model has no config and there is no context)")
    return tuple(int(s) for s in frame_shape)  # type: ignore[return-value]


def check_context(context: Sequence[Tensor] | None, num_videos: int | None, frame_shape, max_len: int) -> list[Tensor]:
    """Per video, the clean leading frames ``[n_ctx, C, H, W]`` (possibly 0 frames)."""
    if context is None:
        if num_videos is None or num_videos < 1:
            raise ValueError(f"num_videos must be >= 1 without context, got {num_videos}")
        return [torch.zeros(0, *frame_shape) for _ in range(num_videos)]
    context = [c if c.dim() == 4 else c[None] for c in context]
    if num_videos is not None and num_videos != len(context):
        raise ValueError(f"num_videos ({num_videos}) must match the number of contexts ({len(context)})")
    for i, c in enumerate(context):
        if tuple(c.shape[1:]) != tuple(frame_shape):
            raise ValueError(f"context[{i}] must hold frames of shape {tuple(frame_shape)}, got {tuple(c.shape[1:])}")
        if c.shape[0] > max_len:
            raise ValueError(f"context[{i}] has {c.shape[0]} frames, more than num_frames = {max_len}")
    return list(context)


def model_device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the baselines sample: the model's first parameter's device and dtype."""
    param = next(model.parameters())
    return param.device, param.dtype


def noise_frames(count: int, frame_shape, generator, num_videos: int, device, dtype) -> list[Tensor]:
    """``count`` N(0, I) frames for each video on ``device``: from its own generator when
    ``generator`` is a list (so a video does not depend on its batch), else from the one generator.
    Drawn on each generator's device (a CPU one gives the same noise for every ``device``), then moved."""
    generator = _devices.check_generators(generator, device, num_videos)
    if isinstance(generator, list):
        return [_devices.draw(torch.randn, (count, *frame_shape), g, device, dtype) for g in generator]
    noise = _devices.draw(torch.randn, (num_videos, count, *frame_shape), generator, device, dtype)
    return list(noise.unbind(0))


def check_steps(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
