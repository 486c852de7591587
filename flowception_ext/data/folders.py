"""A user's own videos: a folder of tensor files (pixels or latents) or of video files.

Files are found recursively (hidden files and folders are skipped) and taken in the sorted
order of their paths below the folder, the same on every machine. Frame counts and frame
shapes are read from the file headers at construction, so a folder with a malformed file
(wrong rank or frame shape, no frames, unreadable, not a video) fails at once with a ValueError
naming the file; what only decoding shows (NaN/inf pixels, a movie that stops decoding) is
found when the item is loaded, again naming the file. uint8 data is mapped to ``[-1, 1]``
(``x / 127.5 - 1``); floating data is returned as it is (latents need not lie in ``[-1, 1]``),
as float32.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import check_int
from .base import VideoDataset, hash_uniform, item_rng
from .decode import FormatError as _FormatError
from .decode import (GIF_EXTENSIONS, MOVIE_EXTENSIONS, count_frames, imageio_v3, probe_video,
                     read_frames)

__all__ = ["TensorFolder", "VideoFolder", "list_files"]


class _Probe(NamedTuple):
    """What a file's header tells: frames (maybe an estimate), frame shape, frame rate."""

    frames: int
    shape: tuple[int, ...]
    fps: float | None = None


def list_files(path: str | Path, extensions: Sequence[str], recursive: bool = True) -> list[Path]:
    """The files below ``path`` whose suffix (any case) is one of ``extensions``, sorted by their
    path relative to ``path``; names starting with a dot (files or folders) are skipped."""
    root = Path(path)
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = []
    for p in candidates:
        rel = p.relative_to(root)
        if p.is_file() and p.suffix.lower() in extensions and not any(part.startswith(".") for part in rel.parts):
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


