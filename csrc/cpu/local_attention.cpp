// Long (≈840 lines) because the fp32 forward, the packed bf16 paths and the backward share tiles, state and helpers in one unit.
// CPU kernels of local_frame_attention: flash-style attention restricted to a window of frames
// of the same video, on packed [T, H, d] tokens.
//
// Work unit = (tile, head), in parallel. A tile is one frame (or a few consecutive frames of
// one video when frames are small). Because the frames a frame sees form a contiguous range
// (common/frame_window.h), a tile's keys are one contiguous range of packed tokens, read in
// place (row stride H*d) in chunks of up to kb tokens: two BLAS GEMMs per chunk with an online
// softmax in between; chunks outside the window are never touched. Only tiles of several frames
// need a per-row mask, at the chunks where their rows' ranges differ. fp32 forward on AVX-512
// with d a multiple of 16: the two GEMMs run on our own FMA kernel (fma_gemm) against K^T
// transposed once per (video, head) and thread, and next tiles' rows are prefetched.
// Backward (FlashAttention-2 style, probabilities recomputed from the log-sum-exp): one sweep
// per (video, head), owned by one thread, over key tiles and the queries that see them (the
// transposed window), so dq, dk and dv need no atomics. GEMMs run in fp32 (fp64 for fp64 inputs);
// bf16/fp16 rows are converted once per (video, head) per thread (RowReader). Exception: for
// bf16 with frames of more than 32 tokens and d a multiple of 16, the forward and the backward's
// softmax-delta sweep run bf16 GEMMs (forward_bf16_packed, softmax_delta_bf16_packed) on AMX or
// on AVX512-BF16 dot products when the CPU has them; with AVX512-BF16 the backward's main sweep
// also runs its two GEMMs of bf16-only inputs (S^T = K Q^T, dP^T = V dO^T) on them.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

#include "common/frame_window.h"
#include "common/softmax.h"
#include "cpu/gemm.h"
#include "cpu/vec_round.h"
#include "local_attention.h"

namespace flowception {
namespace {

using at::Tensor;

constexpr int64_t kTileRows = 64;          // frames smaller than this are grouped into one tile
constexpr int64_t kScoreElems = 64 * 1024;  // score tile size: rows * kb

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
  if (i < n) {  // the tail as one partial vector: a scalar exp costs as much as a vector one
    const int count = static_cast<int>(n - i);
    const Vec e = Vec::set(Vec(T(0)), (Vec::loadu(x + i, count) - Vec(shift)).exp_u20(), count);
    e.store(x + i, count);
    acc += e;
  }
  return at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, acc);
}

// lse[i] = softmax_lse(m[i], l[i]) for n rows, vectorised (a libm logf per row took 1 % of the
// forward).
template <typename T>
void softmax_lse_rows(const T* m, const T* l, int64_t n, T* lse) {
  using Vec = at::vec::Vectorized<T>;
  const Vec none(-std::numeric_limits<T>::infinity());
  at::vec::map2<T>([&none](Vec mv, Vec lv) { return Vec::blendv(none, mv + lv.log(), lv > Vec(T(0))); }, lse, m, l, n);
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

// The (tile, head) a thread works on after its current one (tile = nullptr at its last).
struct NextWork {
  const Tile* tile = nullptr;
  int64_t head = -1;
};

// Runs body(tile, head, next, state) over all (tile, head) pairs in parallel, head-major so a
// thread walks the tiles of a video in order; state = make_state() is per thread.
template <typename MakeState, typename Body>
void for_each_tile_head(const std::vector<Tile>& tiles, int64_t H, const MakeState& make_state, const Body& body) {
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());
  at::parallel_for(0, n_tiles * H, 1, [&](int64_t begin, int64_t end) {
    auto state = make_state();
    for (int64_t w = begin; w < end; ++w) {
      const NextWork next = w + 1 < end ? NextWork{&tiles[(w + 1) % n_tiles], (w + 1) / n_tiles} : NextWork{};
      body(tiles[w % n_tiles], w / n_tiles, next, state);
    }
  });
}

