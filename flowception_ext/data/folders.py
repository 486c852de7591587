"""A user's own videos: a folder of tensor files (pixels or latents) or of video files.

Files are taken in sorted name order (not recursive). Lengths and frame shapes are read from
the file headers at construction, so a folder with a malformed file (wrong rank or frame shape,
no frames, unreadable) fails at once with a ValueError naming the file; NaN/inf pixels are
found when the item is loaded. uint8 data is mapped to ``[-1, 1]`` (``x / 127.5 - 1``);
floating data is returned as it is (latents need not lie in ``[-1, 1]``), as float32.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import VideoDataset

__all__ = ["TensorFolder", "VideoFolder"]


class _FormatError(ValueError):
    """A readable file that does not hold one video (the message is completed with the path)."""


class _FileFolder(VideoDataset):
    """A sorted folder of files, one video each; subclasses read headers and decode."""

    extensions: tuple[str, ...]
    kind: str

    def __init__(self, path: str | Path, frame_shape: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: not a directory")
        self.files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in self.extensions)
        if not self.files:
            raise ValueError(f"{self.path}: no {self.kind} files ({', '.join(self.extensions)})")
        self._lengths = []
        expected = tuple(frame_shape) if frame_shape is not None else None
        for file in self.files:
            n, shape = self._guarded(file, self._probe)
            if n == 0:
                raise ValueError(f"{file}: empty video (0 frames)")
            if expected is None:
                expected = shape
            elif shape != expected:
                source = "frame_shape" if frame_shape is not None else f"that of {self.files[0]}"
                raise ValueError(f"{file}: frame shape {shape} differs from the expected {expected} ({source})")
            self._lengths.append(n)
        self._frame_shape = expected

    @property
    def lengths(self) -> list[int]:
        return self._lengths

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self._frame_shape  # type: ignore[return-value]

    def _describe(self, index: int) -> str:
        return str(self.files[index])

    def _load(self, index: int) -> Tensor:
        return self._guarded(self.files[index], self._read)

    def _guarded(self, file: Path, fn):
        """Run ``fn(file)``, turning any failure into a ValueError naming the file."""
        try:
            return fn(file)
        except _FormatError as e:
            raise ValueError(f"{file}: {e}") from e
        except Exception as e:  # a library's own error on a corrupt or unsupported file
            raise ValueError(f"{file}: unreadable {self.kind} file ({type(e).__name__}: {e})") from e

    @abstractmethod
    def _probe(self, file: Path) -> tuple[int, tuple[int, ...]]:
        """``(frames, frame shape)`` from the header, without decoding the frames."""

    @abstractmethod
    def _read(self, file: Path) -> Tensor:
        """The video as float32 ``[n, C, H, W]``."""


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
    every file against it (default: the first file's).
    """

    extensions = (".safetensors", ".npy")
    kind = "tensor"

    def _probe(self, file: Path) -> tuple[int, tuple[int, ...]]:
        if file.suffix.lower() == ".npy":
            return _check_rank(np.load(file, mmap_mode="r", allow_pickle=False).shape)
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            return _check_rank(f.get_slice(_video_key(f.keys())).get_shape())

    def _read(self, file: Path) -> Tensor:
        return read_tensor_video(file)


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


_VIDEO_EXTRA_HINT = "pip install 'flowception_ext[video]' (imageio, and imageio-ffmpeg for mp4 and other movies)"


class VideoFolder(_FileFolder):
    """A folder of video files (``.gif``, ``.mp4``, ...) decoded with imageio (the ``video`` extra).

    Frames become ``[n, C, H, W]`` in ``[-1, 1]``; an alpha channel is dropped, grey frames get
    ``C = 1``. GIFs decode with Pillow; mp4 and other movies need imageio-ffmpeg.
    """

    extensions = (".gif", ".mp4", ".webm", ".avi", ".mov", ".mkv")
    kind = "video"

    def __init__(self, path: str | Path, frame_shape: Sequence[int] | None = None) -> None:
        _imageio()  # fail early, before listing the folder
        super().__init__(path, frame_shape)

    def _probe(self, file: Path) -> tuple[int, tuple[int, ...]]:
        shape = tuple(_imageio().improps(file, index=None).shape)
        if len(shape) == 3:                                    # (n, H, W) grey
            shape = (*shape, 1)
        if len(shape) == 4 and np.isfinite(shape[0]):
            return int(shape[0]), _frame_shape_chw(shape[1:])
        n, *frame = self._read(file).shape  # frame count not in the header: decode once
        return n, tuple(frame)

    def _read(self, file: Path) -> Tensor:
        try:
            frames = _imageio().imread(file, index=None)
        except Exception as e:
            hint = "" if file.suffix.lower() == ".gif" else f"; movies need imageio-ffmpeg: {_VIDEO_EXTRA_HINT}"
            raise _FormatError(f"cannot decode ({type(e).__name__}: {e}){hint}") from e
        frames = np.asarray(frames)
        if frames.ndim == 3:                                   # (n, H, W) grey
            frames = frames[..., None]
        if frames.ndim != 4:
            raise _FormatError(f"decoded to shape {frames.shape}, expected (frames, H, W, channels)")
        if frames.shape[-1] in (2, 4):                         # drop alpha
            frames = frames[..., :-1]
        return _to_float(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous())


def _imageio():
    """imageio's v3 API (not kept on the dataset, which must stay picklable for DataLoader workers)."""
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise ImportError(f"VideoFolder needs imageio to decode videos: {_VIDEO_EXTRA_HINT}") from e
    return iio


def _frame_shape_chw(hwc: Sequence[int]) -> tuple[int, int, int]:
    h, w, c = (int(s) for s in hwc)
    return (c - 1 if c in (2, 4) else c, h, w)
