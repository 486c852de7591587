"""Video files (io.py) and figures (viz.py)."""

from __future__ import annotations

import importlib.util

import imageio.v3 as iio
import pytest
import torch
from torch import nn

from flowception_ext.io import load_video, save_video, to_uint8
from flowception_ext.sampling import Context, sample
from flowception_ext.viz import plot_insertion_order, plot_length_histogram

HAS_FFMPEG = importlib.util.find_spec("imageio_ffmpeg") is not None


def distinct_frames(n: int, channels: int, size: int = 4) -> torch.Tensor:
    """Frames with few distinct values (a GIF palette holds them exactly), no two alike."""
    levels = torch.linspace(-1, 1, 9)
    g = torch.Generator().manual_seed(0)
    x = levels[torch.randint(0, 9, (n, channels, size, size), generator=g)]
    x[:, :, 0, 0] = torch.linspace(-1, 1, n)[:, None]  # make consecutive frames differ
    return x


def test_to_uint8_maps_the_value_range_and_scales():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 2, 2)
    assert to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 255]  # 127.5 rounds half to even: 128
    assert to_uint8(x * 0.5 + 0.5, value_range=(0, 1)).reshape(-1).tolist() == [0, 128, 255, 255]
    big = to_uint8(x, scale=3)
    assert big.shape == (1, 6, 6, 1) and (big[0, :3, :3] == 0).all() and (big[0, 3:, 3:] == 255).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_gif_round_trip(tmp_path, channels):
    frames = distinct_frames(6, channels)
    path = save_video(frames, tmp_path / "v.gif", fps=4, scale=1)
    back = load_video(path)
    assert back.shape == (6, 3, 4, 4)
    expected = frames.expand(-1, 3, -1, -1) if channels == 1 else frames
    torch.testing.assert_close(back, expected, rtol=0, atol=1 / 127.5)
    assert iio.immeta(path)["duration"] == 250


def test_gif_keeps_identical_frames_and_quantises_many_colours(tmp_path):
    still = torch.zeros(5, 3, 4, 4)
    still[2] = 0.5  # frames 0, 1 and 3, 4 are identical pairs
    back = load_video(save_video(still, tmp_path / "still.gif", scale=1))
    assert back.shape == (5, 3, 4, 4)
    torch.testing.assert_close(back, still, rtol=0, atol=1 / 127.5)
    smooth = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1  # ~1000 colours
    back = load_video(save_video(smooth, tmp_path / "smooth.gif", scale=1))
    assert back.shape == smooth.shape and (back - smooth).abs().mean() < 0.1


def test_gif_from_a_list_with_automatic_upscaling(tmp_path):
    frames = distinct_frames(3, 1, size=2)
    back = load_video(save_video(list(frames), tmp_path / "sub" / "tiny.gif"))
    assert back.shape == (3, 3, 64, 64)  # 2 px → 64 px by nearest neighbour
    torch.testing.assert_close(back[:, 0, ::32, ::32], frames[:, 0], rtol=0, atol=1 / 127.5)


@pytest.mark.skipif(not HAS_FFMPEG, reason="imageio-ffmpeg not installed")
def test_mp4_round_trip_frame_count(tmp_path):
    frames = distinct_frames(7, 3, size=5)
    back = load_video(save_video(frames, tmp_path / "v.mp4", fps=8))
    assert back.shape == (7, 3, 70, 70)  # auto scale 13 would give odd sides (65): rounded up to 14


@pytest.mark.skipif(HAS_FFMPEG, reason="imageio-ffmpeg is installed")
def test_mp4_without_ffmpeg_says_what_to_install(tmp_path):
    with pytest.raises(ImportError, match=r"imageio-ffmpeg.*flowception_ext\[video\]"):
        save_video(distinct_frames(2, 3), tmp_path / "v.mp4")


