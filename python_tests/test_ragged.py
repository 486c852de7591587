"""ragged_insert / ragged_strip: opcheck, kernel == reference (rows, Philox stream and Gaussians
bit for bit), noise accuracy and statistics, gradcheck, argument errors, fuzzing."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from conftest import requires_extension
from flowception_ext import ops
from flowception_ext.ops.reference import (
    gaussian_pair_ref,
    gaussian_rows_ref,
    philox4x32_10_ref,
    ragged_insert_ref,
    ragged_strip_ref,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a floating tensor (for bit-for-bit comparisons)."""
    return t.contiguous().view(_INT_VIEW[t.dtype])


def make_frames(n: int, frame_shape: tuple, dtype: torch.dtype, contiguous: bool = True, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *frame_shape, 2, generator=g, dtype=torch.float64).to(dtype)
    return x[..., 0].contiguous() if contiguous else x[..., 0]  # [..., 0] of a [..., 2] tensor is strided


def cu_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *np.cumsum(lengths, dtype=np.int64).tolist()], dtype=torch.int64)


# ---- generated samples (opcheck) ---------------------------------------------------------


@dataclass
class Case:
    lengths: list[int]
    frame_shape: tuple = (3, 5, 7)
    dtype: torch.dtype = torch.float32
    kind: str = "random"  # insert: random / zero / huge; strip: random / all / none
    contiguous: bool = True

    def __str__(self) -> str:
        b = len(self.lengths)
        lens = self.lengths if b <= 4 else f"B{b}"
        return f"{lens}-{'x'.join(map(str, self.frame_shape))}-{str(self.dtype)[6:]}-{self.kind}" + (
            "" if self.contiguous else "-strided")

    def frames(self) -> torch.Tensor:
        return make_frames(sum(self.lengths), self.frame_shape, self.dtype, self.contiguous)

    def counts(self) -> torch.Tensor:
        n = sum(self.lengths)
        g = torch.Generator().manual_seed(1)
        if self.kind == "zero":
            return torch.zeros(n, dtype=torch.int64)
        if self.kind == "huge":  # one frame receives many new frames, the others none
            c = torch.zeros(n, dtype=torch.int64)
            c[n // 2] = 300
            return c
        return torch.randint(0, 3, (n,), generator=g)

    def keep(self) -> torch.Tensor:
        n = sum(self.lengths)
        if self.kind in ("all", "none"):
            return torch.full((n,), self.kind == "all")
        return torch.rand(n, generator=torch.Generator().manual_seed(2)) < 0.6


_rng = random.Random(0)
B64 = [_rng.randint(0, 4) for _ in range(64)]
COMMON = [
    Case([]),  # B = 0
    Case([0]),
    Case([1]),
    Case([0, 1, 0], dtype=torch.float64),
    Case([1] * 64, frame_shape=(2, 3, 3)),
    Case(B64, frame_shape=(2, 3, 3)),
    Case(B64, frame_shape=(1, 1, 1), dtype=torch.float64),
    Case([2, 3], dtype=torch.bfloat16),
    Case([4, 0, 2], dtype=torch.float16),
    Case([3, 2], contiguous=False),
    Case([2, 5], dtype=torch.float64, contiguous=False),
    Case([3, 1], dtype=torch.bfloat16, contiguous=False),
    Case([1, 4], dtype=torch.float16, contiguous=False),
    Case([3, 3], frame_shape=()),  # one value per frame
    Case([2, 2], frame_shape=(5,)),  # odd row: only the scalar tail of the noise
    Case([2, 2], frame_shape=(33,), dtype=torch.float64),  # vector body + odd tail
    Case([7], frame_shape=(4, 8, 8)),
    Case([2, 3], frame_shape=(0, 3)),  # empty rows
]
INSERT_CASES = COMMON + [
    Case([3, 4], kind="zero"),
    Case(B64, frame_shape=(2, 3, 3), kind="zero"),
    Case([5], kind="huge"),
    Case([0, 3, 0], dtype=torch.float64, kind="huge"),
]
STRIP_CASES = COMMON + [
    Case([3, 4], kind="all"),
    Case([3, 4], kind="none"),
    Case(B64, frame_shape=(2, 3, 3), kind="none"),
    Case([6, 1], dtype=torch.bfloat16, kind="all", contiguous=False),
]


@requires_extension
@pytest.mark.parametrize("case", INSERT_CASES, ids=str)
def test_opcheck_insert(case):
    counts = case.counts()
    frames = case.frames().detach().requires_grad_()
    torch.library.opcheck(torch.ops.flowception.ragged_insert,
                          (frames, cu_of(case.lengths), counts, int(counts.sum()), 1234))


@requires_extension
@pytest.mark.parametrize("case", STRIP_CASES, ids=str)
def test_opcheck_strip(case):
    keep = case.keep()
    frames = case.frames().detach().requires_grad_()
    torch.library.opcheck(torch.ops.flowception.ragged_strip, (frames, cu_of(case.lengths), keep, int(keep.sum())))


# ---- kernel == reference -------------------------------------------------------------------


def every_thread_count_dtype_and_layout(test):
    """Parametrise ``test`` over 1 and 2 threads, DTYPES and (non-)contiguous frames."""
    test = pytest.mark.parametrize("dtype", DTYPES, ids=str)(test)
    test = pytest.mark.parametrize("contiguous", [True, False])(test)
    return pytest.mark.parametrize("num_threads", [1, 2])(test)


def assert_insert_matches(got, want, frames: torch.Tensor) -> None:
    """Index outputs equal, copied rows and noise bit for bit (common/gaussian.h uses only IEEE-rounded
    arithmetic, which the reference repeats op for op)."""
    for g, w in zip(got[1:], want[1:]):
        assert torch.equal(g, w)
    out, _, src_pos, new_pos = got
    assert torch.equal(bits(out[src_pos]), bits(frames))
    assert torch.equal(bits(want[0][src_pos]), bits(frames))
    differ = bits(out[new_pos]) != bits(want[0][new_pos])
    assert not differ.any(), f"{int(differ.sum())} noise values differ from the reference"


@requires_extension
@every_thread_count_dtype_and_layout
def test_insert_matches_reference(threads, num_threads, dtype, contiguous):
    threads(num_threads)
    lengths = [50, 0, 1, 120, 29]  # enough rows for both threads to get work
    frames = make_frames(sum(lengths), (3, 5, 7), dtype, contiguous)
    counts = torch.randint(0, 3, (frames.shape[0],), generator=torch.Generator().manual_seed(3))
    args = (frames, cu_of(lengths), counts, int(counts.sum()), -987654321987)
    got = torch.ops.flowception.ragged_insert(*args)
    assert_insert_matches(got, ragged_insert_ref(*args), frames)


@requires_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_insert_same_for_any_thread_count(threads, dtype):
    frames = make_frames(400, (3, 5, 7), dtype)
    counts = torch.ones(400, dtype=torch.int64)
    args = (frames, cu_of([100, 300]), counts, 400, 77)
    threads(1)
    one = torch.ops.flowception.ragged_insert(*args)[0]
    threads(2)
    two = torch.ops.flowception.ragged_insert(*args)[0]
    assert torch.equal(bits(one), bits(two))


def assert_strip_matches(got, want) -> None:
    for g, w in zip(got, want):
        assert torch.equal(bits(g) if g.is_floating_point() else g, bits(w) if w.is_floating_point() else w)


@requires_extension
@every_thread_count_dtype_and_layout
def test_strip_matches_reference(threads, num_threads, dtype, contiguous):
    threads(num_threads)
    lengths = [300, 0, 1, 700]
    frames = make_frames(sum(lengths), (3, 5, 7), dtype, contiguous)
    keep = torch.rand(frames.shape[0], generator=torch.Generator().manual_seed(4)) < 0.7
    args = (frames, cu_of(lengths), keep, int(keep.sum()))
    got = torch.ops.flowception.ragged_strip(*args)
    assert_strip_matches(got, ragged_strip_ref(*args))
    assert torch.equal(bits(got[0]), bits(frames[keep]))


# ---- the Philox stream ---------------------------------------------------------------------


def philox_numpy(ctr: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Independent Philox4x32-10 in numpy uint64 arithmetic: ctr [n, 4], key [n, 2] -> [n, 4]."""
    m32 = np.uint64(0xFFFFFFFF)
    c = ctr.astype(np.uint64).T.copy()
    k = key.astype(np.uint64).T.copy()
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]  # < 2^64: exact in uint64
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = np.stack([(p1 >> np.uint64(32)) ^ c[1] ^ k[0], p1 & m32, (p0 >> np.uint64(32)) ^ c[3] ^ k[1], p0 & m32])
        k = np.stack([(k[0] + np.uint64(0x9E3779B9)) & m32, (k[1] + np.uint64(0xBB67AE85)) & m32])
    return c.T


def philox_ref_rows(ctr: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    words = philox4x32_10_ref(tuple(torch.from_numpy(ctr[:, i].astype(np.int64)) for i in range(4)), key)
    return torch.stack(words, 1).numpy().astype(np.uint64)


@pytest.mark.parametrize("ctr, key, expected", [
    # Random123's known-answer vectors for philox4x32_10
    ([0, 0, 0, 0], (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0xA4093822, 0x299F31D0),
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
])
def test_philox_known_answers(ctr, key, expected):
    assert philox_ref_rows(np.array([ctr], dtype=np.uint64), key)[0].tolist() == expected
    assert philox_numpy(np.array([ctr], dtype=np.uint64), np.array([key], dtype=np.uint64))[0].tolist() == expected


def test_philox_ref_matches_numpy_uint64():
    rng = np.random.default_rng(5)
    ctr = rng.integers(0, 2**32, (4096, 4), dtype=np.uint64)
    for key in [(0, 0), (0xFFFFFFFF, 1), tuple(int(v) for v in rng.integers(0, 2**32, 2))]:
        np.testing.assert_array_equal(philox_ref_rows(ctr, key), philox_numpy(ctr, np.array([key] * len(ctr))))


def words_from_gaussians(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invert Box-Muller on float64 pairs: the words (a, b) with z = r(a)·(cos, sin)(θ(b)).

    Recovers both words exactly (error < 1e-5 of a word step) except where r = 0 (a = 2^32 - 1,
    probability 2^-32), which the returned mask leaves out.
    """
    z0, z1 = z[..., 0::2], z[..., 1::2]
    r2 = z0 * z0 + z1 * z1
    a = np.rint(np.exp(-0.5 * r2) * 2.0**32) - 1
    theta = np.mod(np.arctan2(z1, z0), 2 * np.pi)
    b = np.mod(np.rint(theta / (2 * np.pi) * 2.0**32), 2.0**32)
    return a.astype(np.uint64), b.astype(np.uint64), r2 > 0


@requires_extension
@pytest.mark.parametrize("num_threads", [1, 2])
def test_kernel_philox_stream_is_the_reference_stream(threads, num_threads):
    """The compiled kernel's integer stream, recovered from its float64 output, equals the reference's."""
    threads(num_threads)
    n, row = 300, 3 * 5 * 8
    frames = torch.zeros(n, row, dtype=torch.float64)
    counts = torch.ones(n, dtype=torch.int64)
    seed = 0x1234_5678_9ABC_DEF
    out, _, _, new_pos = torch.ops.flowception.ragged_insert(frames, cu_of([n]), counts, n, seed)
    a, b, ok = words_from_gaussians(out[new_pos].numpy())
    # reference words for every (row, block): pair p of a row uses words (x0, x1) of block p // 2
    # when p is even, (x2, x3) when odd
    blocks = row // 4
    rows = np.repeat(new_pos.numpy().astype(np.uint64), blocks)
    blk = np.tile(np.arange(blocks, dtype=np.uint64), n)
    ctr = np.stack([blk & np.uint64(0xFFFFFFFF), blk >> np.uint64(32), rows & np.uint64(0xFFFFFFFF),
                    rows >> np.uint64(32)], 1)
    w = philox_ref_rows(ctr, (seed & 0xFFFFFFFF, seed >> 32)).reshape(n, blocks, 4)
    want_a = w[..., [0, 2]].reshape(n, -1)
    want_b = w[..., [1, 3]].reshape(n, -1)
    assert ok.mean() > 0.999
    np.testing.assert_array_equal(a[ok], want_a[ok])
    np.testing.assert_array_equal(b[ok], want_b[ok])


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60, reason="needs 80-bit long double")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noise_is_accurate(dtype):
    """Box-Muller in float64 (float32) lands within 4.5 ulp of the exact value of the formula, on
    random words and on the edge words (u1 = 1 and 2^-32, θ at and next to each quadrant), and
    exactly on 0 where cos/sin vanish."""
    g = torch.Generator().manual_seed(0)
    edge = torch.tensor([0, 1, 2, 2**24, 2**24 + 1, 2**29 - 1, 2**29, 2**30, 2**31 - 1, 2**31, 3 * 2**30,
                         2**32 - 2**29 - 1, 2**32 - 2**29, 2**32 - 2, 2**32 - 1])
    a = torch.cat([torch.randint(0, 2**32, (200_000,), generator=g), edge.repeat_interleave(len(edge))])
    b = torch.cat([torch.randint(0, 2**32, (200_000,), generator=g), edge.repeat(len(edge))])
    z = torch.stack([*gaussian_pair_ref(a, b, dtype)], -1).numpy()
    # exact values in long double, the angle reduced exactly on the integer like the code does
    ld = np.longdouble
    two_pi = ld("6.283185307179586476925286766559005768")
    r = np.sqrt(-2 * np.log((a.numpy().astype(ld) + 1) / ld(2**32)))
    q = (b.numpy() + 2**29) >> 30
    x = two_pi * (b.numpy() - (q << 30)).astype(ld) / ld(2**32)
    quadrant = [q % 4 == i for i in range(4)]
    cos = np.select(quadrant, [np.cos(x), -np.sin(x), -np.cos(x), np.sin(x)])
    sin = np.select(quadrant, [np.sin(x), np.cos(x), -np.sin(x), -np.cos(x)])
    exact = np.stack([r * cos, r * sin], -1)
    on_axis = np.broadcast_to((b.numpy() % 2**30 == 0)[:, None], exact.shape) & (np.abs(exact) < 1e-15)
    assert (z[on_axis] == 0).all()
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    err = np.abs(z.astype(ld) - exact)[~on_axis] / np.spacing(np.abs(exact[~on_axis]).astype(np_dtype))
    assert float(err.max()) <= 4.5, f"{float(err.max())} ulp"
    assert float(err.mean()) <= 0.65


# ---- noise statistics ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_is_standard_normal(dtype):
    frames = torch.zeros(128, 4, 16, 16, dtype=dtype)
    counts = torch.ones(128, dtype=torch.int64)
    out, _, _, new_pos = ops.ragged_insert(frames, cu_of([64, 64]), counts, 128, seed=2024)
    z = out[new_pos].double().reshape(-1)
    n = z.numel()
    assert n >= 100_000
    assert abs(float(z.mean())) < 5 / n**0.5
    assert abs(float(z.var()) - 1) < 5 * (2 / n) ** 0.5
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    # neighbouring elements (same Philox block / pair) and rows are uncorrelated
    zz = out[new_pos].double().reshape(128, -1)
    assert abs(float(torch.corrcoef(torch.stack([zz[:, :-1].reshape(-1), zz[:, 1:].reshape(-1)]))[0, 1])) < 0.02
    assert abs(float(torch.corrcoef(torch.stack([zz[:-1].reshape(-1), zz[1:].reshape(-1)]))[0, 1])) < 0.02


def test_noise_depends_on_seed_and_row_only():
    frames = make_frames(10, (3, 4), torch.float32)
    counts = torch.tensor([0, 2, 0, 0, 1, 0, 0, 0, 0, 3])
    out, _, _, new_pos = ops.ragged_insert(frames, cu_of([4, 6]), counts, 6, seed=5)
    again = ops.ragged_insert(frames * 2, cu_of([10]), counts, 6, seed=5)[0]
    other = ops.ragged_insert(frames, cu_of([4, 6]), counts, 6, seed=6)[0]
    assert torch.equal(out[new_pos], again[new_pos])
    assert not torch.equal(out[new_pos], other[new_pos])
    assert torch.equal(out[new_pos], gaussian_rows_ref(new_pos, 12, 5).reshape(6, 3, 4))


# ---- gradients ---------------------------------------------------------------------------


def test_gradcheck_strip():
    frames = make_frames(9, (2, 3), torch.float64).requires_grad_()
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: ops.ragged_strip(x, cu_of([4, 0, 5]), keep, 5)[0], (frames,))


