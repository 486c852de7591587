// CPU kernels of local_frame_attention: flash-style attention restricted to a window of frames
// of the same video, on packed [T, H, d] tokens.
//
// Work unit = (tile, head), in parallel. A tile is one frame (or a few consecutive frames of
// one video when frames are small). Because the frames a frame sees form a contiguous range
// (common/frame_window.h), a tile's keys are one contiguous range of packed tokens, read in
// place (row stride H*d) in chunks of up to kb tokens: two BLAS GEMMs per chunk with an online
// softmax in between; chunks outside the window are never touched. Only tiles of several frames
// need a per-row mask, at the chunks where their rows' ranges differ.
// Backward (FlashAttention-2 style, probabilities recomputed from the log-sum-exp): one sweep
// per (video, head), owned by one thread, over key tiles and the queries that see them (the
// transposed window), so dq, dk and dv need no atomics. GEMMs run in fp32 (fp64 for fp64 inputs);
// bf16/fp16 rows are converted once per (video, head) per thread (RowReader). Exception: the
// bf16 forward with frames of more than 32 tokens runs bf16 GEMMs on AMX (forward_bf16_amx)
// when the CPU has them.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <limits>
#include <vector>

#include "common/frame_window.h"
#include "common/softmax.h"
#include "local_attention_checks.h"

namespace flowception {
namespace {

using at::Tensor;

constexpr int64_t kTileRows = 64;          // frames smaller than this are grouped into one tile
constexpr int64_t kScoreElems = 64 * 1024;  // score tile size: rows * kb

}  // namespace
}  // namespace flowception

// ---- row-major GEMMs on top of the column-major BLAS ------------------------------------

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
namespace {

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

// ---- row helpers ------------------------------------------------------------------------

template <typename T>
T row_max(const T* x, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  return at::vec::reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x, n);
}

// x <- exp(x - shift) in place; returns the sum.
template <typename T>
T exp_shift_sum(T* x, int64_t n, T shift) {
  using Vec = at::vec::Vectorized<T>;
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec e = (Vec::loadu(x + i) - Vec(shift)).exp_u20();
    e.store(x + i);
    acc += e;
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) {
    x[i] = fc_exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

// dp <- p * (dp - delta), delta per column.
template <typename T>
void softmax_grad_row(const T* p, T* dp, const T* delta, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  at::vec::map3<T>([](Vec a, Vec b, Vec c) { return a * (b - c); }, dp, p, dp, delta, n);
}

// dp <- p * (dp - delta), one delta for the row.
template <typename T>
void softmax_grad_row(const T* p, T* dp, T delta, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  at::vec::map2<T>([delta](Vec a, Vec b) { return a * (b - Vec(delta)); }, dp, p, dp, n);
}

// dp <- p * dp in place; returns the sum.
template <typename T>
T mul_sum(const T* p, T* dp, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec e = Vec::loadu(p + i) * Vec::loadu(dp + i);
    e.store(dp + i);
    acc += e;
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) sum += (dp[i] *= p[i]);
  return sum;
}

// dst row r = alpha * src row r, for `rows` rows of d (row strides d and dst_ld), in dst's type.
template <typename T, typename S>
void store_rows(const T* src, int64_t rows, int64_t d, T alpha, S* dst, int64_t dst_ld) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d; ++j) dst[r * dst_ld + j] = static_cast<S>(alpha * src[r * d + j]);
  }
}

// ---- geometry ---------------------------------------------------------------------------

struct Tile {
  int64_t f0, f1;  // frames of the tile
  int64_t v0, v1;  // frames of its video
};

std::vector<Tile> frame_tiles(const int64_t* cu, int64_t num_videos, int64_t P) {
  const int64_t per_tile = std::max<int64_t>(1, kTileRows / P);
  std::vector<Tile> tiles;
  for (int64_t b = 0; b < num_videos; ++b) {
    for (int64_t f = cu[b]; f < cu[b + 1]; f += per_tile) tiles.push_back({f, std::min(f + per_tile, cu[b + 1]), cu[b], cu[b + 1]});
  }
  return tiles;
}