// Unit last stride, as the kernels read rows in place (views such as q of a fused qkv are kept).
Tensor rows_view(const Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); }

Tensor empty_tokens(const Tensor& q) { return at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous)); }

// K^T of one head of a [T, H, d] fp32 tensor, [d, keys] with row stride ld(), for the keys of one
// video seen so far: transposed once per (video, head) and thread as the thread's tiles walk the
// video, so S = Q K^T reads whole vectors of keys.
class KeysTransposed {
 public:
  KeysTransposed(const Tensor& k, float scale)
      : data_(k.const_data_ptr<float>()), ld_k_(k.stride(0)), hs_(k.stride(1)), d_(k.size(2)), scale_(scale) {}

  int64_t ld() const { return ld_; }

  // Column c0 of scale * K^T, for keys [c0, c1) of `head` in the video of tokens [video_begin, video_end).
  const float* columns(int64_t c0, int64_t c1, int64_t head, int64_t video_begin, int64_t video_end) {
    if (head != head_ || video_begin != video_) {
      head_ = head;
      video_ = video_begin;
      lo_ = hi_ = c0;
      // 16 columns of slack, so that the d rows do not all fall into the same cache sets.
      ld_ = (video_end - video_begin + 15) / 16 * 16 + 16;
      if (static_cast<int64_t>(cache_.size()) < d_ * ld_) cache_.resize(d_ * ld_);
    }
    if (c0 < lo_) transpose(c0, std::exchange(lo_, c0));
    if (c1 > hi_) transpose(std::exchange(hi_, c1), c1);
    return cache_.data() + (c0 - video_);
  }

 private:
  // The scale goes on K, the operand MKL applies alpha to, and the kernel sums in MKL's order, so
  // S rounds as MKL's S = alpha Q K^T does (an exact emulation of this order matched it bit for
  // bit). Like the BLAS path, the output then stays within 2e-6 of SDPA's, whose S comes from the
  // same BLAS; scaling the finished sums instead gave 2.65e-6.
  void transpose(int64_t begin, int64_t end) {
    using Vec = at::vec::Vectorized<float>;
    float* dst = cache_.data() + (begin - video_);
    at::vec::transpose_mxn<float>(data_ + begin * ld_k_ + head_ * hs_, ld_k_, dst, ld_, static_cast<int>(end - begin),
                                  static_cast<int>(d_));
    for (int64_t k = 0; k < d_; ++k) {
      at::vec::map<float>([this](Vec x) { return x * Vec(scale_); }, dst + k * ld_, dst + k * ld_, end - begin);
    }
  }

  const float* data_;
  int64_t ld_k_, hs_, d_;
  float scale_;
  std::vector<float> cache_;
  int64_t head_ = -1, video_ = -1, lo_ = 0, hi_ = 0, ld_ = 0;
};

// Brings the cache line at p into the L2 cache. GCC deems __builtin_prefetch free of side
// effects, so a function that only prefetches counts as pure and calls to it are deleted
// (NextRows::prefetch was, until it used this); a volatile asm is kept.
inline void prefetch_line(const char* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht2 %0" : : "m"(*p));
#else
  (void)p;
#endif
}

// Rows the thread's next (tile, head) reads or writes first: its queries and output rows, and
// the key and value frames of its window that the current tile's window does not cover (one new
// frame when it is the next frame of the same video and head, the whole window otherwise).
// prefetch(i, m) brings the i-th of m equal parts of them into the cache, so that they do not
// come from memory on demand.
class NextRows {
 public:
  NextRows() = default;

