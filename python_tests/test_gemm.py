"""The CPU attention's GEMM kernels (csrc/cpu/gemm.h) against torch.matmul, one kernel at a time,
through the private test op ``flowception::_cpu_gemm_test``: random and degenerate sizes (0, 1,
odd, not multiples of the register blocks), strided rows, and the accumulating form C += A B."""

from __future__ import annotations

import pytest
import torch

import flowception_ext
from flowception_ext import _extension

pytestmark = pytest.mark.skipif(not _extension.available(), reason="the compiled core is not built")

SIZES = [(0, 3, 4), (3, 0, 4), (3, 4, 0), (1, 1, 1), (5, 7, 3), (6, 64, 16), (7, 65, 33), (13, 100, 64),
         (65, 325, 64), (2, 17, 130)]


def gemm(a, b, kernel, c=None):
    return torch.ops.flowception._cpu_gemm_test(a, b, kernel, c)


def strided(x: torch.Tensor, extra: int) -> torch.Tensor:
    """``x`` as a view whose rows sit ``extra`` elements further apart than their length."""
    wide = torch.full((x.shape[0], x.shape[1] + extra), float("nan"), dtype=x.dtype)
    wide[:, : x.shape[1]] = x
    return wide[:, : x.shape[1]]


def operands(m, n, k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(k, n, generator=g, dtype=torch.float64).to(dtype)
    c = torch.randn(m, n, generator=g, dtype=torch.float64)
    return a, b, c


def reference(a, b, c=None):
    out = a.double() @ b.double()
    return out if c is None else out + c.double()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("kind", ["blas_nn", "blas_nt", "blas_tn"])
@pytest.mark.parametrize("size", SIZES)
def test_blas_wrappers(kind, size, dtype, tol):
    m, n, k = size
    a, b, c = operands(m, n, k, dtype, seed=m * 1000 + n * 10 + k)
    c = c.to(dtype)
    # the layouts each wrapper takes: A [k, m] for tn, B [n, k] for nt; strided rows as views
    a_in = strided(a.t().contiguous(), 3) if kind == "blas_tn" else strided(a, 2)
    b_in = strided(b.t().contiguous(), 5) if kind == "blas_nt" else strided(b, 1)
    for accumulate in (None, c):
        out = gemm(a_in, b_in, kind, accumulate)
        assert out.dtype == dtype and out.shape == (m, n)
        torch.testing.assert_close(out.double(), reference(a, b, accumulate), rtol=tol, atol=tol * max(k, 1))


@pytest.mark.skipif(flowception_ext.build_info().get("cpu_capability") != "AVX512",
                    reason="the FMA kernel is built for AVX-512 only")
@pytest.mark.parametrize("size", SIZES)
def test_fma_kernel(size):
    m, n, k = size
    a, b, c = operands(m, n, k, torch.float32, seed=7 + m + n + k)
    c = c.float()
    for accumulate in (None, c):
        out = gemm(strided(a, 4), strided(b, 16), "fma", accumulate)
        torch.testing.assert_close(out.double(), reference(a, b, accumulate), rtol=1e-5, atol=1e-5 * max(k, 1))
    # in order of k as BLAS sums: equal to the BLAS wrapper's product up to its blocking
    torch.testing.assert_close(gemm(a, b, "fma"), gemm(a, b, "blas_nn"), rtol=1e-6, atol=1e-6 * max(k, 1))


@pytest.mark.skipif(flowception_ext.build_info().get("cpu_bf16_gemm") is None,
                    reason="this CPU has neither AMX nor AVX512-BF16")
@pytest.mark.parametrize("kernel", ["bf16", "bf16_transposed"])
@pytest.mark.parametrize("size", [s for s in SIZES if s[2] % 2 == 0])
def test_bf16_kernels(kernel, size):
    """bf16 inputs, fp32 accumulation: exact products of bf16 values, summed in fp32."""
    m, n, k = size
    a, b, c = operands(m, n, k, torch.bfloat16, seed=11 + m + n + k)
    c = c.float()
    b_in = strided(b.t().contiguous(), 2) if kernel == "bf16_transposed" else b
    for accumulate in (None, c):
        out = gemm(strided(a, 6), b_in, kernel, accumulate)
        assert out.dtype == torch.float32 and out.shape == (m, n)
        torch.testing.assert_close(out.double(), reference(a, b, accumulate), rtol=1e-5, atol=1e-5 * max(k, 1))


def test_bad_arguments():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="inner sizes"):
        gemm(a, torch.randn(5, 2), "blas_nn")
    with pytest.raises(ValueError, match="unknown kernel"):
        gemm(a, torch.randn(4, 2), "strassen")
    with pytest.raises(TypeError, match="float or double"):
        gemm(a.half(), torch.randn(4, 2).half(), "blas_nn")
    with pytest.raises(ValueError, match="c must be"):
        gemm(a, torch.randn(4, 2), "blas_nn", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="2-D"):
        gemm(a[0], torch.randn(4, 2), "blas_nn")