// Scores of the tile's rows (one per token of frames [f0, f1)) against column tokens
// [c0, c0 + n): -inf where a row's frame does not reach the column's frame. A one-frame tile
// (and any chunk inside every row's range) needs nothing.
template <typename T>
void mask_scores(T* s, int64_t n, const Tile& tile, FrameReach reach, int64_t P, int64_t c0) {
  const int64_t common_lo = reach_lo(reach, tile.f1 - 1, tile.v0) * P, common_hi = reach_hi(reach, tile.f0, tile.v1) * P;
  if (common_lo <= c0 && c0 + n <= common_hi) return;
  for (int64_t f = tile.f0; f < tile.f1; ++f) {
    const int64_t lo = std::clamp(reach_lo(reach, f, tile.v0) * P - c0, int64_t(0), n);
    const int64_t hi = std::clamp(reach_hi(reach, f, tile.v1) * P - c0, lo, n);
    for (int64_t r = (f - tile.f0) * P; r < (f - tile.f0 + 1) * P; ++r) {
      std::fill(s + r * n, s + r * n + lo, -std::numeric_limits<T>::infinity());
      std::fill(s + r * n + hi, s + (r + 1) * n, -std::numeric_limits<T>::infinity());
    }
  }
}

// Rows of one head of a [T, H, d] tensor (unit last stride) in the compute type T. In place when
// the tensor has that type; else (bf16/fp16) converted into a per-thread cache that holds the
// rows of one (video, head) seen so far, so consecutive tiles of a video convert each row once
// (no full converted copy of the inputs, no conversion per tile visit).
template <typename S>
class RowReader {
 public:
  using T = at::opmath_type<S>;

  explicit RowReader(const Tensor& t)
      : data_(t.const_data_ptr<S>()), ld_(t.stride(0)), hs_(t.stride(1)), d_(t.size(2)) {}

  int64_t ld() const { return kInPlace ? ld_ : d_; }

  // Rows [begin, end) of `head`, inside the video whose first token is `video_begin`.
  const T* rows(int64_t begin, int64_t end, int64_t head, int64_t video_begin) {
    if constexpr (kInPlace) {
      return data_ + begin * ld_ + head * hs_;
    } else {
      if (head != head_ || video_begin != video_) {
        head_ = head;
        video_ = video_begin;
        lo_ = hi_ = begin;
      }
      if (begin < lo_ || end > hi_) {
        const int64_t lo = std::min(begin, lo_), hi = std::max(end, hi_);
        if (static_cast<int64_t>(cache_.size()) < (hi - video_) * d_) cache_.resize((hi - video_) * d_);
        convert(lo, lo_);
        convert(hi_, hi);
        lo_ = lo;
        hi_ = hi;
      }
      return cache_.data() + (begin - video_) * d_;
    }
  }

 private:
  static constexpr bool kInPlace = std::is_same_v<S, T>;

  void convert(int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) at::vec::convert(data_ + r * ld_ + head_ * hs_, cache_.data() + (r - video_) * d_, d_);
  }

  const S* data_;
  int64_t ld_, hs_, d_;
  std::vector<T> cache_;
  int64_t head_ = -1, video_ = -1, lo_ = 0, hi_ = 0;
};

// Columns per chunk for a tile of `rows` rows.
int64_t chunk_cols(int64_t rows) { return std::clamp(kScoreElems / rows, int64_t(64), int64_t(1024)); }

// Runs body(tile, head, state) over all (tile, head) pairs in parallel, head-major so a thread
// walks the tiles of a video in order; state = make_state() is per thread.
template <typename MakeState, typename Body>
void for_each_tile_head(const std::vector<Tile>& tiles, int64_t H, const MakeState& make_state, const Body& body) {
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());
  at::parallel_for(0, n_tiles * H, 1, [&](int64_t begin, int64_t end) {
    auto state = make_state();
    for (int64_t w = begin; w < end; ++w) body(tiles[w % n_tiles], w / n_tiles, state);
  });
}

// Unit last stride, as the kernels read rows in place (views such as q of a fused qkv are kept).
Tensor rows_view(const Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); }

Tensor empty_tokens(const Tensor& q) { return at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous)); }