class _FileFolder(VideoDataset):
    """A sorted folder of files, one video each; subclasses read headers and decode."""

    extensions: tuple[str, ...]
    kind: str

    def __init__(self, path: str | Path, frame_shape: Sequence[int] | None = None, *, recursive: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: not a directory")
        self.files = list_files(self.path, self.extensions, recursive)
        if not self.files:
            where = "below" if recursive else "in"
            raise ValueError(f"{self.path}: no {self.kind} files ({', '.join(self.extensions)}) {where} it")
        # Headers are read in threads: a movie's probe mostly waits for an ffmpeg process.
        with ThreadPoolExecutor(max_workers=min(8, len(self.files))) as pool:
            probes = list(pool.map(lambda file: self._guarded(file, self._probe), self.files))
        expected = tuple(frame_shape) if frame_shape is not None else None
        for file, probe in zip(self.files, probes):
            if probe.frames == 0:
                raise ValueError(f"{file}: empty video (0 frames)")
            shape = self._item_shape(probe.shape)
            if expected is None:
                expected = shape
            elif shape != expected:
                source = "frame_shape" if frame_shape is not None else f"that of {self.files[0]}"
                raise ValueError(f"{file}: frame shape {shape} differs from the expected {expected} ({source})"
                                 f"{self._shape_hint}")
        self._frame_shape = expected
        self._probes = probes
        self.frame_counts = [p.frames for p in probes]

    _shape_hint = ""

    def _item_shape(self, file_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The frame shape of the items made from a file with frames of ``file_shape``."""
        return file_shape

    @property
    def lengths(self) -> list[int]:
        return self.frame_counts

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self._frame_shape  # type: ignore[return-value]

    def _describe(self, index: int) -> str:
        return str(self.files[index])

    def _guarded(self, file: Path, fn):
        """Run ``fn(file)``, turning any failure into a ValueError naming the file."""
        try:
            return fn(file)
        except _FormatError as e:
            raise ValueError(f"{file}: {e}") from e
        except ImportError:
            raise
        except Exception as e:  # a library's own error on a corrupt or unsupported file
            raise ValueError(f"{file}: unreadable {self.kind} file ({_brief(e)})") from e

    @abstractmethod
    def _probe(self, file: Path) -> _Probe:
        """Frames and frame shape from the header, without decoding the frames."""


def _brief(e: Exception) -> str:
    """An exception in one line: its type and the last line of its message (decoders such as
    ffmpeg put the reason last, after pages of banner)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__


def _to_float(x: Tensor) -> Tensor:
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1
    if not x.is_floating_point():
        raise _FormatError(f"unsupported dtype {x.dtype} (expected a floating type or uint8)")
    return x.float()


def _check_rank(shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    if len(shape) != 4:
        raise _FormatError(f"expected one video [n, C, H, W], got shape {tuple(shape)}")
    return int(shape[0]), tuple(int(s) for s in shape[1:])


class TensorFolder(_FileFolder):
    """A folder of ``.safetensors`` / ``.npy`` files, each one video ``[n, C, H, W]``.

    A safetensors file holds the tensor ``"video"``, or a single tensor of any name. ``.npy``
    files are read without pickle (object arrays are refused). Pass ``frame_shape`` to check
    every file against it (default: the first file's). Subfolders are searched unless
    ``recursive=False``.
    """

    extensions = (".safetensors", ".npy")
    kind = "tensor"

    def _probe(self, file: Path) -> _Probe:
        if file.suffix.lower() == ".npy":
            return _Probe(*_check_rank(np.load(file, mmap_mode="r", allow_pickle=False).shape))
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            return _Probe(*_check_rank(f.get_slice(_video_key(f.keys())).get_shape()))

    def _load(self, index: int) -> Tensor:
        return self._guarded(self.files[index], read_tensor_video)


def read_tensor_video(file: str | Path) -> Tensor:
    """One video ``[n, C, H, W]`` (float32; uint8 mapped to [-1, 1]) from a ``.npy`` or
    ``.safetensors`` file, without unpickling."""
    file = Path(file)
    if file.suffix.lower() == ".npy":
        video = torch.from_numpy(np.load(file, allow_pickle=False))
    else:
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            video = f.get_tensor(_video_key(f.keys()))
    _check_rank(video.shape)
    return _to_float(video)


def _video_key(keys) -> str:
    keys = list(keys)
    if "video" in keys:
        return "video"
    if len(keys) == 1:
        return keys[0]
    raise _FormatError(f"holds tensors {sorted(keys)}; expected one named 'video' or a single tensor")


_LENGTH_STREAM, _CLIP_STREAM = 0, 1  # the random streams of VideoFolder: clip lengths; windows and crops
_RESIZE_CHUNK = 8                    # frames resized at once (bounds the float copy of large frames)


class VideoFolder(_FileFolder):
    """A folder of video files (``.gif``, ``.mp4``, ``.webm``, ...), decoded lazily with imageio
    (the ``video`` extra; movies need imageio-ffmpeg).

    Construction reads only headers: frame counts (exact for GIFs, duration × fps for movies,
    see :mod:`flowception_ext.data.decode`) and frame sizes. An item decodes only the frames of
    its clip, seeking to the clip's start and stopping after its last frame. Items are
    ``[n, C, H, W]`` in ``[-1, 1]``; an alpha channel is dropped, grey frames get ``C = 1``.

    What an item holds:

    * **Frames in time**: every ``frame_stride``-th frame of its file, or, with ``fps``, the
      frames nearest to a clock at ``fps`` frames per second (files at other frame rates are
      resampled).
    * **Length**: the whole (strided) video; with ``max_frames``, at most that many frames; with
      ``min_frames`` too, a length drawn uniformly in ``min_frames..max_frames`` (capped by the
      video) per item, so a folder of long videos gives clips of varied lengths. Lengths are a
      function of ``(seed, index)`` and known at construction (``lengths``), as the frame-budget
      sampler needs.
    * **Window**: a clip shorter than its video starts at a random frame, drawn anew each epoch.
    * **Frame size**: with ``frame_size`` (``s`` or ``(H, W)``), the largest region of each frame
      with the target's aspect ratio is cropped (``crop="center"``, or ``"random"``: a position
      drawn anew each epoch, the same for all frames of a clip) and resized to it (bilinear,
      antialiased), so files of mixed sizes are accepted. Without it every file must share one
      frame size.
    * ``clips_per_video``: each file gives that many items (items ``k·i .. k·i + k-1`` come from
      file ``i``), each with its own length and window.

    Randomness is a function of ``(seed, epoch, index)`` only (``dataset[index, epoch]``; plain
    ``dataset[index]`` is epoch 0), never of global RNG state, so DataLoader workers and resumed
    runs load identical items. A movie whose real frame count falls short of its header's
    estimate is counted exactly when that is first noticed, and its clips are placed within the
    real frames (a video shorter than its clip gives fewer frames than ``lengths`` says).

    Args:
        path: the folder (searched recursively unless ``recursive=False``).
        frame_shape: the expected ``(C, H, W)`` of the items (default: that of the first file).
        frame_size: resize and crop every frame to ``frame_size × frame_size`` or ``(H, W)``.
        crop: ``"center"`` or ``"random"``, where the crop lies (with ``frame_size``).
        max_frames, min_frames: clip length bounds (see above).
        frame_stride: keep every ``frame_stride``-th frame.
        fps: resample every file to this frame rate (instead of ``frame_stride``).
        clips_per_video: items per file.
        seed: seed of the lengths, windows and crops.
        recursive: search subfolders.
    """

    extensions = GIF_EXTENSIONS + MOVIE_EXTENSIONS
    kind = "video"

    def __init__(self, path: str | Path, frame_shape: Sequence[int] | None = None, *,
                 frame_size: int | Sequence[int] | None = None, crop: str = "center",
                 max_frames: int | None = None, min_frames: int | None = None, frame_stride: int = 1,
                 fps: float | None = None, clips_per_video: int = 1, seed: int = 0, recursive: bool = True) -> None:
        imageio_v3()  # fail early, before listing the folder
        self.frame_size = _frame_size(frame_size)
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        for name, value in (("max_frames", max_frames), ("min_frames", min_frames)):
            if value is not None:
                check_int(name, value, 1)
        if max_frames is not None and min_frames is not None and min_frames > max_frames:
            raise ValueError(f"min_frames ({min_frames}) must be <= max_frames ({max_frames})")
        check_int("frame_stride", frame_stride, 1)
        check_int("clips_per_video", clips_per_video, 1)
        check_int("seed", seed, -(2**63))
        if fps is not None:
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
                raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
            if frame_stride != 1:
                raise ValueError(f"give frame_stride or fps, not both (got frame_stride={frame_stride}, fps={fps})")
        if frame_shape is not None and self.frame_size is not None and tuple(frame_shape)[1:] != self.frame_size:
            raise ValueError(f"frame_shape {tuple(frame_shape)} contradicts frame_size {self.frame_size}")
        self.crop, self.max_frames, self.min_frames = crop, max_frames, min_frames
        self.frame_stride, self.fps, self.clips_per_video, self.seed = frame_stride, fps, clips_per_video, seed
        super().__init__(path, frame_shape, recursive=recursive)
        self._steps = [self._step(file, probe) for file, probe in zip(self.files, self._probes)]
        counts, steps = np.asarray(self.frame_counts, np.int64), np.asarray(self._steps, np.float64)
        available = np.repeat(np.floor((counts - 1) / steps + 1e-9).astype(np.int64) + 1, clips_per_video)
        hi = available if max_frames is None else np.minimum(available, max_frames)
        lo = hi if min_frames is None else np.minimum(hi, min_frames)
        u = hash_uniform(seed, _LENGTH_STREAM, np.arange(len(hi)))
        self._lengths = [int(n) for n in lo + np.floor(u * (hi - lo + 1)).astype(np.int64)]
        self._exact_counts: dict[int, int] = {}  # files whose header estimate was too high, counted on load

    @property
    def options(self) -> dict:
        """The clip options (JSON-able keyword arguments that rebuild this dataset with ``path``)."""
        return {"frame_size": None if self.frame_size is None else list(self.frame_size), "crop": self.crop,
                "max_frames": self.max_frames, "min_frames": self.min_frames, "frame_stride": self.frame_stride,
                "fps": self.fps, "clips_per_video": self.clips_per_video, "seed": self.seed}

    @property
    def lengths(self) -> list[int]:
        return self._lengths

    @property
    def _shape_hint(self) -> str:  # type: ignore[override]
        return "; pass frame_size to resize frames of mixed sizes" if self.frame_size is None else ""

    def _item_shape(self, file_shape: tuple[int, ...]) -> tuple[int, ...]:
        return file_shape if self.frame_size is None else (file_shape[0], *self.frame_size)

    def _describe(self, index: int) -> str:
        return str(self.files[index // self.clips_per_video])

    def _step(self, file: Path, probe: _Probe) -> float:
        """Source frames per item frame."""
        if self.fps is None:
            return float(self.frame_stride)
        if probe.fps is None:
            raise ValueError(f"{file}: fps={self.fps} needs the file's frame rate, which its header does not give")
        return probe.fps / self.fps

    def _probe(self, file: Path) -> _Probe:
        info = probe_video(file)
        return _Probe(info.frames, info.shape, info.fps)

    def _load(self, index: int) -> Tensor:
        return self._load_epoch(index, 0)

    def _load_epoch(self, index: int, epoch: int) -> Tensor:
        f = index // self.clips_per_video
        offsets = np.floor(np.arange(self._lengths[index]) * self._steps[f] + 0.5).astype(np.int64)
        rng = item_rng(self.seed, _CLIP_STREAM, index, epoch)
        start = int(rng.integers(0, self.frame_counts[f] - offsets[-1]))  # the window fits the header's count
        corner = rng.random(2)                                              # where a random crop lies
        return self._guarded(self.files[f], lambda file: self._decode_clip(f, file, start, offsets, corner))

    def _decode_clip(self, f: int, file: Path, start: int, offsets: np.ndarray, corner: np.ndarray) -> Tensor:
        """Decode the clip at ``start + offsets`` (moved back, or cut, to fit the real frames)."""
        exact = self._exact_counts.get(f)
        while True:
            count = self.frame_counts[f] if exact is None else exact
            fit = offsets[offsets < count]   # a video shorter than the clip: the clip is cut
            if len(fit) == 0:
                raise _FormatError("no frames could be decoded")
            first = min(start, count - 1 - int(fit[-1]))
            wanted = np.unique(first + fit)
            frames = read_frames(file, wanted)
            if len(frames) == len(wanted) or exact is not None:
                break
            exact = self._exact_counts[f] = count_frames(file)  # the header's estimate was too high
        position = np.searchsorted(wanted, first + fit)
        position = position[position < len(frames)]
        if len(position) == 0:
            raise _FormatError("no frames could be decoded")
        return self._resize(torch.from_numpy(frames[position]).permute(0, 3, 1, 2), corner)

    def _resize(self, frames: Tensor, corner: np.ndarray) -> Tensor:
        """uint8 ``[n, C, H, W]`` → float32 in [-1, 1], cropped and resized to ``frame_size``."""
        if self.frame_size is None:
            return frames.float() / 127.5 - 1
        h, w = self.frame_size
        height, width = frames.shape[-2:]
        scale = max(h / height, w / width)
        ch, cw = min(height, round(h / scale)), min(width, round(w / scale))
        if self.crop == "random":
            y0, x0 = int(corner[0] * (height - ch + 1)), int(corner[1] * (width - cw + 1))
        else:
            y0, x0 = (height - ch) // 2, (width - cw) // 2
        frames = frames[..., y0:y0 + ch, x0:x0 + cw]
        if (ch, cw) == (h, w):
            return frames.float() / 127.5 - 1
        out = torch.cat([F.interpolate(frames[i:i + _RESIZE_CHUNK].float(), size=(h, w), mode="bilinear",
                                       antialias=True, align_corners=False)
                         for i in range(0, frames.shape[0], _RESIZE_CHUNK)])
        return (out / 127.5 - 1).clamp_(-1, 1)


def _frame_size(value) -> tuple[int, int] | None:
    """``frame_size`` as ``(H, W)``: from ``s``, ``(H, W)`` or ``None``."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value) \
        if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"frame_size must be an int or an (H, W) pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"frame_size must be >= 1, got {value!r}")
    return (int(pair[0]), int(pair[1]))