def test_gradcheck_insert_copied_rows():
    frames = make_frames(6, (2, 3), torch.float64).requires_grad_()
    counts = torch.tensor([2, 0, 1, 0, 0, 3])
    cu = cu_of([3, 3])

    def copied_rows(x):
        out, _, src_pos, _ = ops.ragged_insert(x, cu, counts, 6, seed=1)
        return out[src_pos]

    assert torch.autograd.gradcheck(copied_rows, (frames,))
    # the whole output too: the noise rows do not depend on the input (zero gradient)
    assert torch.autograd.gradcheck(lambda x: ops.ragged_insert(x, cu, counts, 6, seed=1)[0], (frames,))


# ---- argument errors -----------------------------------------------------------------------

F, CU = make_frames(4, (2,), torch.float32), cu_of([1, 3])
C, K = torch.tensor([0, 1, 2, 0]), torch.tensor([True, False, True, True])
META = torch.device("meta")

INSERT_ERRORS = [  # (frames, cu_seqlens, counts, total_new), exception, message
    ((F, CU, torch.tensor([0, -1, 2, 0]), 1), ValueError, r"counts must be >= 0.*counts\[1\] = -1"),
    ((F, CU, C[:3], 3), ValueError, r"counts must be a 1-D tensor with one entry per frame \(4\)"),
    ((F, CU, C.reshape(2, 2), 3), ValueError, r"counts must be a 1-D tensor"),
    ((F, CU, torch.tensor([2**62] * 4), 0), ValueError, r"counts too large"),
    ((F, CU, C, 4), ValueError, r"total_new \(4\) must equal counts.sum\(\) \(3\)"),
    ((F, CU, C, -1), ValueError, r"total_new must be >= 0"),
    ((F, CU, C.float(), 3), TypeError, r"counts must be int64"),
    ((F, CU, C.int(), 3), TypeError, r"counts must be int64"),
    ((F.to(META), CU, C, 3), ValueError, r"cu_seqlens must be on the same device as frames \(meta\)"),
    ((F, CU, C.to(META), 3), ValueError, r"counts must be on the same device as frames \(cpu\), got meta"),
]
STRIP_ERRORS = [  # (frames, cu_seqlens, keep, total_kept), exception, message
    ((F, CU, K[:3], 3), ValueError, r"keep must be a 1-D tensor with one entry per frame \(4\)"),
    ((F, CU, K, 2), ValueError, r"total_kept \(2\) must equal keep.sum\(\) \(3\)"),
    ((F, CU, K, -3), ValueError, r"total_kept must be >= 0"),
    ((F, CU, K.long(), 3), TypeError, r"keep must be bool"),
    ((F, CU, K.to(torch.uint8), 3), TypeError, r"keep must be bool"),
    ((F, CU, K.to(META), 3), ValueError, r"keep must be on the same device as frames \(cpu\), got meta"),
]
COMMON_ERRORS = [  # (frames, cu_seqlens), exception, message: both ops
    ((F, cu_of([1, 3]) + 1), ValueError, r"cu_seqlens must start at 0, got 1"),
    ((F, torch.tensor([0, 3, 2, 4])), ValueError, r"cu_seqlens must be non-decreasing.*cu_seqlens\[2\] = 2"),
    ((F, torch.tensor([0, 1, 3])), ValueError, r"cu_seqlens must end at the number of frames \(4\), got 3"),
    ((F, torch.tensor([0, 1, 5])), ValueError, r"cu_seqlens must end at the number of frames \(4\), got 5"),
    ((F, torch.zeros(0, dtype=torch.int64)), ValueError, r"cu_seqlens must be a 1-D tensor \[B\+1\] with at least one"),
    ((F, CU.reshape(1, 3)), ValueError, r"cu_seqlens must be a 1-D tensor"),
    ((F, CU.int()), TypeError, r"cu_seqlens must be int64"),
    ((F, CU.to(META)), ValueError, r"cu_seqlens must be on the same device as frames \(cpu\), got meta"),
    ((F.long(), CU), TypeError, r"frames must be float32, float64, float16 or bfloat16, got"),
    ((F.to(torch.complex64), CU), TypeError, r"frames must be float32"),
    ((torch.tensor(1.0), torch.tensor([0])), ValueError, r"frames must have a leading frame dimension"),
]
INSERT_ERRORS += [((f, cu, C[: f.dim() and len(f)], 3 if f.dim() else 0), e, m) for (f, cu), e, m in COMMON_ERRORS]
STRIP_ERRORS += [((f, cu, K[: f.dim() and len(f)], 3 if f.dim() else 0), e, m) for (f, cu), e, m in COMMON_ERRORS]