// ---- forward ----------------------------------------------------------------------------

template <typename S>
void forward_kernel(const Tensor& q_, const Tensor& k_, const Tensor& v_, const std::vector<Tile>& tiles, int64_t P,
                    FrameReach reach, double scale_, Tensor& out, Tensor& lse) {
  using T = at::opmath_type<S>;
  const int64_t T_ = q_.size(0), H = q_.size(1), d = q_.size(2);
  const int64_t max_rows = std::max<int64_t>(1, kTileRows / P) * P, kb = chunk_cols(max_rows);
  const T scale = static_cast<T>(scale_);
  S* out_p = out.data_ptr<S>();
  T* lse_p = lse.data_ptr<T>();
  struct State {
    std::vector<T> buf;
    RowReader<S> q, k, v;
  };
  auto make_state = [&] { return State{std::vector<T>(max_rows * (kb + d + 2)), RowReader<S>(q_), RowReader<S>(k_), RowReader<S>(v_)}; };

  for_each_tile_head(tiles, H, make_state, [&](const Tile& tile, int64_t h, State& st) {
    const int64_t r0 = tile.f0 * P, m = (tile.f1 - tile.f0) * P, vb = tile.v0 * P;
    T* s = st.buf.data();    // scores / probabilities [m, kb]
    T* o = s + m * kb;       // unnormalised output [m, d]
    T* row_m = o + m * d;    // running max [m]
    T* row_l = row_m + m;    // running sum [m]
    std::fill(o, o + m * d, T(0));
    std::fill(row_m, row_m + m, -std::numeric_limits<T>::infinity());
    std::fill(row_l, row_l + m, T(0));
    const T* qa = st.q.rows(r0, r0 + m, h, vb);
    const int64_t c_end = reach_hi(reach, tile.f1 - 1, tile.v1) * P;
    for (int64_t c0 = reach_lo(reach, tile.f0, tile.v0) * P; c0 < c_end; c0 += kb) {
      const int64_t n = std::min(kb, c_end - c0);
      gemm_nt<T>(m, n, d, scale, qa, st.q.ld(), st.k.rows(c0, c0 + n, h, vb), st.k.ld(), T(0), s, n);
      mask_scores(s, n, tile, reach, P, c0);
      for (int64_t i = 0; i < m; ++i) {
        T* row = s + i * n;
        const T factor = online_softmax_update(row_m[i], row_max(row, n));
        row_l[i] = row_l[i] * factor + exp_shift_sum(row, n, softmax_shift(row_m[i]));
        if (factor != T(1)) {
          for (int64_t j = 0; j < d; ++j) o[i * d + j] *= factor;
        }
      }
      gemm_nn<T>(m, d, n, T(1), s, n, st.v.rows(c0, c0 + n, h, vb), st.v.ld(), T(1), o, d);
    }
    for (int64_t i = 0; i < m; ++i) {
      store_rows(o + i * d, 1, d, row_l[i] > 0 ? T(1) / row_l[i] : T(0), out_p + (r0 + i) * H * d + h * d, H * d);
      lse_p[h * T_ + r0 + i] = softmax_lse(row_m[i], row_l[i]);
    }
  });
}

// ---- bf16 forward on AMX tiles ------------------------------------------------------------

// oneDNN's brgemm ukernel packs B (row-major [K, N], K even) into the VNNI layout in column
// blocks of at most kPackCols (N a multiple of 16); block c sits at dst + K * c.
constexpr int64_t kPackCols = 64;

void pack_bf16(int64_t K, int64_t N, const at::BFloat16* src, at::BFloat16* dst) {
  std::vector<at::BFloat16> block(K * kPackCols);
  for (int64_t c = 0; c < N; c += kPackCols) {
    const int64_t w = std::min(kPackCols, N - c);
    for (int64_t r = 0; r < K; ++r) std::copy(src + r * N + c, src + r * N + c + w, block.data() + r * w);
    at::native::cpublas::pack(K, w, w, w, at::kBFloat16, at::kBFloat16, block.data(), dst + K * c);
  }
}

