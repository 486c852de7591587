"""Video files: write generated frames as GIF or MP4 and read them back.

GIFs are written frame by frame through Pillow's GIF encoder with one 256-colour palette for the
whole video (exact for videos with at most 256 distinct colours, such as grey ones), keeping
every frame — Pillow's ``save_all`` would merge identical consecutive frames, so a still video
would come back shorter. MP4 needs ``imageio-ffmpeg`` (``pip install 'flowception_ext[video]'``).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_uint8", "save_video", "load_video"]

_AUTO_MIN_SIDE = 64  # scale=None upscales tiny frames until the shorter side reaches this


def to_uint8(frames: Tensor | Sequence[Tensor], value_range: tuple[float, float] = (-1.0, 1.0),
             scale: int = 1) -> np.ndarray:
    """Frames ``[n, C, H, W]`` (or a list of ``[C, H, W]``), C = 1 or 3, to uint8 ``[n, H·s, W·s, C]``.

    Values are mapped linearly from ``value_range`` to [0, 255] (clamped, rounded); ``scale``
    repeats every pixel ``s × s`` times (nearest neighbour).
    """
    frames = _as_video(frames)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    x = frames.detach().to("cpu", torch.float32)
    x = ((x - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def save_video(frames: Tensor | Sequence[Tensor], path: str | Path, fps: float = 8, *,
               value_range: tuple[float, float] = (-1.0, 1.0), scale: int | None = None) -> Path:
    """Write frames ``[n, C, H, W]`` (C = 1 or 3, values in ``value_range``) as a ``.gif`` or ``.mp4``.

    Args:
        frames: the video, or a list of ``[C, H, W]`` frames.
        path: output file; the suffix picks the format.
        fps: frames per second.
        value_range: the values mapped to black and white.
        scale: integer nearest-neighbour upscaling; ``None`` picks the smallest factor that makes the
            shorter side at least 64 px (tiny latent-sized frames stay visible), 1 keeps the size.
            MP4 (yuv420p) needs even sides: with ``scale=None`` the factor is rounded up to make them even.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"path must end in .gif or .mp4, got {str(path)!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ImportError("writing MP4 needs imageio-ffmpeg: pip install 'flowception_ext[video]' "
                          "(or imageio-ffmpeg), or save a .gif")
    frames = _as_video(frames)
    height, width = frames.shape[-2:]
    if scale is None:
        scale = math.ceil(_AUTO_MIN_SIDE / min(height, width))
        if suffix == ".mp4" and (height * scale % 2 or width * scale % 2):
            scale += 1  # scale is odd here, so the sides become even
    pixels = to_uint8(frames, value_range, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        _write_gif(pixels, path, 1000.0 / fps)
    else:
        import imageio.v2 as imageio  # imported lazily: an optional dependency

        if pixels.shape[1] % 2 or pixels.shape[2] % 2:
            raise ValueError(f"MP4 needs even frame sides, got {pixels.shape[1]}x{pixels.shape[2]}; use an even scale")
        rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
        imageio.mimwrite(path, rgb, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                         pixelformat="yuv420p")
    return path


def _write_gif(pixels: np.ndarray, path: Path, duration_ms: float) -> None:
    """Looping GIF of uint8 ``[n, H, W, C]`` frames, one shared palette, every frame kept."""
    from PIL import GifImagePlugin, Image

    n, h, w, c = pixels.shape
    strip = Image.fromarray(pixels.reshape(n * h, w, c)[..., 0] if c == 1 else pixels.reshape(n * h, w, c))
    strip = strip.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    frames = [strip.crop((0, i * h, w, (i + 1) * h)) for i in range(n)]
    header, _ = GifImagePlugin.getheader(frames[0], info={"loop": 0, "optimize": False})
    with open(path, "wb") as f:
        f.writelines(header)
        for frame in frames:  # GIF delays are in centiseconds
            f.writelines(GifImagePlugin.getdata(frame, duration=10 * round(duration_ms / 10)))
        f.write(b";")  # trailer


def load_video(path: str | Path, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Read a GIF or MP4 as float32 ``[n, 3, H, W]`` mapped back to ``value_range`` (grey videos
    come back with three equal channels; alpha is dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video at {str(path)!r}")
    import imageio.v2 as imageio

    frames = np.stack([np.asarray(f) for f in imageio.mimread(path, memtest=False)])
    if frames.ndim == 3:  # grey frames [n, H, W]
        frames = frames[..., None]
    frames = np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames[..., :3]
    x = torch.from_numpy(frames.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
    lo, hi = value_range
    return x * (hi - lo) + lo


def _as_video(frames: Tensor | Sequence[Tensor]) -> Tensor:
    """A checked grey or RGB ``[n, C, H, W]`` video."""
    frames = _as_frames(frames, "frames", 1)
    if frames.shape[1] not in (1, 3):
        raise ValueError(f"frames must have 1 (grey) or 3 (RGB) channels, got {frames.shape[1]}; "
                         "decode latents or pick channels first")
    return frames


def _as_frames(frames: Tensor | Sequence[Tensor], name: str, minimum: int) -> Tensor:
    """A checked ``[n, C, H, W]`` tensor (n >= minimum) from a tensor or a list of ``[C, H, W]`` frames."""
    if not isinstance(frames, Tensor):
        frames = list(frames)
        if not frames or not all(isinstance(f, Tensor) and f.dim() == 3 for f in frames):
            raise ValueError(f"{name} must be a [n, C, H, W] tensor or a non-empty list of [C, H, W] tensors")
        if any(f.shape != frames[0].shape for f in frames):
            raise ValueError(f"{name}: all frames must have the same shape, got {[tuple(f.shape) for f in frames]}")
        frames = torch.stack(frames)
    if frames.dim() != 4 or frames.shape[0] < minimum:
        raise ValueError(f"{name} must be [n, C, H, W] with n >= {minimum}, got shape {tuple(frames.shape)}")
    return frames
