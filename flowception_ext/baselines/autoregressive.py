"""Autoregressive baseline (SPEC §8): frames generated left to right, each denoised with
``steps_per_frame`` Euler steps given the clean previous frames.

With a frame-causal model the previous frames' keys/values do not change, so they are cached
(:class:`~flowception_ext.model.KVCache`) and each step runs the new frame only. Without a
cache (required for a bidirectional model) every step reruns all previous frames.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..model.dit import KVCache
from ..packing import PackedVideos
from ._common import (BaselineOutput, check_context, check_steps, model_device_and_dtype, noise_frames,
                      resolve_frame_shape)

__all__ = ["sample_autoregressive"]


@torch.no_grad()
def sample_autoregressive(
    model: torch.nn.Module,
    context: Sequence[Tensor] | None = None,
    *,
    num_frames: int,
    steps_per_frame: int = 20,
    use_cache: bool | None = None,
    num_videos: int | None = None,
    labels: Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    frame_shape: tuple[int, int, int] | None = None,
    progress: bool = True,
) -> BaselineOutput:
    """Generate ``num_frames`` frames per video, one at a time.

    ``context``: per video, the clean first frames (the same count for every video).
    ``use_cache``: default True for frame-causal models, False otherwise (a bidirectional model
    cannot use a cache: its past frames attend to the new one).

    Devices and randomness: sampling runs on the model's device (its first parameter); contexts
    and labels are moved there and the videos are returned there. ``generator`` (one, or a list
    with one per video) may live on the CPU or on the model's device: the noise is drawn on the
    generator's device and moved to the model's, so a CPU generator gives the same noise on every
    device. Any other generator device is a ``ValueError``.
    """
    check_steps("steps_per_frame", steps_per_frame)
    check_steps("num_frames", num_frames)
    cfg = model.config
    if use_cache is None:
        use_cache = cfg.attention == "causal"
    if use_cache and cfg.attention != "causal":
        raise ValueError("use_cache=True needs a frame-causal model (config.attention = 'causal')")
    shape = resolve_frame_shape(model, context, frame_shape)
    ctx = check_context(context, num_videos, shape, num_frames)
    n_ctx = {c.shape[0] for c in ctx}
    if len(n_ctx) != 1:
        raise ValueError(f"every video needs the same number of context frames for autoregressive sampling, got {sorted(n_ctx)}")
    n_ctx = n_ctx.pop()
    b = len(ctx)
    device, dtype = model_device_and_dtype(model)
    labels = None if labels is None else labels.to(device)
    noise = torch.stack(noise_frames(num_frames - n_ctx, shape, generator, b, device, dtype))  # (B, n, C, H, W)
    done = [torch.stack([c[j] for c in ctx]).to(device, dtype) for j in range(n_ctx)]  # clean frames, each (B, C, H, W)
    one_per_video = torch.arange(b + 1, device=device)
    evaluations = frame_evals = 0

    def single_frames(x: Tensor, t: float, context: bool) -> PackedVideos:
        return PackedVideos(x, one_per_video, torch.full((b,), t, device=device),
                            torch.full((b,), context, device=device), torch.ones(b, dtype=torch.bool, device=device))

    was_training = model.training
    model.eval()
    cache = KVCache(cfg.depth) if use_cache else None
    try:
        if cache is not None:
            for frame in done:  # cache the context frames
                model(single_frames(frame, 1.0, True), labels, cache=cache)
                cache.commit()
                evaluations, frame_evals = evaluations + 1, frame_evals + b
        for k in tqdm(range(n_ctx, num_frames), desc="autoregressive", disable=not progress):
            x = noise[:, k - n_ctx]
            for step in range(steps_per_frame):
                t = step / steps_per_frame
                if cache is not None:
                    v, _ = model(single_frames(x, t, False), labels, cache=cache)
                    frame_evals += b
                else:
                    frames = torch.stack(done + [x], dim=1)  # (B, k+1, C, H, W)
                    flags = torch.arange(k + 1, device=device) < k
                    state = PackedVideos.from_list(list(frames), times=[torch.where(flags, 1.0, t)] * b,
                                                   is_context=[flags] * b)
                    v = model(state, labels)[0].unflatten(0, (b, k + 1))[:, -1]
                    frame_evals += b * (k + 1)
                evaluations += 1
                x = x + v.to(x.dtype) / steps_per_frame
            done.append(x)
            if cache is not None and k + 1 < num_frames:
                model(single_frames(x, 1.0, True), labels, cache=cache)
                cache.commit()
                evaluations, frame_evals = evaluations + 1, frame_evals + b
    finally:
        model.train(was_training)
    videos = list(torch.stack(done, dim=1).unbind(0))
    return BaselineOutput(videos, model_evaluations=evaluations, frame_evaluations=frame_evals,
                          info={"use_cache": use_cache})