// C[M, N] (+)= A[M, K] B with B packed by pack_bf16; fp32 accumulation.
void brgemm_bf16(int64_t M, int64_t N, int64_t K, const at::BFloat16* a, int64_t lda, const at::BFloat16* b_packed,
                 float* c, int64_t ldc, bool add) {
  for (int64_t j = 0; j < N; j += kPackCols) {
    at::native::cpublas::brgemm(M, std::min(kPackCols, N - j), K, lda, std::min(kPackCols, N - j), ldc, add, a,
                                b_packed + K * j, c + j, true);
  }
}

// K^T and V of every (frame, head) are packed once (O(T) memory, frames padded to Pp tokens,
// a multiple of 16); then per one-frame tile and key frame, S = Q K^T and O += P V are bf16
// GEMMs with fp32 accumulation (P rounded to bf16, as flash attention does).
void forward_bf16_amx(const Tensor& q_, const Tensor& k_, const Tensor& v_, const std::vector<Tile>& tiles, int64_t P,
                      FrameReach reach, double scale_, Tensor& out, Tensor& lse) {
  using S = at::BFloat16;
  using Vec = at::vec::Vectorized<float>;
  const int64_t T_ = q_.size(0), H = q_.size(1), d = q_.size(2), frames = T_ / P;
  const int64_t Pp = (P + 15) / 16 * 16;
  const int64_t block = d * Pp;  // elements of one packed (frame, head) matrix
  std::vector<S> k_packed(frames * H * block), v_packed(frames * H * block);
  const S* k = k_.const_data_ptr<S>();
  const S* v = v_.const_data_ptr<S>();
  at::parallel_for(0, frames * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<S> tmp(block, S(0));  // padding tokens stay 0
    for (int64_t w = begin; w < end; ++w) {
      const int64_t g = w / H, h = w % H;
      for (int64_t j = 0; j < P; ++j) {  // K^T [d, Pp]
        const S* row = k + (g * P + j) * k_.stride(0) + h * k_.stride(1);
        for (int64_t e = 0; e < d; ++e) tmp[e * Pp + j] = row[e];
      }
      pack_bf16(d, Pp, tmp.data(), k_packed.data() + w * block);
      for (int64_t j = 0; j < P; ++j) {  // V [Pp, d]
        std::copy_n(v + (g * P + j) * v_.stride(0) + h * v_.stride(1), d, tmp.data() + j * d);
      }
      pack_bf16(Pp, d, tmp.data(), v_packed.data() + w * block);
    }
  });

  const int64_t fc = std::max<int64_t>(1, chunk_cols(P) / Pp);  // key frames per chunk
  const float scale = static_cast<float>(scale_);
  const S* q = q_.const_data_ptr<S>();
  S* out_p = out.data_ptr<S>();
  float* lse_p = lse.data_ptr<float>();
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());
  at::parallel_for(0, n_tiles * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(P * (fc * Pp + d + 2));
    std::vector<S> p_bf16(P * fc * Pp);
    for (int64_t w = begin; w < end; ++w) {
      const Tile& tile = tiles[w % n_tiles];
      const int64_t h = w / n_tiles, r0 = tile.f0 * P, m = P;
      float* s = buf.data();
      float* o = s + m * fc * Pp;
      float* row_m = o + m * d;
      float* row_l = row_m + m;
      std::fill(o, o + m * d, 0.f);
      std::fill(row_m, row_m + m, -std::numeric_limits<float>::infinity());
      std::fill(row_l, row_l + m, 0.f);
      const S* qa = q + r0 * q_.stride(0) + h * q_.stride(1);
      const int64_t g_end = reach_hi(reach, tile.f0, tile.v1);
      for (int64_t g0 = reach_lo(reach, tile.f0, tile.v0); g0 < g_end; g0 += fc) {
        const int64_t nf = std::min(fc, g_end - g0), n = nf * Pp;
        for (int64_t g = g0; g < g0 + nf; ++g) {
          brgemm_bf16(m, Pp, d, qa, q_.stride(0), k_packed.data() + (g * H + h) * block, s + (g - g0) * Pp, n, false);
        }
        for (int64_t i = 0; i < m; ++i) {
          float* row = s + i * n;
          at::vec::map<float>([scale](Vec x) { return x * Vec(scale); }, row, row, n);
          for (int64_t f = 0; f < nf; ++f) std::fill(row + f * Pp + P, row + (f + 1) * Pp, -std::numeric_limits<float>::infinity());
          const float factor = online_softmax_update(row_m[i], row_max(row, n));
          row_l[i] = row_l[i] * factor + exp_shift_sum(row, n, softmax_shift(row_m[i]));
          if (factor != 1.f) {
            for (int64_t j = 0; j < d; ++j) o[i * d + j] *= factor;
          }
          at::vec::convert(row, p_bf16.data() + i * n, n);
        }
        for (int64_t g = g0; g < g0 + nf; ++g) {
          brgemm_bf16(m, d, Pp, p_bf16.data() + (g - g0) * Pp, n, v_packed.data() + (g * H + h) * block, o, d, true);
        }
      }
      for (int64_t i = 0; i < m; ++i) {
        store_rows(o + i * d, 1, d, row_l[i] > 0 ? 1.f / row_l[i] : 0.f, out_p + (r0 + i) * H * d + h * d, H * d);
        lse_p[h * T_ + r0 + i] = softmax_lse(row_m[i], row_l[i]);
      }
    }
    at::native::cpublas::brgemm_release(true);
  });
}

