"""PackedVideos: packing and unpacking, derived indices, conversions, validation, strip/insert."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import random_lengths, random_packed
from flowception_ext import PackedVideos

LENGTH_SETS = [[1], [3, 0, 2], [0], [0, 0], [5, 1, 4, 2], random_lengths(random.Random(1), 16)]


def per_video_vectors(lengths: list[int]):
    g = torch.Generator().manual_seed(0)
    times = [torch.rand(n, generator=g) for n in lengths]
    is_context = [torch.rand(n, generator=g) < 0.3 for n in lengths]
    times = [torch.where(c, 1.0, t) for c, t in zip(is_context, times)]  # context frames are clean
    insertable = [torch.rand(n, generator=g) < 0.5 for n in lengths]
    return times, is_context, insertable


@pytest.mark.parametrize("lengths", LENGTH_SETS, ids=str)
def test_from_list_to_list_round_trip(lengths):
    frames = [torch.randn(n, 3, 5, 7) for n in lengths]
    times, is_context, insertable = per_video_vectors(lengths)
    v = PackedVideos.from_list(frames, times, is_context, insertable).validate()
    assert v.num_videos == len(lengths) and v.num_frames == sum(lengths) and v.frame_shape == (3, 5, 7)
    assert v.lengths.tolist() == lengths and v.cu_seqlens.dtype == torch.int64
    for got, want in zip(v.to_list(), frames):
        assert torch.equal(got, want)
    for field, values in (("times", times), ("is_context", is_context), ("insertable", insertable)):
        for got, want in zip(v.split(getattr(v, field)), values):
            assert torch.equal(got, want), field


def test_from_list_defaults():
    v = PackedVideos.from_list([torch.randn(2, 1, 2, 2, dtype=torch.bfloat16), torch.randn(1, 1, 2, 2, dtype=torch.bfloat16)])
    assert v.times.dtype == torch.float32 and torch.equal(v.times, torch.ones(3))
    assert not v.is_context.any() and v.insertable.all()
    assert PackedVideos.from_list([torch.randn(2, 1, 2, 2, dtype=torch.float64)]).times.dtype == torch.float64


@pytest.mark.parametrize("lengths", LENGTH_SETS, ids=str)
def test_video_index_and_position(lengths):
    v = random_packed(lengths)
    want_video = [b for b, n in enumerate(lengths) for _ in range(n)]
    want_pos = [i for n in lengths for i in range(n)]
    assert v.video_index.tolist() == want_video
    assert v.position.tolist() == want_pos
    assert v.video_index.dtype == v.position.dtype == torch.int64


@pytest.mark.parametrize("lengths", LENGTH_SETS, ids=str)
def test_padded_round_trip(lengths):
    frames = [torch.randn(n, 2, 3, 3) for n in lengths]
    times, is_context, insertable = per_video_vectors(lengths)
    v = PackedVideos.from_list(frames, times, is_context, insertable)
    x, mask = v.to_padded(fill=float("nan"))
    assert x.shape == (len(lengths), max(lengths), 2, 3, 3) and mask.sum(1).tolist() == lengths
    assert torch.isnan(x[~mask]).all()
    for b, f in enumerate(frames):
        assert torch.equal(x[b, : len(f)], f)
    pad = lambda vs, fill: torch.stack([torch.cat([t, t.new_full((max(lengths) - len(t),), fill)]) for t in vs])
    back = PackedVideos.from_padded(x, mask, pad(times, 0.5), pad(is_context, False), pad(insertable, True))
    for field in ("frames", "cu_seqlens", "times", "is_context", "insertable"):
        assert torch.equal(getattr(back, field), getattr(v, field)), field


def test_from_padded_mask_need_not_be_left_aligned():
    x = torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3, 1, 1, 1)
    mask = torch.tensor([[False, True, True], [True, False, False]])
    v = PackedVideos.from_padded(x, mask)
    assert v.lengths.tolist() == [2, 1] and v.frames.flatten().tolist() == [1.0, 2.0, 3.0]


def test_to_dtype_and_device():
    v = random_packed([2, 3])
    h = v.to(torch.float16)
    assert h.frames.dtype == torch.float16 and h.times.dtype == torch.float32
    assert h.cu_seqlens.dtype == torch.int64 and h.is_context.dtype == h.insertable.dtype == torch.bool
    d = v.to(torch.float64)
    assert d.times.dtype == torch.float64 and torch.equal(d.frames, v.frames.double())
    m = v.to("meta")
    assert all(t.device.type == "meta" for t in (m.frames, m.cu_seqlens, m.times, m.is_context, m.insertable))
    assert m.frames.dtype == torch.float32
    both = v.to("cpu", torch.bfloat16)
    assert both.frames.dtype == torch.bfloat16 and both.frames.device.type == "cpu"


def _fields(v: PackedVideos) -> dict:
    return {f: getattr(v, f) for f in ("frames", "cu_seqlens", "times", "is_context", "insertable")}


@pytest.mark.parametrize("field", ["times", "is_context", "insertable"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_per_frame_vectors_must_match_frames(field, delta):
    v = random_packed([2, 3])
    t = getattr(v, field)
    bad = t[:-1] if delta < 0 else torch.cat([t, t[:1]])
    with pytest.raises(ValueError, match=rf"{field} must be a 1-D tensor with one entry per frame \(5\)"):
        PackedVideos(**{**_fields(v), field: bad})
    with pytest.raises(ValueError, match=rf"{field}\[1\] must be a \[3\] tensor"):
        PackedVideos.from_list(v.to_list(), **{field: [getattr(v, field)[:2], bad[2:]]})


@pytest.mark.parametrize("changes, exc, match", [
    ({"frames": torch.zeros(5, 3, 4)}, ValueError, r"frames must be a \[N, C, H, W\] tensor"),
    ({"frames": torch.zeros(5, 3, 4, 4, dtype=torch.int32)}, TypeError, r"frames must be a floating tensor"),
    ({"cu_seqlens": torch.tensor([0, 2, 5], dtype=torch.int32)}, TypeError, r"cu_seqlens must be int64"),
    ({"cu_seqlens": torch.zeros(0, dtype=torch.int64)}, ValueError, r"cu_seqlens must be a 1-D tensor"),
    ({"times": torch.ones(5, dtype=torch.int64)}, TypeError, r"times must be floating"),
    ({"is_context": torch.zeros(5)}, TypeError, r"is_context must be bool"),
    ({"insertable": torch.ones(5, dtype=torch.bool, device="meta")}, ValueError, r"insertable must be on the frames' device"),
    ({"cu_seqlens": torch.tensor([0, 2, 5], device="meta")}, ValueError, r"cu_seqlens must be on the frames' device"),
])
def test_constructor_errors(changes, exc, match):
    v = random_packed([2, 3])
    with pytest.raises(exc, match=match):
        v.replace(**changes)


@pytest.mark.parametrize("changes, match", [
    ({"cu_seqlens": torch.tensor([1, 2, 5])}, r"cu_seqlens must start at 0"),
    ({"cu_seqlens": torch.tensor([0, 3, 2, 5])}, r"cu_seqlens must be non-decreasing"),
    ({"cu_seqlens": torch.tensor([0, 2, 4])}, r"cu_seqlens must end at the number of frames \(5\)"),
    ({"times": torch.tensor([0.0, 1.0, 0.5, 1.5, 1.0])}, r"times must lie in \[0, 1\]"),
    ({"times": torch.tensor([0.0, 1.0, float("nan"), 1.0, 1.0])}, r"times must lie in \[0, 1\]"),
    ({"times": torch.full((5,), 0.5), "is_context": torch.tensor([1, 0, 0, 0, 0], dtype=torch.bool)},
     r"context frames \(is_context\) must have times == 1"),
    ({"frames": torch.full((5, 3, 4, 4), float("inf"))}, r"frames must be finite"),
])
def test_validate_errors(changes, match):
    v = random_packed([2, 3]).validate()
    bad = v.replace(**changes)  # structurally fine: only validate() reads the values
    with pytest.raises(ValueError, match=match):
        bad.validate()


def test_from_list_errors():
    with pytest.raises(ValueError, match="at least one video"):
        PackedVideos.from_list([])
    with pytest.raises(ValueError, match=r"frames\[1\] has frame shape"):
        PackedVideos.from_list([torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5)])
    with pytest.raises(ValueError, match=r"times must have one entry per video \(2\)"):
        PackedVideos.from_list([torch.zeros(1, 3, 4, 4)] * 2, times=[torch.ones(1)])


def test_strip_moves_per_frame_vectors():
    lengths = [4, 0, 3]
    frames = [torch.randn(n, 2, 3, 3) for n in lengths]
    times, is_context, insertable = per_video_vectors(lengths)
    v = PackedVideos.from_list(frames, times, is_context, insertable)
    keep = torch.tensor([True, False, True, True, False, False, True])
    s, src = v.strip(keep)
    s.validate()
    assert s.lengths.tolist() == [3, 0, 1] and src.tolist() == [0, 2, 3, 6]
    for field in ("frames", "times", "is_context", "insertable"):
        assert torch.equal(getattr(s, field), getattr(v, field)[keep]), field


def test_insert_moves_per_frame_vectors():
    lengths = [2, 0, 3]
    frames = [torch.randn(n, 2, 3, 3) for n in lengths]
    times, is_context, insertable = per_video_vectors(lengths)
    v = PackedVideos.from_list(frames, times, is_context, insertable)
    counts = torch.tensor([1, 0, 0, 2, 1])
    out, src_pos, new_pos = v.insert(counts, seed=3)
    out.validate()
    assert out.lengths.tolist() == [3, 0, 6]
    assert src_pos.tolist() == [0, 2, 3, 4, 7] and new_pos.tolist() == [1, 5, 6, 8]
    for field in ("frames", "times", "is_context", "insertable"):
        assert torch.equal(getattr(out, field)[src_pos], getattr(v, field)), field
    # new frames: pure noise at t = 0, not context, insertable
    assert torch.equal(out.times[new_pos], torch.zeros(4))
    assert not out.is_context[new_pos].any() and out.insertable[new_pos].all()
    assert out.frames[new_pos].std() > 0.5
    # the same seed gives the same batch; a generator drives the seed otherwise
    assert torch.equal(v.insert(counts, seed=3)[0].frames, out.frames)
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    assert torch.equal(v.insert(counts, generator=g1)[0].frames, v.insert(counts, generator=g2)[0].frames)


def test_repr():
    assert "lengths=[2, 0]" in repr(random_packed([2, 0]))