INSERT_IMPLS = [pytest.param(lambda *a: torch.ops.flowception.ragged_insert(*a, 0), marks=requires_extension, id="kernel"),
                pytest.param(lambda *a: ragged_insert_ref(*a, 0), id="reference"),
                pytest.param(lambda *a: ops.ragged_insert(*a, seed=0), id="wrapper")]
STRIP_IMPLS = [pytest.param(lambda *a: torch.ops.flowception.ragged_strip(*a), marks=requires_extension, id="kernel"),
               pytest.param(ragged_strip_ref, id="reference"), pytest.param(ops.ragged_strip, id="wrapper")]


@pytest.mark.parametrize("impl", INSERT_IMPLS)
@pytest.mark.parametrize("args, exc, match", INSERT_ERRORS, ids=[m[:40] for _, _, m in INSERT_ERRORS])
def test_insert_bad_input(impl, args, exc, match):
    with pytest.raises(exc, match=match):
        impl(*args)


@pytest.mark.parametrize("impl", STRIP_IMPLS)
@pytest.mark.parametrize("args, exc, match", STRIP_ERRORS, ids=[m[:40] for _, _, m in STRIP_ERRORS])
def test_strip_bad_input(impl, args, exc, match):
    with pytest.raises(exc, match=match):
        impl(*args)


