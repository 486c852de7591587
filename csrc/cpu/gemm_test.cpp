// The private test op flowception::_cpu_gemm_test (schema in csrc/ops.cpp): one GEMM kernel of
// cpu/gemm.h on whole matrices, so that python_tests/test_gemm.py can compare each kernel with
// torch.matmul. Rows may be strided (row stride = stride(0)); columns must be contiguous.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "cpu/gemm.h"

namespace flowception {
namespace {

using at::Tensor;

// t itself when its rows are contiguous and do not overlap (strided rows test the kernels'
// leading dimensions), else a contiguous copy.
Tensor rows(const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D, got ", t.dim(), "-D");
  const bool usable = (t.size(1) <= 1 || t.stride(1) == 1) && (t.size(0) <= 1 || t.stride(0) >= t.size(1));
  return usable ? t : t.contiguous();
}

// The leading dimension of a row-major matrix (BLAS wants it >= the row length, and >= 1).
int64_t ld(const Tensor& t) { return std::max({t.size(0) <= 1 ? t.size(1) : t.stride(0), t.size(1), int64_t(1)}); }

// C of `m` x `n` (a copy of c, checked, when given; else zeros) in `dtype`.
Tensor start(const std::optional<Tensor>& c, int64_t m, int64_t n, const at::TensorOptions& options) {
  if (!c) return at::zeros({m, n}, options);
  TORCH_CHECK_VALUE(c->dim() == 2 && c->size(0) == m && c->size(1) == n, "c must be [", m, ", ", n, "], got ",
                    c->sizes());
  TORCH_CHECK_TYPE(c->scalar_type() == options.dtype().toScalarType(), "c must be ", options.dtype());
  return c->contiguous().clone();
}

// BLAS wrappers; a, b and the result share the dtype (float or double).
template <typename T>
Tensor blas(const Tensor& a, const Tensor& b, const std::string& kind, const std::optional<Tensor>& c) {
  const bool nt = kind == "blas_nt", tn = kind == "blas_tn";
  const int64_t m = tn ? a.size(1) : a.size(0), k = tn ? a.size(0) : a.size(1), n = nt ? b.size(0) : b.size(1);
  TORCH_CHECK_VALUE((nt ? b.size(1) : b.size(0)) == k, "inner sizes differ");
  Tensor out = start(c, m, n, a.options());
  if (m == 0 || n == 0 || k == 0) return out;  // an empty product adds nothing
  const T beta = c ? T(1) : T(0);
  const T* ap = a.const_data_ptr<T>();
  const T* bp = b.const_data_ptr<T>();
  T* cp = out.data_ptr<T>();
  if (nt) {
    gemm_nt<T>(m, n, k, T(1), ap, ld(a), bp, ld(b), beta, cp, n);
  } else if (tn) {
    gemm_tn<T>(m, n, k, T(1), ap, ld(a), bp, ld(b), beta, cp, n);
  } else {
    gemm_nn<T>(m, n, k, T(1), ap, ld(a), bp, ld(b), beta, cp, n);
  }
  return out;
}

Tensor bf16(const Tensor& a, const Tensor& b, bool transposed, const std::optional<Tensor>& c) {
  const auto gemm = bf16_gemm();
  TORCH_CHECK(gemm, "this CPU has no bf16 GEMM backend (AMX or AVX512-BF16)");
  const int64_t M = a.size(0), K = a.size(1), N = transposed ? b.size(0) : b.size(1);
  TORCH_CHECK_VALUE((transposed ? b.size(1) : b.size(0)) == K, "inner sizes differ");
  // A's rows are read in pairs of values (as the attention's head dims, multiples of 16, are).
  TORCH_CHECK_VALUE(K % 2 == 0, "the bf16 kernels need an even inner size, got ", K);
  // Both backends read B in whole blocks of 16 columns: pack N rounded up to 16, then keep N.
  const int64_t N_pad = (N + 15) / 16 * 16;
  Tensor out = at::zeros({M, N_pad}, a.options().dtype(at::kFloat));
  out.narrow(1, 0, N).copy_(start(c, M, N, out.options()));
  if (M == 0 || N == 0 || K == 0) return out.narrow(1, 0, N).contiguous();
  std::vector<at::BFloat16> packed(Bf16Gemm::packed_size(K, N_pad));
  if (transposed) {
    gemm->pack_transposed(b.const_data_ptr<at::BFloat16>(), ld(b), N, N_pad, K, packed.data());
  } else {
    Tensor wide = at::zeros({K, N_pad}, b.options());  // pack reads N_pad columns
    wide.narrow(1, 0, N).copy_(b);
    gemm->pack(wide.const_data_ptr<at::BFloat16>(), N_pad, K, K, N_pad, packed.data());
  }
  gemm->run(M, N_pad, K, a.const_data_ptr<at::BFloat16>(), ld(a), packed.data(), out.data_ptr<float>(), N_pad,
            c.has_value());
  gemm->release();
  return out.narrow(1, 0, N).contiguous();
}

Tensor cpu_gemm_test(const Tensor& a_, const Tensor& b_, c10::string_view kernel_, const std::optional<Tensor>& c) {
  const std::string kernel(kernel_);
  const Tensor a = rows(a_, "a"), b = rows(b_, "b");
  if (kernel.rfind("blas_", 0) == 0) {
    TORCH_CHECK_VALUE(kernel == "blas_nn" || kernel == "blas_nt" || kernel == "blas_tn", "unknown kernel ", kernel);
    TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "a and b must share a dtype");
    if (a.scalar_type() == at::kDouble) return blas<double>(a, b, kernel, c);
    TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat, "the BLAS kernels take float or double, got ", a.scalar_type());
    return blas<float>(a, b, kernel, c);
  }
  if (kernel == "fma") {
    TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat, "fma takes float");
    TORCH_CHECK(kHaveFmaGemm, "the fma kernel needs an AVX-512 build");
    const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
    TORCH_CHECK_VALUE(b.size(0) == K, "inner sizes differ");
    Tensor out = start(c, M, N, a.options());
#if defined(CPU_CAPABILITY_AVX512)
    if (M > 0 && N > 0) {
      fma_gemm(M, N, K, a.const_data_ptr<float>(), ld(a), b.const_data_ptr<float>(), ld(b), out.data_ptr<float>(), N,
               c.has_value());
    }
#endif
    return out;
  }
  if (kernel == "bf16" || kernel == "bf16_transposed") {
    TORCH_CHECK_TYPE(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16, kernel, " takes bfloat16");
    return bf16(a, b, kernel == "bf16_transposed", c);
  }
  TORCH_CHECK_VALUE(false, "unknown kernel ", kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(flowception, CPU, m) { m.impl("_cpu_gemm_test", &cpu_gemm_test); }

}  // namespace flowception
