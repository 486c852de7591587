// Small-matrix GEMMs of the CPU attention kernels (cpu/local_attention.cpp), tile-sized, where
// a general BLAS spends much of its time copying operands: row-major wrappers of the BLAS torch
// links, an fp32 register-blocked kernel on AVX-512 FMAs, and bf16 GEMMs with fp32 accumulation
// on AMX (oneDNN brgemm) or AVX512-BF16 dot products. Each is tested against torch.matmul through
// the private op flowception::_cpu_gemm_test (cpu/gemm_test.cpp, python_tests/test_gemm.py).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#include <array>
#include <cstdint>
#include <optional>
#include <utility>

namespace flowception {

constexpr int64_t kLanes = 16;  // fp32 lanes of fma_gemm's vectors

// Loops over the registers of a register block must be fully unrolled, or the accumulators
// live in memory.
#define FC_UNROLL _Pragma("GCC unroll 16")

// ---- row-major GEMMs on top of the column-major BLAS ------------------------------------

// Column-major C[m, n] = alpha * op(A) op(B) + beta * C, as BLAS (float and double; gemm.cpp).
template <typename T>
void blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Row-major C[m, n] = alpha * A[m, k] B[n, k]^T + beta * C (column-major: C^T = B A^T).
template <typename T>
void gemm_nt(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b, int64_t ldb, T beta,
             T* c, int64_t ldc) {
  blas_gemm<T>(true, false, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

// Row-major C[m, n] = alpha * A[m, k] B[k, n] + beta * C (column-major: C^T = B^T A^T).
template <typename T>
void gemm_nn(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b, int64_t ldb, T beta,
             T* c, int64_t ldc) {
  blas_gemm<T>(false, false, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

// Row-major C[m, n] = alpha * A[k, m]^T B[k, n] + beta * C (column-major: C^T = B^T A).
template <typename T>
void gemm_tn(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b, int64_t ldb, T beta,
             T* c, int64_t ldc) {
  blas_gemm<T>(false, true, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

// ---- fp32 GEMMs on AVX-512 FMAs ---------------------------------------------------------

// The forward's two fp32 GEMMs per chunk are tile-sized (e.g. 65 x 325 x 64), where BLAS spends a
// good part of its time copying operands; this register-blocked kernel reads K^T (transposed
// once per video and head, KeysTransposed), Q and V in place instead.
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kHaveFmaGemm = true;

// C[MR rows, NB vectors of 16 columns] = A[MR, K] B[K, 16 NB] (+ C if add): A's values broadcast, B's rows read as vectors, MR * NB accumulators in registers. The last vector reads
// and writes only the columns in `last`.
template <int MR, int NB>
void fma_block(int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, bool add,
               __mmask16 last, float* lane_max) {
  __m512 acc[MR][NB];
  FC_UNROLL
  for (int r = 0; r < MR; ++r) {
    FC_UNROLL
    for (int v = 0; v < NB; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    __m512 bv[NB];
    FC_UNROLL
    for (int v = 0; v < NB - 1; ++v) bv[v] = _mm512_loadu_ps(b + k * ldb + 16 * v);
    bv[NB - 1] = _mm512_maskz_loadu_ps(last, b + k * ldb + 16 * (NB - 1));
    FC_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      FC_UNROLL
      for (int v = 0; v < NB; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  FC_UNROLL
  for (int r = 0; r < MR; ++r) {
    FC_UNROLL
    for (int v = 0; v < NB; ++v) {
      const __mmask16 cols = v == NB - 1 ? last : __mmask16(0xffff);
      float* dst = c + r * ldc + 16 * v;
      if (add) acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(cols, dst));
      _mm512_mask_storeu_ps(dst, cols, acc[r][v]);
    }
    if (lane_max) {
      __m512 mx = _mm512_loadu_ps(lane_max + r * kLanes);
      FC_UNROLL
      for (int v = 0; v < NB - 1; ++v) mx = _mm512_max_ps(mx, acc[r][v]);
      _mm512_storeu_ps(lane_max + r * kLanes, _mm512_mask_max_ps(mx, last, mx, acc[r][NB - 1]));
    }
  }
}

// Calls block(i, j, mr, nb, last) over the register blocks of an M x N output: rows in steps of
// MR (mr of them), columns in vectors of 16, NB vectors at a time (nb of them); `last` masks the
// columns of the last vector.
template <int MR, int NB, typename Block>
void for_each_register_block(int64_t M, int64_t N, const Block& block) {
  for (int64_t j = 0; j < N; j += 16 * NB) {
    const int64_t cols = std::min<int64_t>(16 * NB, N - j), nb = (cols + 15) / 16;
    const __mmask16 last = static_cast<__mmask16>((1u << (cols - 16 * (nb - 1))) - 1);
    for (int64_t i = 0; i < M; i += MR) block(i, j, std::min<int64_t>(MR, M - i), nb, last);
  }
}

template <int MR, int... NB>
constexpr auto fma_row(std::integer_sequence<int, NB...>) {
  return std::array{&fma_block<MR, NB + 1>...};
}

// Row-major C[M, N] = A[M, K] B[K, N] (+ C if add), each element summed in order of k as BLAS
// does. With lane_max ([M, kLanes]), also lane_max[i] = max(lane_max[i], the values of C's row i
// folded into kLanes lanes). after_block(b, count) runs after the b-th of the count register
// blocks (to spread other work, such as prefetches, over the GEMM).
struct NoWork {
  void operator()(int64_t, int64_t) const {}
};

template <typename AfterBlock = NoWork>
void fma_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t ldc, bool add, float* lane_max = nullptr, const AfterBlock& after_block = {}) {
  constexpr int kMR = 6, kNB = 4;  // 24 accumulators + 4 B vectors + 1 broadcast of 32 registers
  using NBs = std::make_integer_sequence<int, kNB>;
  static constexpr std::array blocks{fma_row<1>(NBs{}), fma_row<2>(NBs{}), fma_row<3>(NBs{}),
                                     fma_row<4>(NBs{}), fma_row<5>(NBs{}), fma_row<6>(NBs{})};
  const int64_t count = (M + kMR - 1) / kMR * ((N + 16 * kNB - 1) / (16 * kNB));
  int64_t done = 0;
  for_each_register_block<kMR, kNB>(M, N, [&](int64_t i, int64_t j, int64_t mr, int64_t nb, __mmask16 last) {
    blocks[mr - 1][nb - 1](K, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, add, last,
                           lane_max ? lane_max + i * kLanes : nullptr);
    after_block(done++, count);
  });
}
#else
constexpr bool kHaveFmaGemm = false;
#endif

// ---- bf16 GEMMs on bf16 dot-product hardware --------------------------------------------

// C[M, N] (+)= A[M, K] B in fp32, A row-major bf16 and B packed once (Bf16Gemm::pack,
// pack_transposed). Two backends: AMX tiles through oneDNN's brgemm ukernel (its own packing, in
// column blocks of at most kPackCols; N a multiple of 16), or, where the build has AVX512-BF16, a
// register-blocked kernel on vdpbf16ps with B in the VNNI layout: pairs of consecutive rows
// interleaved, b[k / 2][n][k % 2] (K padded to even with zeros).
constexpr int64_t kPackCols = 64;

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
constexpr bool kHaveDpBf16 = true;

// C[M, N] (+)= A[M, K] B for K even (A's rows are read in pairs) and B in the VNNI layout with
// ldb elements per row pair (ldb >= 2 N). B is read in whole vectors of 16 columns: up to
// column N rounded up to 16, which must exist.
void dpbf16_gemm(int64_t M, int64_t N, int64_t K, const at::BFloat16* a, int64_t lda, const at::BFloat16* b,
                 int64_t ldb, float* c, int64_t ldc, bool add);
#else
constexpr bool kHaveDpBf16 = false;
#endif

struct Bf16Gemm {
  bool amx;  // else vdpbf16ps (kHaveDpBf16)

  // Elements of a packed [K, N] matrix.
  static int64_t packed_size(int64_t K, int64_t N) { return (K + 1) / 2 * 2 * N; }

  // Packs B = X^T [K, N_pad] for X = N rows of K values (row stride ld), columns >= N zero.
  void pack_transposed(const at::BFloat16* x, int64_t ld, int64_t N, int64_t N_pad, int64_t K,
                       at::BFloat16* dst) const {
    if (amx) {
      std::vector<at::BFloat16> b(K * N_pad, at::BFloat16(0.f));
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = 0; k < K; ++k) b[k * N_pad + n] = x[n * ld + k];
      }
      return amx_pack(K, N_pad, b.data(), dst);
    }
    // VNNI: the pair (x[n][2p], x[n][2p + 1]) goes whole to 32-bit slot [p][n]; written in
    // order, reading the N rows (in L1) once per pair.
    uint32_t* out = reinterpret_cast<uint32_t*>(dst);
    for (int64_t p = 0; p < (K + 1) / 2; ++p, out += N_pad) {
      if (2 * p + 1 < K) {  // a whole pair is the 32-bit word at its address (little-endian)
        for (int64_t n = 0; n < N; ++n) std::memcpy(out + n, x + n * ld + 2 * p, sizeof(uint32_t));
      } else {
        for (int64_t n = 0; n < N; ++n) out[n] = bits(x[n * ld + 2 * p]);
      }
      std::fill(out + N, out + N_pad, 0u);
    }
  }

  // Packs B = X [K_pad, N] for X = K rows of N values (row stride ld), rows >= K zero.
  void pack(const at::BFloat16* x, int64_t ld, int64_t K, int64_t K_pad, int64_t N, at::BFloat16* dst) const {
    if (amx) {
      std::vector<at::BFloat16> b(K_pad * N, at::BFloat16(0.f));
      for (int64_t k = 0; k < K; ++k) std::copy_n(x + k * ld, N, b.data() + k * N);
      return amx_pack(K_pad, N, b.data(), dst);
    }
    // VNNI: rows 2p and 2p + 1 interleaved into pair row p, written in order.
    uint32_t* out = reinterpret_cast<uint32_t*>(dst);
    for (int64_t p = 0; p < (K_pad + 1) / 2; ++p, out += N) {
      // Three loops rather than one with a test per element, so that the compiler vectorises them.
      if (2 * p + 1 < K) {
        const at::BFloat16* lo = x + 2 * p * ld;
        const at::BFloat16* hi = lo + ld;
        for (int64_t n = 0; n < N; ++n) out[n] = bits(lo[n]) | bits(hi[n]) << 16;
      } else if (2 * p < K) {
        const at::BFloat16* lo = x + 2 * p * ld;
        for (int64_t n = 0; n < N; ++n) out[n] = bits(lo[n]);
      } else {
        std::fill(out, out + N, 0u);
      }
    }
  }

  static uint32_t bits(at::BFloat16 x) { return x.x; }

  // oneDNN's packing of row-major b [K, N] (K even), in column blocks of at most kPackCols;
  // block c sits at dst + K * c.
  static void amx_pack(int64_t K, int64_t N, const at::BFloat16* b, at::BFloat16* dst) {
    std::vector<at::BFloat16> block(K * kPackCols);
    for (int64_t c = 0; c < N; c += kPackCols) {
      const int64_t w = std::min(kPackCols, N - c);
      for (int64_t r = 0; r < K; ++r) std::copy(b + r * N + c, b + r * N + c + w, block.data() + r * w);
      at::native::cpublas::pack(K, w, w, w, at::kBFloat16, at::kBFloat16, block.data(), dst + K * c);
    }
  }

  // C[M, N] (+)= A[M, K] B, B packed by pack or pack_transposed; K even for the dot-product backend.
  void run(int64_t M, int64_t N, int64_t K, const at::BFloat16* a, int64_t lda, const at::BFloat16* b_packed,
           float* c, int64_t ldc, bool add) const {
    if (amx) {
      for (int64_t j = 0; j < N; j += kPackCols) {
        at::native::cpublas::brgemm(M, std::min(kPackCols, N - j), K, lda, std::min(kPackCols, N - j), ldc, add, a,
                                    b_packed + K * j, c + j, true);
      }
      return;
    }
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
    dpbf16_gemm(M, N, K, a, lda, b_packed, 2 * N, c, ldc, add);
#endif
  }

  // C[M, N] = A[M, K] B[:, j0 : j0 + N], B packed by pack_transposed with `width` columns, read
  // up to column j0 + N rounded up to 16. Dot-product backend only: AMX packs in column blocks
  // that a window cannot start inside.
  void run_window(int64_t M, int64_t N, int64_t K, const at::BFloat16* a, int64_t lda, const at::BFloat16* b_packed,
                  int64_t width, int64_t j0, float* c, int64_t ldc) const {
    TORCH_CHECK(!amx, "run_window needs the AVX512-BF16 backend");
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
    dpbf16_gemm(M, N, K, a, lda, b_packed + 2 * j0, 2 * width, c, ldc, false);
#endif
  }

  void release() const {
    if (amx) at::native::cpublas::brgemm_release(true);
  }
};

// The bf16 GEMM backend of this machine, if any.
std::optional<Bf16Gemm> bf16_gemm();

// For build_info (csrc/ops.cpp): which bf16 GEMMs the bf16 attention runs ("amx",
// "avx512_bf16"), or null.
const char* bf16_gemm_backend();

}  // namespace flowception