  NextRows(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tile& tile, int64_t head,
           const NextWork& next, int64_t P, FrameReach reach)
      : row_bytes_(q.size(2) * q.element_size()) {
    if (!next.tile) return;
    const Tile& t = *next.tile;
    add(q, t.f0 * P, t.f1 * P, next.head);
    add(out, t.f0 * P, t.f1 * P, next.head);
    int64_t lo = reach_lo(reach, t.f0, t.v0);
    const int64_t hi = reach_hi(reach, t.f1 - 1, t.v1);
    if (next.head == head && t.v0 == tile.v0) lo = std::max(lo, reach_hi(reach, tile.f1 - 1, tile.v1));
    if (lo < hi) {
      add(k, lo * P, hi * P, next.head);
      add(v, lo * P, hi * P, next.head);
    }
  }

  void prefetch(int64_t i, int64_t m) const {
    for (int t = 0; t < count_; ++t) {
      const Rows& r = rows_[t];
      for (int64_t row = r.count * i / m; row < r.count * (i + 1) / m; ++row) {
        const char* x = r.begin + row * r.ld;
        for (int64_t j = 0; j < row_bytes_; j += 64) prefetch_line(x + j);
      }
    }
  }

 private:
  struct Rows {
    const char* begin;
    int64_t ld, count;
  };

  void add(const Tensor& t, int64_t token0, int64_t token1, int64_t head) {
    const int64_t size = t.element_size();
    const char* begin = static_cast<const char*>(t.const_data_ptr()) + (token0 * t.stride(0) + head * t.stride(1)) * size;
    rows_[count_++] = Rows{begin, t.stride(0) * size, token1 - token0};
  }

  std::array<Rows, 4> rows_{};
  int count_ = 0;
  int64_t row_bytes_ = 0;
};

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
  // fp32 with d in whole vectors: both GEMMs run on fma_gemm, S = Q K^T against K^T
  // (KeysTransposed), and for one-frame tiles (no mask) S's GEMM also gives each row's max.
  constexpr bool kFmaType = kHaveFmaGemm && std::is_same_v<S, float>;
  const bool use_fma = kFmaType && d % 16 == 0;
  struct State {
    std::vector<T> buf;
    RowReader<S> q, k, v;
    std::optional<KeysTransposed> kt;
  };
  auto make_state = [&] {
    State st{std::vector<T>(max_rows * (kb + d + 2 + kLanes)), RowReader<S>(q_), RowReader<S>(k_), RowReader<S>(v_),
             std::nullopt};
    if constexpr (kFmaType) {
      if (use_fma) st.kt.emplace(k_, scale);
    }
    return st;
  };

  for_each_tile_head(tiles, H, make_state, [&](const Tile& tile, int64_t h, const NextWork& next_work, State& st) {
    const int64_t r0 = tile.f0 * P, m = (tile.f1 - tile.f0) * P, vb = tile.v0 * P;
    T* s = st.buf.data();         // scores / probabilities [m, kb]
    T* o = s + m * kb;            // unnormalised output [m, d]
    T* row_m = o + m * d;         // running max [m]
    T* row_l = row_m + m;         // running sum [m]
    T* lane_max = row_l + m;      // lane-wise max of each row of a chunk [m, kLanes] (fused path)
    std::fill(row_m, row_m + m, -std::numeric_limits<T>::infinity());
    std::fill(row_l, row_l + m, T(0));
    const T* qa = st.q.rows(r0, r0 + m, h, vb);
    const int64_t c_end = reach_hi(reach, tile.f1 - 1, tile.v1) * P;
    const bool fused_max = st.kt && tile.f1 - tile.f0 == 1;
    // While the first chunk's scores are computed, the rows the thread's next tile starts with
    // are brought into the cache, a few after each register block.
    const NextRows next = st.kt ? NextRows(q_, k_, v_, out, tile, h, next_work, P, reach) : NextRows();
    const int64_t c_begin = reach_lo(reach, tile.f0, tile.v0) * P;
    if (c_begin >= c_end) std::fill(o, o + m * d, T(0));  // no key (the first chunk sets o)

    for (int64_t c0 = c_begin; c0 < c_end; c0 += kb) {
      const int64_t n = std::min(kb, c_end - c0);
      const bool first = c0 == c_begin;
      [&] {  // s = scale Q K^T
        if constexpr (kFmaType) {
          if (st.kt) {
            if (fused_max) std::fill(lane_max, lane_max + m * kLanes, -std::numeric_limits<T>::infinity());
            const float* kt = st.kt->columns(c0, c0 + n, h, vb, tile.v1 * P);  // before ld(), which it may change
            return fma_gemm(m, n, d, qa, st.q.ld(), kt, st.kt->ld(), s, n, false, fused_max ? lane_max : nullptr,
                            [&](int64_t b, int64_t count) {
                              if (first) next.prefetch(b, count);
                            });
          }
        }
        gemm_nt<T>(m, n, d, scale, qa, st.q.ld(), st.k.rows(c0, c0 + n, h, vb), st.k.ld(), T(0), s, n);
      }();
      mask_scores(s, n, tile, reach, P, c0);
      for (int64_t i = 0; i < m; ++i) {
        T* row = s + i * n;
        const T chunk_max = fused_max ? row_max(lane_max + i * kLanes, kLanes) : row_max(row, n);
        const T factor = online_softmax_update(row_m[i], chunk_max);
        row_l[i] = row_l[i] * factor + exp_shift_sum(row, n, softmax_shift(row_m[i]));
        if (factor != T(1) && !first) {
          for (int64_t j = 0; j < d; ++j) o[i * d + j] *= factor;
        }
      }
      [&] {  // o = P V on the first chunk, o += P V after
        if constexpr (kFmaType) {
          if (st.kt) return fma_gemm(m, d, n, s, n, st.v.rows(c0, c0 + n, h, vb), st.v.ld(), o, d, !first);
        }
        gemm_nn<T>(m, d, n, T(1), s, n, st.v.rows(c0, c0 + n, h, vb), st.v.ld(), first ? T(0) : T(1), o, d);
      }();
    }
    for (int64_t i = 0; i < m; ++i) {
      store_rows(o + i * d, 1, d, row_l[i] > 0 ? T(1) / row_l[i] : T(0), out_p + (r0 + i) * H * d + h * d, H * d);
    }
    softmax_lse_rows(row_m, row_l, m, lse_p + h * T_ + r0);
  });
}