def test_bad_video_input(tmp_path):
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\) channels, got 4"):
        save_video(torch.zeros(2, 4, 4, 4), tmp_path / "v.gif")
    with pytest.raises(ValueError, match=r"path must end in .gif or .mp4"):
        save_video(torch.zeros(2, 3, 4, 4), tmp_path / "v.avi")
    with pytest.raises(ValueError, match=r"frames must be \[n, C, H, W\] with n >= 1"):
        save_video(torch.zeros(3, 4, 4), tmp_path / "v.gif")
    with pytest.raises(ValueError, match="same shape"):
        save_video([torch.zeros(3, 4, 4), torch.zeros(3, 2, 2)], tmp_path / "v.gif")
    with pytest.raises(ValueError, match="fps must be a positive number"):
        save_video(torch.zeros(2, 3, 4, 4), tmp_path / "v.gif", fps=0)
    with pytest.raises(ValueError, match="scale must be an int >= 1"):
        save_video(torch.zeros(2, 3, 4, 4), tmp_path / "v.gif", scale=0)
    with pytest.raises(ValueError, match="value_range"):
        to_uint8(torch.zeros(1, 1, 2, 2), value_range=(1, -1))
    with pytest.raises(FileNotFoundError, match="no video at"):
        load_video(tmp_path / "missing.gif")


class Grow(nn.Module):
    def forward(self, videos, labels=None):
        return -videos.frames, torch.full((videos.num_frames,), -0.5)


@pytest.fixture(scope="module")
def sampled():
    context = Context.interpolate(distinct_frames(3, 3))
    return sample(Grow(), context, num_videos=2, steps=12, progress=False, generator=torch.Generator().manual_seed(0))


def test_plot_insertion_order_writes_a_png(tmp_path, sampled):
    path = plot_insertion_order(sampled, tmp_path / "figs" / "order.png", video=1, columns=5)
    image = iio.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 200
    assert image[..., :3].std() > 10  # not blank


def test_plot_insertion_order_bad_input(tmp_path, sampled):
    with pytest.raises(ValueError, match=r"video must be in \[0, 2\), got 2"):
        plot_insertion_order(sampled, tmp_path / "o.png", video=2)
    with pytest.raises(TypeError, match="output must be a SampleOutput"):
        plot_insertion_order(sampled.videos, tmp_path / "o.png")


def test_plot_length_histogram(tmp_path, sampled):
    path = plot_length_histogram(torch.tensor(sampled.lengths), tmp_path / "hist.png", reference=[4, 5, 5, 6])
    assert iio.imread(path).ndim == 3
    assert plot_length_histogram([3, 3, 4], tmp_path / "plain.png").is_file()
    with pytest.raises(ValueError, match="lengths must be a non-empty 1-D sequence"):
        plot_length_histogram([], tmp_path / "h.png")
    with pytest.raises(ValueError, match="reference must be"):
        plot_length_histogram([3], tmp_path / "h.png", reference=[1.5])


def test_figures_leave_matplotlib_state_alone(tmp_path):
    import subprocess
    import sys

    # In a fresh interpreter: drawing must not select a backend or import pyplot.
    code = f"""
import sys, torch
from flowception_ext import viz
rows = [{{"label": "a", "frames": torch.rand(5, 3, 4, 4) * 2 - 1, "insert_time": torch.linspace(0, 1, 5),
          "is_context": torch.tensor([True, False, False, False, False])}},
        {{"label": "b", "frames": torch.rand(30, 3, 4, 4) * 2 - 1}}]
viz.plot_frame_rows(rows, {str(tmp_path / 'rows.png')!r}, "title", max_columns=8)
est = lambda v: {{"value": v, "ci95": [v - 0.1, v + 0.2]}}
viz.plot_metric_bars({{"x": {{"m": est(1.0)}}, "y": {{"m": est(2.0)}}}}, ["m"], {str(tmp_path / 'bars.png')!r},
                     labels={{"m": "metric"}})
row = lambda n: {{f"sampling_{{k}}_{{m}}": float(n * (i + 1)) for i, m in enumerate(["flowception", "full_sequence"])
                  for k in ("flops", "seconds")}} | {{"train_seconds_flowception": 0.1 * n,
                  "train_flops_full_total": 3.0 * n, "train_flops_flowception_configured_total": 1.0 * n}}
viz.plot_efficiency({{"per_n": {{"8": row(8), "16": row(16)}}}}, {str(tmp_path / 'eff.png')!r})
assert "matplotlib.pyplot" not in sys.modules
import matplotlib  # no backend chosen (matplotlib.use sets one; reading rcParams["backend"] would resolve it)
import os
assert "MPLBACKEND" in os.environ or dict.__getitem__(matplotlib.rcParams, "backend") is matplotlib.rcsetup._auto_backend_sentinel
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("rows.png", "bars.png", "eff.png"):
        assert (tmp_path / name).stat().st_size > 0, name
