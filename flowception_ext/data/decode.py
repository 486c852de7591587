"""Lazy video decoding for :class:`~flowception_ext.data.VideoFolder`: header probes, and
reading only the frames asked for.

GIFs are read with imageio's Pillow plugin, movies (mp4, webm, avi, mov, mkv, m4v) with
imageio's ffmpeg plugin (the ``imageio-ffmpeg`` package). A probe reads the header only. A GIF's
frame count is exact; a movie's is estimated from the header's duration × fps (rounded down),
because counting exactly means decoding the whole file. Reading frames beyond the real end of a
file is not an error: :func:`read_frames` returns the frames that exist, and the caller learns
the exact count with :func:`count_frames`.

Frames come back as uint8 arrays ``[k, H, W, C]``: an alpha channel is dropped, grey frames get
``C = 1``. Nothing here keeps a module or a reader open, so datasets using it stay picklable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["GIF_EXTENSIONS", "MOVIE_EXTENSIONS", "FormatError", "VideoInfo", "probe_video", "count_frames",
           "read_frames"]

GIF_EXTENSIONS = (".gif",)
MOVIE_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")

VIDEO_EXTRA_HINT = "pip install 'flowception_ext[video]' (imageio, and imageio-ffmpeg for mp4 and other movies)"


class FormatError(ValueError):
    """A file that does not hold a video as expected (the caller adds the file's path)."""


class VideoInfo(NamedTuple):
    """What a probe tells without decoding: the frame count (``exact`` or an estimate), the frame
    rate (``None`` when the file does not say) and the decoded frame shape ``(C, H, W)``."""

    frames: int
    exact: bool
    fps: float | None
    shape: tuple[int, int, int]


def imageio_v3():
    """imageio's v3 API, or an ImportError telling how to install it."""
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise ImportError(f"decoding videos needs imageio: {VIDEO_EXTRA_HINT}") from e
    return iio


def _is_gif(file: Path) -> bool:
    return file.suffix.lower() in GIF_EXTENSIONS


def _channels(c: int) -> int:
    return c - 1 if c in (2, 4) else c  # an alpha channel is dropped


def probe_video(file: str | Path) -> VideoInfo:
    """Frame count, frame rate and frame shape of a video file from its header.

    Raises FormatError for an empty file; the decoders' own errors (OSError, RuntimeError, ...)
    pass through for the caller to name the file.
    """
    file = Path(file)
    if file.stat().st_size == 0:
        raise FormatError("empty file (0 bytes)")
    iio = imageio_v3()
    if _is_gif(file):
        with iio.imopen(file, "r", plugin="pillow") as f:
            props = f.properties(index=None)
            meta = f.metadata()
        n, h, w, *c = props.shape
        duration = meta.get("duration")  # milliseconds per frame
        fps = 1000.0 / duration if isinstance(duration, (int, float)) and duration > 0 else None
        return VideoInfo(int(n), True, fps, (_channels(c[0]) if c else 1, int(h), int(w)))
    meta = iio.immeta(file, plugin="FFMPEG")
    w, h = meta["size"]
    fps = meta.get("fps")
    fps = float(fps) if isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0 else None
    duration = meta.get("duration")
    nframes = meta.get("nframes")
    if isinstance(nframes, (int, float)) and math.isfinite(nframes) and nframes > 0:
        n, exact = int(nframes), False
    elif fps is not None and isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0:
        n, exact = int(math.floor(duration * fps + 1e-6)), False
    else:  # the header says neither: count by decoding (slow, but right)
        n, exact = count_frames(file), True
    return VideoInfo(n, exact, fps, (3, int(h), int(w)))


def count_frames(file: str | Path) -> int:
    """The exact frame count, by decoding the whole file (ffmpeg decodes without sending the
    pixels back, so this is much faster than reading the frames)."""
    file = Path(file)
    if _is_gif(file):
        with imageio_v3().imopen(file, "r", plugin="pillow") as f:
            return int(f.properties(index=None).n_images)
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError(f"decoding {file.suffix} files needs imageio-ffmpeg: {VIDEO_EXTRA_HINT}") from e
    return int(imageio_ffmpeg.count_frames_and_secs(str(file))[0])


def read_frames(file: str | Path, indices: Sequence[int]) -> np.ndarray:
    """The frames at ``indices`` (ascending, each >= 0) as uint8 ``[k, H, W, C]``.

    Decodes from the first index asked for (movies seek there) and stops after the last one.
    Indices past the end of the file are left out, so ``k < len(indices)`` means the video is
    shorter than asked for. Decoding errors pass through for the caller to name the file.
    """
    file = Path(file)
    indices = [int(i) for i in indices]
    if any(b < a for a, b in zip(indices, indices[1:])) or (indices and indices[0] < 0):
        raise ValueError(f"indices must be ascending and >= 0, got {indices}")
    frames: list[np.ndarray] = []
    if not indices:
        raise ValueError("indices is empty: ask for at least one frame")
    if _is_gif(file):
        with imageio_v3().imopen(file, "r", plugin="pillow") as f:
            for i in indices:
                try:
                    frames.append(np.asarray(f.read(index=i)))
                except (EOFError, IndexError):
                    break
    else:
        imageio_v3()
        import imageio.v2 as iio2

        reader = iio2.get_reader(file, format="FFMPEG")
        try:
            for i in indices:  # forward reads skip frames; far jumps restart ffmpeg with a seek
                try:
                    frames.append(np.asarray(reader.get_data(i)))
                except IndexError:  # past the end
                    break
        finally:
            reader.close()
    if not frames:
        return np.zeros((0, 0, 0, 0), np.uint8)
    out = np.stack(frames)
    if out.ndim == 3:                      # (k, H, W) grey
        out = out[..., None]
    if out.ndim != 4:
        raise FormatError(f"decoded to shape {out.shape}, expected (frames, H, W, channels)")
    if out.shape[-1] in (2, 4):            # drop alpha
        out = out[..., :-1]
    if out.dtype != np.uint8:
        raise FormatError(f"decoded to dtype {out.dtype}, expected uint8")
    return np.ascontiguousarray(out)