// The backend for attention on these inputs: bf16 with one-frame tiles (frames of more than
// kTileRows / 2 tokens) and d a multiple of 16 (the dot-product kernel covers d in whole
// vectors); otherwise none, and the kernels convert rows to fp32.
std::optional<Bf16Gemm> bf16_gemm_for(const Tensor& q, int64_t tokens_per_frame) {
  if (q.scalar_type() != at::kBFloat16 || tokens_per_frame <= kTileRows / 2 || q.size(2) % 16 != 0) return std::nullopt;
  return bf16_gemm();
}

// p = bf16(exp(scale * s - shift)) for the n scores s of a row (p feeds the bf16 P V GEMM,
// rounded as flash attention rounds it), and p = 0 up to the next multiple of 16: the caller
// gives that room. Returns the sum of the unrounded exponentials.
float exp_to_bf16_sum(const float* s, int64_t n, float scale, float shift, at::BFloat16* p) {
  using Vec = at::vec::Vectorized<float>;
  static_assert(Vec::size() == 16 || Vec::size() == 8, "16 must be a multiple of the vector width");
  Vec acc(0.f);
  for (int64_t j = 0; j < n; j += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), n - j);
    const Vec x = count == Vec::size() ? Vec::loadu(s + j) : Vec::loadu(s + j, count);
    Vec e = at::vec::fmadd(x, Vec(scale), Vec(-shift)).exp_u20();
    if (count < Vec::size()) e = Vec::set(Vec(0.f), e, count);
    acc += e;
    store_rounded(p + j, e);
  }
  for (int64_t j = (n + Vec::size() - 1) / Vec::size() * Vec::size(); j < (n + 15) / 16 * 16; j += Vec::size()) {
    store_rounded(p + j, Vec(0.f));
  }
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
}

