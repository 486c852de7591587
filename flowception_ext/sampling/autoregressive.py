"""Autoregressive baseline (docs/algorithm.md §8): frames generated left to right, each denoised
with ``steps_per_frame`` Euler steps given the clean previous frames.

With a frame-causal model the previous frames' keys/values do not change, so they are cached
(:class:`~flowception_ext.model.KVCache`) and each step runs the new frame only. Without a
cache (required for a bidirectional model) every step reruns all previous frames.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._utils import check_int
from ..model.dit import KVCache
from ..packing import PackedVideos
from .common import (Callback, Context, Randomness, SampleOutput, SamplerState, check_callback, check_labels,
                     device_and_dtype, eval_mode, prefix_contexts, resolve_frame_shape)

__all__ = ["sample_autoregressive"]


@torch.no_grad()
def sample_autoregressive(
    model: torch.nn.Module,
    context: Context | Sequence[Context] | Sequence[Tensor] | None = None,
    *,
    num_frames: int,
    steps_per_frame: int = 20,
    use_cache: bool | None = None,
    num_videos: int | None = None,
    labels: Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    frame_shape: tuple[int, int, int] | None = None,
    progress: bool = True,
    callback: Callback | None = None,
) -> SampleOutput:
    """Generate ``num_frames`` frames per video, one at a time.

    ``context``: the clean first frames, the same number for every video (a :class:`Context`
    whose only insertable frame is its last, or a plain ``[n, C, H, W]`` tensor per video).
    ``use_cache``: default True for frame-causal models, False otherwise (a bidirectional model
    cannot use a cache: its past frames attend to the new one).

    Arguments, devices and randomness follow the convention of :mod:`flowception_ext.sampling`
    (see :func:`~flowception_ext.sampling.sample`). ``callback(step, state)`` sees a
    :class:`SamplerState` after every Euler step (``state.videos``: the finished frames and the
    one being denoised); returning True stops early. ``insert_step`` of a generated frame is the
    step at which its denoising began; ``info["use_cache"]`` says whether the cache was used.
    """
    check_int("steps_per_frame", steps_per_frame, 1)
    check_int("num_frames", num_frames, 1)
    check_callback(callback)
    cfg = model.config
    if use_cache is None:
        use_cache = cfg.attention == "causal"
    if use_cache and cfg.attention != "causal":
        raise ValueError("use_cache=True needs a frame-causal model (config.attention = 'causal')")
    contexts, b = prefix_contexts(context, num_videos, num_frames)
    shape = resolve_frame_shape(model, contexts, frame_shape)
    n_ctx = {0 if c is None else len(c) for c in contexts}
    if len(n_ctx) != 1:
        raise ValueError(f"every video needs the same number of context frames for autoregressive sampling, got {sorted(n_ctx)}")
    n_ctx = n_ctx.pop()
    device, dtype = device_and_dtype(model, contexts)
    labels = check_labels(labels, b, device)
    noise = Randomness(generator, b, device).noise([num_frames - n_ctx] * b, shape, device, dtype)
    noise = noise.unflatten(0, (b, num_frames - n_ctx))  # (B, n, C, H, W)
    done = [torch.stack([c.frames[j] for c in contexts]).to(device, dtype) for j in range(n_ctx)]  # each (B, C, H, W)
    one_per_video = torch.arange(b + 1, device=device)
    evaluations = frame_evals = step = 0
    completed = True
    total_steps = steps_per_frame * (num_frames - n_ctx)
    # Per frame: the step at which its denoising began (-1 for context frames), and that step's
    # fraction of the run.
    begun = torch.tensor([-1] * n_ctx + [(f - n_ctx) * steps_per_frame for f in range(n_ctx, num_frames)],
                         device=device)
    begun_time = begun.clamp(min=0).double() / max(total_steps, 1)

    def single_frames(x: Tensor, t: float, context: bool) -> PackedVideos:
        return PackedVideos(x, one_per_video, torch.full((b,), t, device=device),
                            torch.full((b,), context, device=device), torch.ones(b, dtype=torch.bool, device=device))

    def report(x: Tensor, t: float) -> bool:
        """Call the callback with the finished frames and the current one; True to stop."""
        k = len(done)
        frames = torch.stack(done + [x], dim=1)
        flags = torch.arange(k + 1, device=device) < k
        now = PackedVideos.from_list(list(frames), times=[torch.where(flags, 1.0, t)] * b, is_context=[flags] * b)
        state = SamplerState(step, (step + 1) / max(total_steps, 1), now, now.times == 1, begun[:k + 1].repeat(b),
                             begun_time[:k + 1].repeat(b), torch.zeros(b, dtype=torch.bool, device=device))
        return callback(step, state) is True

    cache = KVCache(cfg.depth) if use_cache else None
    with eval_mode(model):
        if cache is not None:
            for frame in done:  # cache the context frames
                model(single_frames(frame, 1.0, True), labels, cache=cache)
                cache.commit()
                evaluations, frame_evals = evaluations + 1, frame_evals + b
        for k in tqdm(range(n_ctx, num_frames), desc="autoregressive", disable=not progress):
            x = noise[:, k - n_ctx]
            for j in range(steps_per_frame):
                t = j / steps_per_frame
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
                if callback is not None and report(x, (j + 1) / steps_per_frame):
                    completed = False
                step += 1
                if not completed:
                    break
            done.append(x)
            if not completed:
                break
            if cache is not None and k + 1 < num_frames:
                model(single_frames(x, 1.0, True), labels, cache=cache)
                cache.commit()
                evaluations, frame_evals = evaluations + 1, frame_evals + b
    n = len(done)
    return SampleOutput(
        videos=list(torch.stack(done, dim=1).unbind(0)),
        insert_step=[begun[:n].clone() for _ in range(b)],
        insert_time=[begun_time[:n].clone() for _ in range(b)],
        is_context=[torch.arange(n, device=device) < n_ctx for _ in range(b)],
        max_frames_hit=[False] * b,
        num_model_evals=evaluations,
        num_steps=step,
        completed=completed,
        num_frame_evals=frame_evals,
        info={"use_cache": use_cache},
    )
