// The GEMM kernels of gemm.h that are not templates: the BLAS shim, the AVX512-BF16
// dot-product kernel and the choice of bf16 backend.
#include "cpu/gemm.h"

#include <cstring>
#include <type_traits>

// The BLAS torch links (MKL or OpenBLAS) exports the Fortran GEMMs, but libtorch keeps its own
// at::native::cpublas::gemm overloads that call them private. Weak, so a torch built without a
// BLAS still loads the extension (and computes the same products through at::mm).
extern "C" {
__attribute__((weak)) void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                                  const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                                  const float* beta, float* c, const int* ldc);
__attribute__((weak)) void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                                  const double* alpha, const double* a, const int* lda, const double* b,
                                  const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace flowception {

using at::Tensor;


// Column-major C[m, n] = alpha * op(A) op(B) + beta * C, as BLAS (all sizes are tile-sized).
template <typename T>
void blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int mi = m, ni = n, ki = k, lda_i = lda, ldb_i = ldb, ldc_i = ldc;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ != nullptr) return sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &lda_i, b, &ldb_i, &beta, c, &ldc_i);
  } else {
    if (dgemm_ != nullptr) return dgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &lda_i, b, &ldb_i, &beta, c, &ldc_i);
  }
  // No BLAS symbols: the same product through at::mm on strided views (slower, same result).
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const Tensor ta_ = at::from_blob(const_cast<T*>(a), {m, k}, trans_a ? at::IntArrayRef{lda, 1} : at::IntArrayRef{1, lda}, opts);
  const Tensor tb_ = at::from_blob(const_cast<T*>(b), {k, n}, trans_b ? at::IntArrayRef{ldb, 1} : at::IntArrayRef{1, ldb}, opts);
  Tensor tc = at::from_blob(c, {m, n}, {1, ldc}, opts);
  const Tensor prod = at::mm(ta_, tb_);
  if (beta == T(0)) {
    tc.copy_(prod.mul_(alpha));
  } else {
    tc.mul_(beta).add_(prod, alpha);
  }
}

template void blas_gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                               int64_t, float, float*, int64_t);
template void blas_gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                const double*, int64_t, double, double*, int64_t);

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
namespace {


// Rows [0, MR) x vectors [0, NB) of 16 columns of C: MR * NB accumulators live in registers
// while the K / 2 row pairs of B stream past. The last vector stores only the columns in `last`.
template <int MR, int NB>
void dpbf16_block(int64_t K2, const at::BFloat16* a, int64_t lda, const at::BFloat16* b, int64_t ldb, float* c,
                  int64_t ldc, bool add, __mmask16 last) {
  __m512 acc[MR][NB];
  FC_UNROLL
  for (int r = 0; r < MR; ++r) {
    FC_UNROLL
    for (int v = 0; v < NB; ++v) {
      const __mmask16 cols = v == NB - 1 ? last : __mmask16(0xffff);
      acc[r][v] = add ? _mm512_maskz_loadu_ps(cols, c + r * ldc + 16 * v) : _mm512_setzero_ps();
    }
  }
  for (int64_t kp = 0; kp < K2; ++kp) {
    __m512bh bv[NB];
    FC_UNROLL
    for (int v = 0; v < NB; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + kp * ldb + 32 * v);
    FC_UNROLL
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kp, sizeof(pair));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      FC_UNROLL
      for (int v = 0; v < NB; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  FC_UNROLL
  for (int r = 0; r < MR; ++r) {
    FC_UNROLL
    for (int v = 0; v < NB - 1; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
    _mm512_mask_storeu_ps(c + r * ldc + 16 * (NB - 1), last, acc[r][NB - 1]);
  }
}

template <int MR, int... NB>
constexpr auto dpbf16_row(std::integer_sequence<int, NB...>) {
  return std::array{&dpbf16_block<MR, NB + 1>...};
}

}  // namespace

// C[M, N] (+)= A[M, K] B for K even (A's rows are read in pairs) and B in the VNNI layout with
// ldb elements per row pair (ldb >= 2 N). B is read in whole vectors of 16 columns: up to
// column N rounded up to 16, which must exist.
void dpbf16_gemm(int64_t M, int64_t N, int64_t K, const at::BFloat16* a, int64_t lda, const at::BFloat16* b,
                 int64_t ldb, float* c, int64_t ldc, bool add) {
  constexpr int kMR = 4, kNB = 4;
  using NBs = std::make_integer_sequence<int, kNB>;
  static constexpr std::array blocks{dpbf16_row<1>(NBs{}), dpbf16_row<2>(NBs{}), dpbf16_row<3>(NBs{}), dpbf16_row<4>(NBs{})};
  for_each_register_block<kMR, kNB>(M, N, [&](int64_t i, int64_t j, int64_t mr, int64_t nb, __mmask16 last) {
    blocks[mr - 1][nb - 1](K / 2, a + i * lda, lda, b + 2 * j, ldb, c + i * ldc + j, ldc, add, last);
  });
}
#endif

// The bf16 GEMM backend of this machine, if any.
std::optional<Bf16Gemm> bf16_gemm() {
  if (at::native::cpublas::could_pack(at::kBFloat16)) return Bf16Gemm{true};
  if (kHaveDpBf16) return Bf16Gemm{false};
  return std::nullopt;
}

const char* bf16_gemm_backend() {
  const auto gemm = bf16_gemm();
  return gemm ? (gemm->amx ? "amx" : "avx512_bf16") : nullptr;
}

}  // namespace flowception