// dst[j] = bf16(alpha * src[j]) for j < n.
void store_scaled_bf16(const float* src, int64_t n, float alpha, at::BFloat16* dst) {
  using Vec = at::vec::Vectorized<float>;
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) store_rounded(dst + j, Vec::loadu(src + j) * Vec(alpha));
  for (; j < n; ++j) dst[j] = at::BFloat16(alpha * src[j]);
}

// K^T and V of every (frame, head) are packed once (O(T) memory, frames padded to Pp tokens,
// a multiple of 16); then per one-frame tile and key frame, S = Q K^T and O += P V are bf16
// GEMMs with fp32 accumulation (P rounded to bf16, as flash attention does). Only the first P
// score columns of each key frame are read; P V runs over kv >= P rows of the padded V (the
// dot-product kernel needs an even count, AMX all Pp), with zero probabilities past P.
void forward_bf16_packed(const Bf16Gemm& gemm, const Tensor& q_, const Tensor& k_, const Tensor& v_,
                         const std::vector<Tile>& tiles, int64_t P, FrameReach reach, double scale_, Tensor& out,
                         Tensor& lse) {
  using S = at::BFloat16;
  using Vec = at::vec::Vectorized<float>;
  const int64_t T_ = q_.size(0), H = q_.size(1), d = q_.size(2), frames = T_ / P;
  const int64_t Pp = (P + 15) / 16 * 16, kv = gemm.amx ? Pp : (P + 1) / 2 * 2;
  const int64_t block = Bf16Gemm::packed_size(d, Pp);  // elements of one packed (frame, head) matrix
  // Uninitialised: packing writes every element, padding included.
  std::unique_ptr<S[]> k_packed(new S[frames * H * block]), v_packed(new S[frames * H * block]);
  const S* k = k_.const_data_ptr<S>();
  const S* v = v_.const_data_ptr<S>();
  at::parallel_for(0, frames * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t g = w / H, h = w % H;
      gemm.pack_transposed(k + g * P * k_.stride(0) + h * k_.stride(1), k_.stride(0), P, Pp, d,
                           k_packed.get() + w * block);  // K^T [d, Pp]
      gemm.pack(v + g * P * v_.stride(0) + h * v_.stride(1), v_.stride(0), P, Pp, d,
                v_packed.get() + w * block);  // V [Pp, d]
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
          gemm.run(m, Pp, d, qa, q_.stride(0), k_packed.get() + (g * H + h) * block, s + (g - g0) * Pp, n, false);
        }
        for (int64_t i = 0; i < m; ++i) {
          const float* row = s + i * n;
          S* p_row = p_bf16.data() + i * n;
          float chunk_max = -std::numeric_limits<float>::infinity();
          for (int64_t f = 0; f < nf; ++f) {
            chunk_max = std::max(chunk_max, at::vec::map_reduce_all<float>(
                [scale](Vec x) { return x * Vec(scale); }, [](Vec a, Vec b) { return at::vec::maximum(a, b); },
                row + f * Pp, P));
          }
          const float factor = online_softmax_update(row_m[i], chunk_max);
          const float shift = softmax_shift(row_m[i]);
          float sum = 0.f;
          for (int64_t f = 0; f < nf; ++f) sum += exp_to_bf16_sum(row + f * Pp, P, scale, shift, p_row + f * Pp);
          row_l[i] = row_l[i] * factor + sum;
          if (factor != 1.f) at::vec::map<float>([factor](Vec x) { return x * Vec(factor); }, o + i * d, o + i * d, d);
        }
        for (int64_t g = g0; g < g0 + nf; ++g) {
          gemm.run(m, d, kv, p_bf16.data() + (g - g0) * Pp, n, v_packed.get() + (g * H + h) * block, o, d, true);
        }
      }
      for (int64_t i = 0; i < m; ++i) {
        store_scaled_bf16(o + i * d, d, row_l[i] > 0 ? 1.f / row_l[i] : 0.f, out_p + (r0 + i) * H * d + h * d);
      }
      softmax_lse_rows(row_m, row_l, m, lse_p + h * T_ + r0);
    }
    gemm.release();
  });
}