std::tuple<Tensor, Tensor> local_frame_attention_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& cu_seqlens, int64_t tokens_per_frame,
                                                     int64_t window, bool causal, double scale) {
  const Tensor cu = check_attention_inputs(q, k, v, cu_seqlens, tokens_per_frame, window);
  Tensor out = empty_tokens(q);
  Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (q.numel() > 0) {
    const auto tiles = frame_tiles(cu.data_ptr<int64_t>(), cu.numel() - 1, tokens_per_frame);
    if (q.scalar_type() == at::kBFloat16 && tokens_per_frame > kTileRows / 2 &&
        at::native::cpublas::could_pack(at::kBFloat16)) {
      forward_bf16_amx(rows_view(q), rows_view(k), rows_view(v), tiles, tokens_per_frame, query_reach(window, causal),
                       scale, out, lse);
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "local_frame_attention_cpu", [&] {
        forward_kernel<scalar_t>(rows_view(q), rows_view(k), rows_view(v), tiles, tokens_per_frame,
                                 query_reach(window, causal), scale, out, lse);
      });
    }
  }
  return {out, lse};
}

// ---- backward ---------------------------------------------------------------------------

// Runs body(video, head, state) over all (video, head) pairs in parallel, each pair owned by one
// thread. Pairs are handed out dynamically, longest video first, so unequal videos balance
// over the threads; state = make_state() is per thread.
template <typename MakeState, typename Body>
void for_each_video_head(const int64_t* cu, int64_t num_videos, int64_t H, const MakeState& make_state,
                         const Body& body) {
  std::vector<int64_t> order(num_videos);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [cu](int64_t a, int64_t b) { return cu[a + 1] - cu[a] > cu[b + 1] - cu[b]; });
  const int64_t n = num_videos * H;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(n, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t w = next++; w < n; w = next++) body(order[w / H], w % H, state);
  });
}

