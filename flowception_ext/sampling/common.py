"""What every sampler shares: the context of a video, the outputs, the state a callback sees,
the randomness (one generator or one per video), and the argument checks.

The convention (one for every sampler in :mod:`flowception_ext.sampling`): ``sampler(model,
context=None, *, num_videos=None, ..., labels=None, generator=None, frame_shape=None,
progress=True, callback=None) -> SampleOutput``. Sampling runs on the model's device; random
numbers are drawn on the generator's device and moved there (see :mod:`flowception_ext._devices`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .. import _devices
from .._utils import check_int, describe
from ..io import _as_frames
from ..packing import PackedVideos
from ..tasks import canonical_task

__all__ = ["Context", "Randomness", "SampleHistory", "SampleOutput", "SamplerState", "check_callback",
           "check_contexts", "check_labels", "device_and_dtype", "eval_mode", "prefix_contexts",
           "resolve_frame_shape"]

Callback = Callable[[int, "SamplerState"], "bool | None"]


# ---- context -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class Context:
    """Clean frames given for one video, in order, with their ``insertable`` flags.

    ``insertable[i]`` allows new frames in the slot right of frame ``i``. The rule
    (docs/algorithm.md §3.1): a given frame is insertable iff frames may be missing between it and
    the next given frame (or after it, for the last one). The constructor takes any flags; the
    helpers build the common tasks.

    Args:
        frames: ``[n, C, H, W]`` tensor or a sequence of ``[C, H, W]`` tensors (n >= 1).
        insertable: bool ``[n]`` tensor or a sequence of bools.
    """

    frames: Tensor
    insertable: Tensor

    def __post_init__(self) -> None:
        frames = _as_frames(self.frames, "context frames", 1)
        if not frames.is_floating_point():
            raise TypeError(f"context frames must be floating, got {frames.dtype}")
        insertable = torch.as_tensor(self.insertable, device=frames.device)
        if insertable.dtype != torch.bool or insertable.shape != (frames.shape[0],):
            raise ValueError(f"insertable must be {frames.shape[0]} bools (one per context frame), "
                             f"got {insertable.dtype} of shape {tuple(insertable.shape)}")
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "insertable", insertable)

    @classmethod
    def image_to_video(cls, image: Tensor) -> "Context":
        """Image-to-video: the image (``[C, H, W]`` or ``[1, C, H, W]``) is the first frame; frames follow it."""
        frames = image[None] if isinstance(image, Tensor) and image.dim() == 3 else image
        if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[0] != 1:
            raise ValueError(f"image must be [C, H, W] or [1, C, H, W], got {describe(image)}")
        return cls(frames, torch.ones(1, dtype=torch.bool))

    @classmethod
    def interpolate(cls, keyframes: Tensor | Sequence[Tensor]) -> "Context":
        """Interpolation between keyframes (``[k, C, H, W]``, k >= 2): frames may be inserted between
        consecutive keyframes; the last keyframe is passive (it ends the video)."""
        frames = _as_frames(keyframes, "keyframes", 2)
        return cls(frames, torch.arange(frames.shape[0]) < frames.shape[0] - 1)

    @classmethod
    def extend(cls, video: Tensor | Sequence[Tensor]) -> "Context":
        """Video extension: the given frames (``[n, C, H, W]``) stay as they are (all passive) and new
        frames are generated after the last one."""
        frames = _as_frames(video, "video", 1)
        return cls(frames, torch.arange(frames.shape[0]) == frames.shape[0] - 1)

    @classmethod
    def for_task(cls, task: str, frames: Tensor | Sequence[Tensor]) -> "Context | None":
        """The context of a task named as in :mod:`flowception_ext.tasks`: ``None`` for
        ``unconditional``; :meth:`image_to_video` of the first frame; :meth:`interpolate` between
        all the frames; :meth:`extend` of all the frames."""
        task = canonical_task(task)
        if task == "unconditional":
            return None
        frames = _as_frames(frames, "frames", 1)
        if task == "image_to_video":
            return cls.image_to_video(frames[:1])
        return cls.interpolate(frames) if task == "interpolation" else cls.extend(frames)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.frames.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.frames.shape[0]


# ---- outputs -------------------------------------------------------------------------------


@dataclass(eq=False)
class SampleHistory:
    """Per step: the global time reached (``t_g [S]``) and the video lengths after the step (``lengths [S, B]``)."""

    t_g: Tensor
    lengths: Tensor


@dataclass(eq=False)
class SampleOutput:
    """The result of every sampler (:func:`sample`, :func:`sample_full_sequence`,
    :func:`sample_autoregressive`).

    Attributes:
        videos: per video, its frames ``[n_i, C, H, W]``.
        insert_step: per video, int64 ``[n_i]``: the step (0-based) during which each frame was
            inserted; ``-1`` for the frames present from the start (context and starting frames).
        insert_time: per video, float64 ``[n_i]``: the global time ``t_g`` of that step (``step · h``);
            0 for the frames present from the start.
        is_context: per video, bool ``[n_i]``: the frame was given as context.
        max_frames_hit: per video, whether ``max_frames`` discarded at least one drawn insertion.
        num_model_evals: forward passes of the model (2 per step with guidance).
        num_frame_evals: frames through the model, summed over the passes.
        num_steps: sampler steps taken.
        completed: False if the callback stopped the sampler early (frames may then be noisy).
        history: with ``return_history=True``, the global time and the lengths after every step.
        info: sampler-specific facts (the κ scheduler Flowception's sampler used, whether the
            autoregressive sampler used its KV cache).
    """

    videos: list[Tensor]
    insert_step: list[Tensor]
    insert_time: list[Tensor]
    is_context: list[Tensor]
    max_frames_hit: list[bool]
    num_model_evals: int
    num_steps: int
    completed: bool
    history: SampleHistory | None = None
    num_frame_evals: int = 0
    info: dict = field(default_factory=dict)

    @property
    def lengths(self) -> list[int]:
        return [v.shape[0] for v in self.videos]


@dataclass(frozen=True, eq=False)
class SamplerState:
    """What ``callback(step, state)`` sees after each step.

    Attributes:
        step: index of the step just taken (0-based).
        t_g: global time after the step (for the baselines: the shared time of the full-sequence
            sampler, the fraction of the run done for the autoregressive one).
        videos: the packed batch (frames, local times, flags, ``cu_seqlens``).
        finished: bool ``[N]``: final frames: clean (``t = 1``, context frames included) and with
            nothing left to insert before them — insertions have ended (``t_g = 1``), or no frame
            before them in their video is insertable (e.g. the passive prefix of an extension).
            Stream a video by emitting its longest finished prefix as it grows.
        insert_step, insert_time: per frame, as in :class:`SampleOutput` (packed).
        max_frames_hit: bool ``[B]``.
    """

    step: int
    t_g: float
    videos: PackedVideos
    finished: Tensor
    insert_step: Tensor
    insert_time: Tensor
    max_frames_hit: Tensor

    @property
    def insertions_ended(self) -> bool:
        return self.t_g >= 1.0


# ---- randomness ----------------------------------------------------------------------------


class Randomness:
    """One generator for the whole batch, or one per video.

    With one generator per video, every draw for video ``b`` (starting noise, insertion draws, the
    noise of its new frames, the fixed-order schedules) comes from ``generators[b]`` and its amount
    depends only on that video's own state, so a video is the same whatever batch it is sampled in.
    With a single generator, draws are made for the whole packed batch at once and the noise of new
    frames comes from the ``ragged_insert`` kernel (keyed by a seed drawn from the generator).
    Numbers are drawn on each generator's device and moved to the sampling device (see
    :mod:`flowception_ext._devices`).
    """

    def __init__(self, generator: torch.Generator | Sequence[torch.Generator] | None, num_videos: int,
                 device: torch.device):
        checked = _devices.check_generators(generator, device, num_videos)
        self.shared: torch.Generator | None = checked if not isinstance(checked, list) else None
        self.per_video: list[torch.Generator] | None = checked if isinstance(checked, list) else None

    def for_video(self, b: int) -> torch.Generator | None:
        return self.shared if self.per_video is None else self.per_video[b]

    def draw(self, fn: Callable[..., Tensor], lengths: list[int], *packed: Tensor) -> Tensor:
        """``fn(n, generator, *slices)`` over the batch: once with the shared generator, or per video
        (``packed`` tensors split by ``lengths``) with each video's generator, concatenated."""
        if self.per_video is None:
            return fn(sum(lengths), self.shared, *packed)
        parts = [t.split(lengths) for t in packed]
        return torch.cat([fn(n, g, *(p[b] for p in parts)) for b, (n, g) in enumerate(zip(lengths, self.per_video))])

    def noise(self, counts: list[int], shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """``counts[b]`` N(0, I) frames of ``shape`` per video ``b``, packed ``[sum(counts), *shape]``."""
        return self.draw(lambda n, g: _devices.draw(torch.randn, (n, *shape), g, device, dtype), counts)


# ---- argument checks -----------------------------------------------------------------------


def check_contexts(context: Context | Sequence[Context] | None, num_videos: int | None) -> tuple[list[Context | None], int]:
    """Per video, its :class:`Context` (``None`` for none), and the number of videos.

    ``context``: one :class:`Context` shared by ``num_videos`` videos (1 by default), a non-empty
    list with one per video, or ``None`` (unconditional).
    """
    if num_videos is not None:
        check_int("num_videos", num_videos, 1)
    if context is None or isinstance(context, Context):
        n = 1 if num_videos is None else num_videos
        return [context] * n, n
    try:
        contexts = list(context)
    except TypeError:
        contexts = []
    if not contexts or not all(isinstance(c, Context) for c in contexts):
        raise TypeError(f"context must be a Context, a non-empty list of Context (one per video) or None, got {describe(context)}")
    if num_videos is not None and num_videos != len(contexts):
        raise ValueError(f"num_videos ({num_videos}) does not match the number of contexts ({len(contexts)})")
    return contexts, len(contexts)


def prefix_contexts(context: Context | Sequence[Context] | Sequence[Tensor] | None, num_videos: int | None,
                    num_frames: int) -> tuple[list[Context | None], int]:
    """:func:`check_contexts` for the samplers that generate after the given frames (the baselines):
    each context must be a prefix (only its last frame insertable, as :meth:`Context.image_to_video`
    and :meth:`Context.extend` build) of at most ``num_frames`` frames. A plain ``[n, C, H, W]``
    tensor per video is taken as :meth:`Context.extend`."""
    if isinstance(context, (list, tuple)) and context and all(isinstance(c, Tensor) for c in context):
        context = [Context.extend(c if c.dim() == 4 else c[None]) for c in context]
    contexts, num_videos = check_contexts(context, num_videos)
    for b, c in enumerate(contexts):
        if c is None:
            continue
        if c.insertable[:-1].any() or not c.insertable[-1]:
            raise ValueError(f"context of video {b} must be a prefix (only its last frame insertable, as "
                             "Context.image_to_video and Context.extend build): this sampler generates after it")
        if len(c) > num_frames:
            raise ValueError(f"context of video {b} has {len(c)} frames, more than num_frames = {num_frames}")
    return contexts, num_videos


def check_callback(callback: Callback | None) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {describe(callback)}")


def resolve_frame_shape(model: nn.Module, contexts: list[Context | None], frame_shape) -> tuple[int, int, int]:
    """The frame shape: ``frame_shape``, else the model's config (``in_channels``, ``frame_size``),
    else the context's; every context frame must have it."""
    if frame_shape is not None:
        shape = tuple(int(s) for s in frame_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"frame_shape must be (C, H, W) with positive entries, got {frame_shape!r}")
    else:
        config = getattr(model, "config", None)
        channels, size = getattr(config, "in_channels", None), getattr(config, "frame_size", None)
        if channels is not None and size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            shape = (int(channels), *size)
        elif contexts[0] is not None:
            shape = contexts[0].frame_shape
        else:
            raise ValueError("frame_shape=(C, H, W) is needed without context (the model has no config.in_channels/frame_size)")
    for b, c in enumerate(contexts):
        if c is not None and c.frame_shape != shape:
            raise ValueError(f"context frames of video {b} have shape {c.frame_shape}, expected {shape}")
    return shape  # type: ignore[return-value]


def device_and_dtype(model: nn.Module, contexts: list[Context | None]) -> tuple[torch.device, torch.dtype]:
    """The sampling device and the frames' dtype.

    Device: the model's (first parameter, else first buffer); for a model without tensors, the
    first context's, else the CPU. Dtype: the first context's, else the model's first parameter's
    (float32 for a non-float one or none).
    """
    device = _devices.module_device(model)
    if device is None:
        device = contexts[0].frames.device if contexts[0] is not None else torch.device("cpu")
    if contexts[0] is not None:
        return device, contexts[0].frames.dtype
    param = next(model.parameters(), None)
    return device, param.dtype if param is not None and param.is_floating_point() else torch.float32


def check_labels(labels: Tensor | None, num_videos: int, device: torch.device) -> Tensor | None:
    """``labels`` (one entry per video) on ``device``, or ``None``."""
    if labels is not None and (not isinstance(labels, Tensor) or labels.dim() < 1 or labels.shape[0] != num_videos):
        raise ValueError(f"labels must be a tensor with one entry per video ({num_videos}), got {describe(labels)}")
    return None if labels is None else labels.to(device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode, restoring its training mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
