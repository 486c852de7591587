"""``flowception eval`` from Python: read folders of videos and compute the asked metrics into one
JSON-ready dict."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data import TensorFolder, VideoFolder
from .i3d import I3D
from .metrics import FEATURES, fvd, i3d_features, psnr, ssim

__all__ = ["METRICS", "evaluate", "read_videos"]

METRICS = ("fvd", "psnr", "ssim")
VIDEO_SUFFIXES = VideoFolder.extensions
TENSOR_SUFFIXES = TensorFolder.extensions


def read_videos(directory: str | Path) -> list[Tensor]:
    """Every video file (``.gif``, ``.mp4``, ...) or tensor file (``.npy``, ``.safetensors``)
    under ``directory``, recursively, in sorted path order, as ``[T, C, H, W]`` in [-1, 1]."""
    from ..data.folders import read_tensor_video
    from ..io import load_video

    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES + TENSOR_SUFFIXES)
    if not files:
        raise ValueError(f"{directory} holds no videos ({', '.join(VIDEO_SUFFIXES + TENSOR_SUFFIXES)})")
    videos = []
    for f in files:
        try:
            videos.append(read_tensor_video(f) if f.suffix.lower() in TENSOR_SUFFIXES else load_video(f))
        except Exception as exc:  # a corrupt file: say which
            raise ValueError(f"{f}: cannot read it ({type(exc).__name__}: {exc})") from None
    return videos


def _paired(generated: Sequence[Tensor], reference: Sequence[Tensor], metric) -> dict:
    """Mean of a per-frame metric over paired videos (i-th with i-th, the frames both have)."""
    if len(generated) != len(reference):
        raise ValueError(f"psnr/ssim pair the i-th generated video with the i-th reference video: got "
                         f"{len(generated)} generated and {len(reference)} reference videos")
    per_video = []
    for i, (g, r) in enumerate(zip(generated, reference)):
        if g.shape[1:] != r.shape[1:]:
            raise ValueError(f"video {i}: generated frames {tuple(g.shape[1:])} and reference frames "
                             f"{tuple(r.shape[1:])} differ in shape")
        n = min(g.shape[0], r.shape[0])
        values = metric(g[:n], r[:n])
        per_video.append(float(values[torch.isfinite(values)].mean()) if torch.isfinite(values).any() else float("inf"))
    return {"mean": float(np.mean(per_video)), "per_video": per_video}


def evaluate(generated: Sequence[Tensor], reference: Sequence[Tensor], metrics: Sequence[str] = ("fvd",), *,
             features: str = "logits", num_frames: int = 16, batch_size: int = 8, model: I3D | None = None,
             progress: bool = True) -> dict:
    """``{metric: value}`` for ``metrics`` ⊆ ``("fvd", "psnr", "ssim")``: FVD as a number (I3D
    ``features`` of ``num_frames`` frames), PSNR (dB) and SSIM as ``{"mean", "per_video"}`` over
    paired videos, and the settings under ``"settings"``."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    out: dict = {}
    if "fvd" in metrics:
        model = model if model is not None else I3D.from_pretrained()
        a = i3d_features(generated, features=features, model=model, num_frames=num_frames, batch_size=batch_size,
                         progress=progress)
        b = i3d_features(reference, features=features, model=model, num_frames=num_frames, batch_size=batch_size,
                         progress=progress)
        out["fvd"] = fvd(a, b)
    if "psnr" in metrics:
        out["psnr"] = _paired(generated, reference, psnr)
    if "ssim" in metrics:
        out["ssim"] = _paired(generated, reference, ssim)
    out["settings"] = {"num_generated": len(generated), "num_reference": len(reference), "fvd_features": features,
                       "fvd_num_frames": num_frames}
    return out