// FlashAttention-2's single sweep, one (video, head) per thread: for each key tile and chunk of
// the queries that see it, S^T = K Q^T, P^T = exp(S^T - lse), dV += P^T dO, dP^T = V dO^T,
// dS^T = P^T * (dP^T - delta), dK += dS^T Q and dQ += dS K — five GEMMs per chunk, with dq
// accumulated in the thread's buffer of the video's rows (no atomics, no T x T memory).
// delta_i = <dO_i, O_i> - grad_lse_i from `out` when given (fp32/fp64); a bf16/fp16 `out` is
// rounded too coarsely, so then delta_i = sum_j P_ij dP_ij - grad_lse_i is computed exactly by a
// first sweep over the queries (two more GEMMs per chunk).
template <typename S>
void backward_kernel(const Tensor& grad_out_, const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& out_,
                     const Tensor& lse_, const Tensor& grad_lse_, const int64_t* cu, int64_t num_videos,
                     const std::vector<Tile>& tiles, int64_t P, int64_t window, bool causal, double scale_,
                     Tensor& dq, Tensor& dk, Tensor& dv) {
  using T = at::opmath_type<S>;
  using Vec = at::vec::Vectorized<T>;
  const int64_t T_ = q_.size(0), H = q_.size(1), d = q_.size(2);
  const int64_t max_rows = std::max<int64_t>(1, kTileRows / P) * P, kb = chunk_cols(max_rows);
  const T scale = static_cast<T>(scale_);
  const T* lse = lse_.const_data_ptr<T>();
  const T* grad_lse = grad_lse_.defined() ? grad_lse_.const_data_ptr<T>() : nullptr;
  const FrameReach qr = query_reach(window, causal), kr = key_reach(window, causal);
  S* dq_p = dq.data_ptr<S>();
  S* dk_p = dk.data_ptr<S>();
  S* dv_p = dv.data_ptr<S>();
  std::vector<int64_t> first_tile(num_videos + 1, 0);  // tiles of video b: [first_tile[b], first_tile[b + 1])
  for (int64_t t = 0, b = 0; b < num_videos; ++b) {
    while (t < static_cast<int64_t>(tiles.size()) && tiles[t].f0 < cu[b + 1]) ++t;
    first_tile[b + 1] = t;
  }
  struct State {
    std::vector<T> buf, delta, dq;
    RowReader<S> q, k, v, go;
  };
  auto make_state = [&] {
    return State{std::vector<T>(max_rows * (2 * kb + 2 * d)), {}, {}, RowReader<S>(q_), RowReader<S>(k_),
                 RowReader<S>(v_), RowReader<S>(grad_out_)};
  };

  for_each_video_head(cu, num_videos, H, make_state, [&](int64_t b, int64_t h, State& st) {
    const int64_t vb = cu[b] * P, vt = (cu[b + 1] - cu[b]) * P;
    if (vt == 0) return;
    T* s = st.buf.data();  // P or P^T [m, kb]
    T* dp = s + max_rows * kb;  // dP, dP^T, then dS^T [m, kb]
    T* dk_acc = dp + max_rows * kb;  // [m, d]
    T* dv_acc = dk_acc + max_rows * d;
    st.delta.assign(vt, T(0));
    st.dq.assign(vt * d, T(0));
    for (int64_t i = 0; i < vt; ++i) st.delta[i] = grad_lse != nullptr ? -grad_lse[h * T_ + vb + i] : T(0);
    if (out_.defined()) {
      const T* goa = st.go.rows(vb, vb + vt, h, vb);
      for (int64_t i = 0; i < vt; ++i) {
        const S* o = out_.const_data_ptr<S>() + (vb + i) * out_.stride(0) + h * out_.stride(1);
        for (int64_t j = 0; j < d; ++j) st.delta[i] += goa[i * st.go.ld() + j] * static_cast<T>(o[j]);
      }
    } else {
      for (int64_t t = first_tile[b]; t < first_tile[b + 1]; ++t) {
        const Tile& tile = tiles[t];
        const int64_t r0 = tile.f0 * P, m = (tile.f1 - tile.f0) * P;
        const T* qa = st.q.rows(r0, r0 + m, h, vb);
        const T* goa = st.go.rows(r0, r0 + m, h, vb);
        const int64_t c_end = reach_hi(qr, tile.f1 - 1, tile.v1) * P;
        for (int64_t c0 = reach_lo(qr, tile.f0, tile.v0) * P; c0 < c_end; c0 += kb) {
          const int64_t n = std::min(kb, c_end - c0);
          gemm_nt<T>(m, n, d, scale, qa, st.q.ld(), st.k.rows(c0, c0 + n, h, vb), st.k.ld(), T(0), s, n);
          mask_scores(s, n, tile, qr, P, c0);
          for (int64_t i = 0; i < m; ++i) exp_shift_sum(s + i * n, n, lse[h * T_ + r0 + i]);
          gemm_nt<T>(m, n, d, T(1), goa, st.go.ld(), st.v.rows(c0, c0 + n, h, vb), st.v.ld(), T(0), dp, n);
          for (int64_t i = 0; i < m; ++i) st.delta[r0 - vb + i] += mul_sum(s + i * n, dp + i * n, n);
        }
      }
    }

    for (int64_t t = first_tile[b]; t < first_tile[b + 1]; ++t) {
      const Tile& tile = tiles[t];
      const int64_t r0 = tile.f0 * P, m = (tile.f1 - tile.f0) * P;
      std::fill(dk_acc, dk_acc + m * d, T(0));
      std::fill(dv_acc, dv_acc + m * d, T(0));
      const T* ka = st.k.rows(r0, r0 + m, h, vb);
      const T* va = st.v.rows(r0, r0 + m, h, vb);
      const int64_t c_end = reach_hi(kr, tile.f1 - 1, tile.v1) * P;
      for (int64_t c0 = reach_lo(kr, tile.f0, tile.v0) * P; c0 < c_end; c0 += kb) {
        const int64_t n = std::min(kb, c_end - c0);
        const T* lse_c = lse + h * T_ + c0;
        const T* qa = st.q.rows(c0, c0 + n, h, vb);
        const T* goa = st.go.rows(c0, c0 + n, h, vb);
        gemm_nt<T>(m, n, d, scale, ka, st.k.ld(), qa, st.q.ld(), T(0), s, n);
        mask_scores(s, n, tile, kr, P, c0);
        for (int64_t i = 0; i < m; ++i) {
          at::vec::map2<T>([](Vec x, Vec l) { return (x - l).exp_u20(); }, s + i * n, s + i * n, lse_c, n);
        }
        gemm_nn<T>(m, d, n, T(1), s, n, goa, st.go.ld(), T(1), dv_acc, d);
        gemm_nt<T>(m, n, d, T(1), va, st.v.ld(), goa, st.go.ld(), T(0), dp, n);
        for (int64_t i = 0; i < m; ++i) softmax_grad_row<T>(s + i * n, dp + i * n, st.delta.data() + (c0 - vb), n);
        gemm_nn<T>(m, d, n, T(1), dp, n, qa, st.q.ld(), T(1), dk_acc, d);
        gemm_tn<T>(n, d, m, T(1), dp, n, ka, st.k.ld(), T(1), st.dq.data() + (c0 - vb) * d, d);
      }
      store_rows(dk_acc, m, d, scale, dk_p + r0 * H * d + h * d, H * d);
      store_rows(dv_acc, m, d, T(1), dv_p + r0 * H * d + h * d, H * d);
    }
    store_rows(st.dq.data(), vt, d, scale, dq_p + vb * H * d + h * d, H * d);
  });
}