// sum_j exp(scale * s_j - lse) * dp_j over the n entries of a row.
float exp_dot(const float* s, const float* dp, int64_t n, float scale, float lse) {
  using Vec = at::vec::Vectorized<float>;
  Vec acc(0.f);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    acc = at::vec::fmadd(at::vec::fmadd(Vec::loadu(s + j), Vec(scale), Vec(-lse)).exp_u20(), Vec::loadu(dp + j), acc);
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; j < n; ++j) sum += fc_exp(s[j] * scale - lse) * dp[j];
  return sum;
}

// The softmax delta of the bf16 backward, delta_i = sum_j P_ij dP_ij - grad_lse_i for every query
// row ([H, T] fp32), with S = Q K^T and dP = dO V^T as bf16 GEMMs on K^T and V^T packed once and
// P = exp(scale S - lse). The products of bf16 values are exact in fp32, so this gives the values
// of backward_kernel's own delta sweep (fp32 GEMMs on the converted rows) up to summation order.
// One-frame tiles, as in forward_bf16_packed.
Tensor softmax_delta_bf16_packed(const Bf16Gemm& gemm, const Tensor& grad_out_, const Tensor& q_, const Tensor& k_,
                                 const Tensor& v_, const Tensor& lse_, const Tensor& grad_lse_,
                                 const std::vector<Tile>& tiles, int64_t P, FrameReach reach, double scale_) {
  using S = at::BFloat16;
  const int64_t T_ = q_.size(0), H = q_.size(1), d = q_.size(2), frames = T_ / P;
  const int64_t Pp = (P + 15) / 16 * 16;
  const int64_t block = Bf16Gemm::packed_size(d, Pp);
  std::unique_ptr<S[]> k_packed(new S[frames * H * block]), v_packed(new S[frames * H * block]);
  at::parallel_for(0, frames * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t g = w / H, h = w % H;
      for (auto [t, packed] : {std::pair{&k_, k_packed.get()}, std::pair{&v_, v_packed.get()}}) {
        gemm.pack_transposed(t->const_data_ptr<S>() + g * P * t->stride(0) + h * t->stride(1), t->stride(0), P, Pp, d,
                             packed + w * block);  // K^T, V^T [d, Pp]
      }
    }
  });

  const int64_t fc = std::max<int64_t>(1, chunk_cols(P) / Pp);  // key frames per chunk
  const float scale = static_cast<float>(scale_);
  const S* q = q_.const_data_ptr<S>();
  const S* go = grad_out_.const_data_ptr<S>();
  const float* lse = lse_.const_data_ptr<float>();
  const float* grad_lse = grad_lse_.defined() ? grad_lse_.const_data_ptr<float>() : nullptr;
  Tensor delta = at::empty({H, T_}, lse_.options());
  float* delta_p = delta.data_ptr<float>();
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());
  at::parallel_for(0, n_tiles * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(2 * P * fc * Pp);
    for (int64_t w = begin; w < end; ++w) {
      const Tile& tile = tiles[w % n_tiles];
      const int64_t h = w / n_tiles, r0 = tile.f0 * P, m = P;
      float* s = buf.data();
      float* dp = s + m * fc * Pp;
      const S* qa = q + r0 * q_.stride(0) + h * q_.stride(1);
      const S* goa = go + r0 * grad_out_.stride(0) + h * grad_out_.stride(1);
      float* out = delta_p + h * T_ + r0;
      for (int64_t i = 0; i < m; ++i) out[i] = grad_lse != nullptr ? -grad_lse[h * T_ + r0 + i] : 0.f;
      const int64_t g_end = reach_hi(reach, tile.f0, tile.v1);
      for (int64_t g0 = reach_lo(reach, tile.f0, tile.v0); g0 < g_end; g0 += fc) {
        const int64_t nf = std::min(fc, g_end - g0), n = nf * Pp;
        for (int64_t g = g0; g < g0 + nf; ++g) {
          const int64_t packed = (g * H + h) * block, col = (g - g0) * Pp;
          gemm.run(m, Pp, d, qa, q_.stride(0), k_packed.get() + packed, s + col, n, false);
          gemm.run(m, Pp, d, goa, grad_out_.stride(0), v_packed.get() + packed, dp + col, n, false);
        }
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t f = 0; f < nf; ++f) {
            out[i] += exp_dot(s + i * n + f * Pp, dp + i * n + f * Pp, P, scale, lse[h * T_ + r0 + i]);
          }
        }
      }
    }
    gemm.release();
  });
  return delta;
}