@pytest.mark.parametrize("seed, exc, match", [
    (2**64, ValueError, r"seed must be in \[-2\*\*63, 2\*\*64\), got 18446744073709551616"),
    (-(2**63) - 1, ValueError, r"seed must be in"),
    (1.5, TypeError, r"seed must be an int, got float"),
    (True, TypeError, r"seed must be an int, got bool"),
])
def test_insert_bad_seed(seed, exc, match):
    with pytest.raises(exc, match=match):
        ops.ragged_insert(F, CU, C, 3, seed=seed)


def test_insert_seed_is_taken_modulo_2_64():
    """Seeds s and s - 2^64 are the same Philox key, in the wrapper and in the reference."""
    big = 2**64 - 12345
    got = ops.ragged_insert(F, CU, C, 3, seed=big)[0]
    assert torch.equal(got, ops.ragged_insert(F, CU, C, 3, seed=-12345)[0])
    assert torch.equal(got, ragged_insert_ref(F, CU, C, 3, big)[0])


# ---- fuzzing -------------------------------------------------------------------------------

# Each defect makes exactly one argument invalid.
INSERT_DEFECTS = ["negative count", "counts too short", "counts int32", "total off by one", "overflow",
                  "cu starts at 1", "cu decreasing", "cu ends early", "cu int32", "frames int", "counts on meta"]