std::tuple<Tensor, Tensor, Tensor> local_frame_attention_backward_cpu(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const c10::optional<Tensor>& out,
    const Tensor& lse, const c10::optional<Tensor>& grad_lse, const Tensor& cu_seqlens, int64_t tokens_per_frame,
    int64_t window, bool causal, double scale) {
  const Tensor cu = check_attention_inputs(q, k, v, cu_seqlens, tokens_per_frame, window);
  check_backward_inputs(q, grad_out, out, lse, grad_lse);
  Tensor dq = empty_tokens(q), dk = empty_tokens(q), dv = empty_tokens(q);
  if (q.numel() > 0) {
    const auto tiles = frame_tiles(cu.data_ptr<int64_t>(), cu.numel() - 1, tokens_per_frame);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "local_frame_attention_backward_cpu", [&] {
      backward_kernel<scalar_t>(rows_view(grad_out), rows_view(q), rows_view(k), rows_view(v),
                                out.has_value() ? rows_view(*out) : Tensor(), lse.contiguous(),
                                grad_lse.has_value() ? grad_lse->contiguous() : Tensor(), cu.data_ptr<int64_t>(),
                                cu.numel() - 1, tiles, tokens_per_frame, window, causal, scale, dq, dk, dv);
    });
  }
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(flowception, CPU, m) {
  m.impl("local_frame_attention", &local_frame_attention_cpu);
  m.impl("local_frame_attention_backward", &local_frame_attention_backward_cpu);
}

}  // namespace flowception