std::tuple<Tensor, Tensor> local_frame_attention_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                     const Tensor& cu_seqlens, int64_t tokens_per_frame,
                                                     int64_t window, bool causal, double scale) {
  const Tensor cu = check_attention_inputs(q, k, v, cu_seqlens, tokens_per_frame, window);
  Tensor out = empty_tokens(q);
  Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (q.numel() > 0) {
    const auto tiles = frame_tiles(cu.data_ptr<int64_t>(), cu.numel() - 1, tokens_per_frame);
    const auto gemm = bf16_gemm_for(q, tokens_per_frame);
    if (gemm) {
      forward_bf16_packed(*gemm, rows_view(q), rows_view(k), rows_view(v), tiles, tokens_per_frame,
                          query_reach(window, causal), scale, out, lse);
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
// first sweep over the queries (two more GEMMs per chunk), or given as `delta_` ([H, T], from
// softmax_delta_bf16_packed). With scores_gemm (bf16 only), the two GEMMs whose inputs are all
// bf16, S^T = K Q^T and dP^T = V dO^T, run on bf16 dot products (exact products, fp32 sums).
template <typename S>
void backward_kernel(const Tensor& grad_out_, const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& out_,
                     const Tensor& lse_, const Tensor& grad_lse_, const int64_t* cu, int64_t num_videos,
                     const std::vector<Tile>& tiles, int64_t P, int64_t window, bool causal, double scale_,
                     const Tensor& delta_, const std::optional<Bf16Gemm>& scores_gemm, Tensor& dq, Tensor& dk,
                     Tensor& dv) {
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
    std::vector<S> q_t, go_t;  // scores_gemm: Q^T and dO^T of the current (video, head), packed
  };
  auto make_state = [&] {
    return State{std::vector<T>(max_rows * (2 * kb + 2 * d)), {}, {}, RowReader<S>(q_), RowReader<S>(k_),
                 RowReader<S>(v_), RowReader<S>(grad_out_), {}, {}};
  };
  // Row r of `head` of a [T, H, d] tensor, in place.
  auto row = [](const Tensor& t, int64_t r, int64_t head) {
    return t.const_data_ptr<S>() + r * t.stride(0) + head * t.stride(1);
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
    if (delta_.defined()) {
      const T* given = delta_.const_data_ptr<T>() + h * T_ + vb;
      std::copy(given, given + vt, st.delta.begin());
    } else if (out_.defined()) {
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

    // scores_gemm (bf16): S^T = K Q^T and dP^T = V dO^T, whose inputs are bf16 already, run on
    // bf16 dot products against Q^T and dO^T packed once per (video, head); columns padded so
    // that a window ending at the video's last token may read whole vectors.
    const int64_t width = (vt + 15) / 16 * 16 + 16;
    if constexpr (std::is_same_v<S, at::BFloat16>) {
      if (scores_gemm) {
        st.q_t.resize(Bf16Gemm::packed_size(d, width));
        st.go_t.resize(Bf16Gemm::packed_size(d, width));
        scores_gemm->pack_transposed(row(q_, vb, h), q_.stride(0), vt, width, d, st.q_t.data());
        scores_gemm->pack_transposed(row(grad_out_, vb, h), grad_out_.stride(0), vt, width, d, st.go_t.data());
      }
    }

    for (int64_t t = first_tile[b]; t < first_tile[b + 1]; ++t) {
      const Tile& tile = tiles[t];
      const int64_t r0 = tile.f0 * P, m = (tile.f1 - tile.f0) * P;
      std::fill(dk_acc, dk_acc + m * d, T(0));
      std::fill(dv_acc, dv_acc + m * d, T(0));
      const T* ka = st.k.rows(r0, r0 + m, h, vb);
      const T* va = scores_gemm ? nullptr : st.v.rows(r0, r0 + m, h, vb);
      const int64_t c_end = reach_hi(kr, tile.f1 - 1, tile.v1) * P;
      for (int64_t c0 = reach_lo(kr, tile.f0, tile.v0) * P; c0 < c_end; c0 += kb) {
        const int64_t n = std::min(kb, c_end - c0);
        const T* lse_c = lse + h * T_ + c0;
        const T* qa = st.q.rows(c0, c0 + n, h, vb);
        const T* goa = st.go.rows(c0, c0 + n, h, vb);
        if constexpr (std::is_same_v<S, at::BFloat16>) {
          if (scores_gemm) {
            scores_gemm->run_window(m, n, d, row(k_, r0, h), k_.stride(0), st.q_t.data(), width, c0 - vb, s, n);
            at::vec::map<T>([scale](Vec x) { return x * Vec(scale); }, s, s, m * n);
            scores_gemm->run_window(m, n, d, row(v_, r0, h), v_.stride(0), st.go_t.data(), width, c0 - vb, dp, n);
          }
        }
        if (!scores_gemm) gemm_nt<T>(m, n, d, scale, ka, st.k.ld(), qa, st.q.ld(), T(0), s, n);
        mask_scores(s, n, tile, kr, P, c0);
        for (int64_t i = 0; i < m; ++i) {
          at::vec::map2<T>([](Vec x, Vec l) { return (x - l).exp_u20(); }, s + i * n, s + i * n, lse_c, n);
        }
        gemm_nn<T>(m, d, n, T(1), s, n, goa, st.go.ld(), T(1), dv_acc, d);
        if (!scores_gemm) gemm_nt<T>(m, n, d, T(1), va, st.v.ld(), goa, st.go.ld(), T(0), dp, n);
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
    const Tensor lse_c = lse.contiguous();
    const Tensor grad_lse_c = grad_lse.has_value() ? grad_lse->contiguous() : Tensor();
    // bf16 without an exact `out`: the delta sweep on bf16 GEMMs where the forward uses them.
    Tensor delta;
    const auto gemm = bf16_gemm_for(q, tokens_per_frame);
    if (gemm && !out.has_value()) {
      delta = softmax_delta_bf16_packed(*gemm, rows_view(grad_out), rows_view(q), rows_view(k), rows_view(v), lse_c,
                                        grad_lse_c, tiles, tokens_per_frame, query_reach(window, causal), scale);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "local_frame_attention_backward_cpu", [&] {
      backward_kernel<scalar_t>(rows_view(grad_out), rows_view(q), rows_view(k), rows_view(v),
                                out.has_value() ? rows_view(*out) : Tensor(), lse_c, grad_lse_c,
                                cu.data_ptr<int64_t>(), cu.numel() - 1, tiles, tokens_per_frame, window, causal, scale,
                                delta, gemm && !gemm->amx ? gemm : std::nullopt, dq, dk, dv);
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
