"""PackedVideos: a batch of variable-length videos, packed frame by frame.

All frames of all videos are concatenated along dim 0 (``[N, C, H, W]``) with ``cu_seqlens``
(int64 ``[B+1]``, exclusive prefix sums of the lengths, as in FlashAttention's varlen API).
Per-frame vectors — local time ``times``, ``is_context``, ``insertable`` — are packed the same
way. Nothing is ever padded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ._utils import describe
from .ops import ragged_insert, ragged_strip
from .ops.reference import check_cu_seqlens

__all__ = ["PackedVideos", "times_dtype_for"]


def times_dtype_for(frames_dtype: torch.dtype) -> torch.dtype:
    """Times stay float32 for low-precision frames (t = 0.996 must not round to 1) and follow float64."""
    return torch.float64 if frames_dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class PackedVideos:
    """A packed batch of videos (see the module docstring).

    Attributes:
        frames: ``[N, C, H, W]`` floating frames of all videos, concatenated.
        cu_seqlens: int64 ``[B+1]``; video ``b`` owns rows ``cu_seqlens[b]:cu_seqlens[b+1]``.
        times: ``[N]`` local time of each frame in ``[0, 1]`` (1 = clean).
        is_context: bool ``[N]``, clean frames given by the user (never denoised).
        insertable: bool ``[N]``, new frames may be inserted in the slot right of the frame.
    """

    frames: Tensor
    cu_seqlens: Tensor
    times: Tensor
    is_context: Tensor
    insertable: Tensor

    def __post_init__(self) -> None:
        # Cheap structural checks only (no device sync); validate() checks the values.
        if not isinstance(self.frames, Tensor) or self.frames.dim() != 4:
            raise ValueError(f"frames must be a [N, C, H, W] tensor, got {describe(self.frames)}")
        if not self.frames.is_floating_point():
            raise TypeError(f"frames must be a floating tensor, got {self.frames.dtype}")
        if not isinstance(self.cu_seqlens, Tensor) or self.cu_seqlens.dim() != 1 or self.cu_seqlens.numel() < 1:
            raise ValueError(f"cu_seqlens must be a 1-D tensor [B+1], got {describe(self.cu_seqlens)}")
        if self.cu_seqlens.dtype != torch.int64:
            raise TypeError(f"cu_seqlens must be int64, got {self.cu_seqlens.dtype}")
        n = self.frames.shape[0]
        for name, dtype_ok, kind in (
            ("times", lambda t: t.is_floating_point(), "floating"),
            ("is_context", lambda t: t.dtype == torch.bool, "bool"),
            ("insertable", lambda t: t.dtype == torch.bool, "bool"),
        ):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != n:
                raise ValueError(f"{name} must be a 1-D tensor with one entry per frame ({n}), got {describe(t)}")
            if not dtype_ok(t):
                raise TypeError(f"{name} must be {kind}, got {t.dtype}")
            if t.device != self.frames.device:
                raise ValueError(f"{name} must be on the frames' device ({self.frames.device}), got {t.device}")
        if self.cu_seqlens.device != self.frames.device:
            raise ValueError(f"cu_seqlens must be on the frames' device ({self.frames.device}), got {self.cu_seqlens.device}")

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def from_list(
        cls,
        frames: Sequence[Tensor],
        times: Sequence[Tensor] | None = None,
        is_context: Sequence[Tensor] | None = None,
        insertable: Sequence[Tensor] | None = None,
    ) -> "PackedVideos":
        """Pack a list of videos ``[n_i, C, H, W]`` (and optional per-video ``[n_i]`` vectors).

        Defaults: ``times = 1`` (clean), no context, every frame insertable.
        """
        frames = list(frames)
        if not frames:
            raise ValueError("frames must hold at least one video (got an empty list)")
        for i, f in enumerate(frames):
            if not isinstance(f, Tensor) or f.dim() != 4:
                raise ValueError(f"frames[{i}] must be a [n, C, H, W] tensor, got {describe(f)}")
            if f.shape[1:] != frames[0].shape[1:]:
                raise ValueError(f"frames[{i}] has frame shape {tuple(f.shape[1:])}, but frames[0] has {tuple(frames[0].shape[1:])}")
        lengths = [f.shape[0] for f in frames]
        device = frames[0].device
        cu = torch.zeros(len(frames) + 1, dtype=torch.int64)
        cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)

        def pack(values, name, default):
            if values is None:
                return default
            values = list(values)
            if len(values) != len(frames):
                raise ValueError(f"{name} must have one entry per video ({len(frames)}), got {len(values)}")
            for i, (v, n) in enumerate(zip(values, lengths)):
                if not isinstance(v, Tensor) or v.shape != (n,):
                    raise ValueError(f"{name}[{i}] must be a [{n}] tensor (one entry per frame of video {i}), got {describe(v)}")
            return torch.cat([v.to(device) for v in values])

        packed = torch.cat(frames)
        n = packed.shape[0]
        tdtype = times_dtype_for(packed.dtype)
        return cls(
            frames=packed,
            cu_seqlens=cu.to(device),
            times=pack(times, "times", torch.ones(n, dtype=tdtype, device=device)).to(tdtype),
            is_context=pack(is_context, "is_context", torch.zeros(n, dtype=torch.bool, device=device)),
            insertable=pack(insertable, "insertable", torch.ones(n, dtype=torch.bool, device=device)),
        )

    @classmethod
    def from_padded(
        cls,
        x: Tensor,
        mask: Tensor,
        times: Tensor | None = None,
        is_context: Tensor | None = None,
        insertable: Tensor | None = None,
    ) -> "PackedVideos":
        """Pack ``x [B, L, C, H, W]`` keeping the frames where ``mask [B, L]`` is set (in order).

        Optional per-frame ``[B, L]`` tensors are packed the same way.
        """
        if x.dim() != 5:
            raise ValueError(f"x must be [B, L, C, H, W], got shape {tuple(x.shape)}")
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool [B, L] = {tuple(x.shape[:2])} tensor, got {mask.dtype} {tuple(mask.shape)}")
        lengths = mask.sum(1)
        cu = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
        n = int(cu[-1])

        def pick(t, name, default):
            if t is None:
                return default
            if t.shape != mask.shape:
                raise ValueError(f"{name} must be [B, L] = {tuple(mask.shape)}, got {tuple(t.shape)}")
            return t[mask]

        tdtype = times_dtype_for(x.dtype)
        return cls(
            frames=x[mask],
            cu_seqlens=cu,
            times=pick(times, "times", torch.ones(n, dtype=tdtype, device=x.device)).to(tdtype),
            is_context=pick(is_context, "is_context", torch.zeros(n, dtype=torch.bool, device=x.device)),
            insertable=pick(insertable, "insertable", torch.ones(n, dtype=torch.bool, device=x.device)),
        )

    # ---- views -------------------------------------------------------------------------

    @property
    def num_videos(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.frames.shape[1:])  # type: ignore[return-value]

    @property
    def lengths(self) -> Tensor:
        """int64 ``[B]``: frames per video."""
        return self.cu_seqlens.diff()

    @property
    def video_index(self) -> Tensor:
        """int64 ``[N]``: the video each frame belongs to."""
        return torch.repeat_interleave(torch.arange(self.num_videos, device=self.frames.device), self.lengths,
                                       output_size=self.num_frames)

    @property
    def position(self) -> Tensor:
        """int64 ``[N]``: index of each frame inside its video."""
        return torch.arange(self.num_frames, device=self.frames.device) - self.cu_seqlens[self.video_index]

    def to_list(self) -> list[Tensor]:
        """The frames of each video, ``[n_i, C, H, W]`` (views into ``frames``)."""
        return list(torch.split(self.frames, self.lengths.tolist()))

    def split(self, values: Tensor) -> list[Tensor]:
        """Split any packed per-frame tensor (``[N, ...]``) into one tensor per video."""
        return list(torch.split(values, self.lengths.tolist()))

    def to_padded(self, fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """``(x [B, L_max, C, H, W], mask [B, L_max])`` with videos left-aligned (the inverse of from_padded)."""
        b, lmax = self.num_videos, int(self.lengths.max()) if self.num_videos else 0
        mask = torch.arange(lmax, device=self.frames.device) < self.lengths[:, None]
        x = self.frames.new_full((b, lmax, *self.frame_shape), fill)
        x[mask] = self.frames
        return x, mask

    # ---- transformations ---------------------------------------------------------------

    def replace(self, **changes) -> "PackedVideos":
        """A copy with some fields replaced (checked like a new instance)."""
        return dataclasses.replace(self, **changes)

    def to(self, *args, **kwargs) -> "PackedVideos":
        """Move to a device and/or cast the frames (``to(device)``, ``to(dtype)``, ``to(device, dtype)``).

        Times follow: float64 with float64 frames, float32 otherwise. Index tensors only move.
        """
        frames = self.frames.to(*args, **kwargs)
        device = frames.device
        return PackedVideos(
            frames=frames,
            cu_seqlens=self.cu_seqlens.to(device),
            times=self.times.to(device=device, dtype=times_dtype_for(frames.dtype)),
            is_context=self.is_context.to(device),
            insertable=self.insertable.to(device),
        )

    def strip(self, keep: Tensor, total_kept: int | None = None) -> tuple["PackedVideos", Tensor]:
        """Keep the frames where ``keep`` is set; returns the new batch and the source index of each kept frame."""
        frames, cu, src = ragged_strip(self.frames, self.cu_seqlens, keep, total_kept)
        return PackedVideos(frames, cu, self.times[src], self.is_context[src], self.insertable[src]), src

    def insert(
        self,
        counts: Tensor,
        total_new: int | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple["PackedVideos", Tensor, Tensor]:
        """Insert ``counts[j]`` noise frames (t = 0, not context, insertable) after frame ``j``.

        Returns ``(videos, src_pos, new_pos)`` as :func:`flowception_ext.ops.ragged_insert`.
        """
        frames, cu, src_pos, new_pos = ragged_insert(self.frames, self.cu_seqlens, counts, total_new, seed,
                                                     generator=generator)
        m = frames.shape[0]
        times = self.times.new_zeros(m).index_copy_(0, src_pos, self.times)
        is_context = self.is_context.new_zeros(m).index_copy_(0, src_pos, self.is_context)
        insertable = self.insertable.new_ones(m).index_copy_(0, src_pos, self.insertable)
        return PackedVideos(frames, cu, times, is_context, insertable), src_pos, new_pos

    def drop_context(self, videos: Tensor | None = None) -> "PackedVideos":
        """Conditioning dropout for guidance: the context frames of the selected videos (bool ``[B]``;
        all videos if ``None``) become ordinary clean frames (``is_context = False``, ``t = 1``), so the
        model sees no context channel for them. Frames, times and ``insertable`` are unchanged, so
        training (``p_uncond``) and the unconditional pass of guided sampling see the same states.
        """
        if videos is None:
            return self.replace(is_context=torch.zeros_like(self.is_context))
        if videos.dtype != torch.bool or videos.shape != (self.num_videos,):
            raise ValueError(f"videos must be a bool [{self.num_videos}] mask, got {videos.dtype} {tuple(videos.shape)}")
        return self.replace(is_context=self.is_context & ~videos[self.video_index])

    def validate(self) -> "PackedVideos":
        """Check every invariant (reads values, so it syncs); returns self. Raises ValueError naming the field."""
        check_cu_seqlens(self.cu_seqlens, self.num_frames)
        if torch.isnan(self.times).any() or (self.times < 0).any() or (self.times > 1).any():
            raise ValueError("times must lie in [0, 1] (no NaN)")
        if (self.is_context & (self.times != 1)).any():
            raise ValueError("context frames (is_context) must have times == 1")
        if not torch.isfinite(self.frames).all():
            raise ValueError("frames must be finite (found NaN or inf)")
        return self

    def __repr__(self) -> str:
        return (f"PackedVideos(num_videos={self.num_videos}, lengths={self.lengths.tolist()}, "
                f"frame_shape={self.frame_shape}, dtype={self.frames.dtype}, device={self.frames.device})")