STRIP_DEFECTS = ["keep too long", "keep uint8", "total off by one", "cu starts at 1", "cu decreasing",
                 "cu ends early", "cu int32", "frames int", "keep on meta"]


@st.composite
def packed_batches(draw):
    lengths = draw(st.lists(st.integers(0, 4), max_size=6))
    frame_shape = draw(st.sampled_from([(), (1,), (3,), (2, 3), (3, 1, 5), (2, 0)]))
    dtype = draw(st.sampled_from(DTYPES))
    contiguous = draw(st.booleans())
    return make_frames(sum(lengths), frame_shape, dtype, contiguous, seed=draw(st.integers(0, 100))), lengths


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous tensor."""
    return torch.stack([t, t], -1)[..., 0]


def break_cu(cu: torch.Tensor, defect: str) -> torch.Tensor:
    cu = strided(cu)
    if defect == "cu starts at 1":
        cu[0] = 1
    elif defect == "cu decreasing":
        cu = torch.cat([cu, cu[-1:]])  # then make the second-to-last step go down
        cu[-2] = cu[-1] + 1
    elif defect == "cu ends early":
        cu[-1] -= 1
    elif defect == "cu int32":
        cu = cu.int()
    return cu


def check_fuzz_case(kernel, reference, args: tuple, valid: bool, compare) -> None:
    if valid:
        compare(kernel(*args), reference(*args))
        return
    for fn in (kernel, reference):
        with pytest.raises((ValueError, TypeError)):
            fn(*args)


@requires_extension
@settings(max_examples=200, deadline=None)
@given(batch=packed_batches(), data=st.data())
def test_fuzz_insert(batch, data):
    frames, lengths = batch
    n = frames.shape[0]
    counts = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=torch.int64)
    seed = data.draw(st.integers(-(2**63), 2**63 - 1))
    if data.draw(st.booleans()):
        counts = strided(counts)
    defect = data.draw(st.one_of(st.none(), st.sampled_from(INSERT_DEFECTS)))
    cu, total = break_cu(cu_of(lengths), defect or ""), int(counts.sum())
    if defect == "negative count" and n:
        counts[data.draw(st.integers(0, n - 1))] = -data.draw(st.integers(1, 2**62))
    elif defect == "counts too short":
        counts = counts[:-1] if n else counts.new_zeros(1)
    elif defect == "counts int32":
        counts = counts.int()
    elif defect == "total off by one":
        total += data.draw(st.sampled_from([-1, 1]))
    elif defect == "overflow" and n:
        counts[:] = 2**63 - 1  # N + counts.sum() > int64 max even for N = 1
        total = int(counts.sum()) % 2**63  # the wrapped sum, made a valid int64
    elif defect == "frames int":
        frames = frames.to(torch.int32)
    elif defect == "counts on meta":
        counts = counts.to(META)
    valid = defect is None or (n == 0 and defect in ("negative count", "overflow"))
    check_fuzz_case(torch.ops.flowception.ragged_insert, ragged_insert_ref, (frames, cu, counts, total, seed), valid,
                    lambda got, want: assert_insert_matches(got, want, frames))


@requires_extension
@settings(max_examples=200, deadline=None)
@given(batch=packed_batches(), data=st.data())
def test_fuzz_strip(batch, data):
    frames, lengths = batch
    n = frames.shape[0]
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool)
    if data.draw(st.booleans()):
        keep = strided(keep)
    defect = data.draw(st.one_of(st.none(), st.sampled_from(STRIP_DEFECTS)))
    cu, total = break_cu(cu_of(lengths), defect or ""), int(keep.sum())
    if defect == "keep too long":
        keep = torch.cat([keep, keep.new_ones(1)])
    elif defect == "keep uint8":
        keep = keep.to(torch.uint8)
    elif defect == "total off by one":
        total += data.draw(st.sampled_from([-1, 1]))
    elif defect == "frames int":
        frames = frames.to(torch.int32)
    elif defect == "keep on meta":
        keep = keep.to(META)
    check_fuzz_case(torch.ops.flowception.ragged_strip, ragged_strip_ref, (frames, cu, keep, total), defect is None,
                    assert_strip_matches)
