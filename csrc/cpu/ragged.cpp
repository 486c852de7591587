// CPU kernels of ragged_insert / ragged_strip: one parallel pass over output rows, each row
// either a memcpy of its source frame or a row of counter-based Gaussian noise.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "checks.h"
#include "ragged.h"
#include "common/philox.h"

namespace flowception {
namespace {

using at::Tensor;

// Philox words of kLanes consecutive blocks of one row, side by side (w[i][lane] = word i), so
// the rounds run on whole vectors of lanes.
constexpr int64_t kLanes = 32;

#if defined(CPU_CAPABILITY_AVX512)
// One Philox multiply on 16 lanes: (hi, lo) words of a * m. Left to itself the compiler widens
// to 64-bit lanes and uses vpmullq (slow); vpmuludq on the even and the odd lanes is ~2x faster.
inline void mulhilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);                        // 64-bit products, lanes 0, 2, ..
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);  // lanes 1, 3, ..
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
#endif

void philox_lanes(uint64_t seed, uint64_t row, uint64_t block0, uint32_t (&w)[4][kLanes]) {
  for (int64_t i = 0; i < kLanes; ++i) {
    const uint64_t block = block0 + i;
    w[0][i] = static_cast<uint32_t>(block);
    w[1][i] = static_cast<uint32_t>(block >> 32);
    w[2][i] = static_cast<uint32_t>(row);
    w[3][i] = static_cast<uint32_t>(row >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(CPU_CAPABILITY_AVX512)
  static_assert(kLanes % 16 == 0);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0)), m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int64_t v = 0; v < kLanes; v += 16) {
    __m512i c0 = _mm512_loadu_si512(w[0] + v), c1 = _mm512_loadu_si512(w[1] + v);
    __m512i c2 = _mm512_loadu_si512(w[2] + v), c3 = _mm512_loadu_si512(w[3] + v);
    uint32_t r0 = k0, r1 = k1;
    for (int round = 0; round < 10; ++round) {  // philox_round on 16 lanes
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(c0, m0, hi0, lo0);
      mulhilo16(c2, m1, hi1, lo1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(r0)));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(r1)));
      c1 = lo1;
      c3 = lo0;
      philox_bump_key(r0, r1);
    }
    _mm512_storeu_si512(w[0] + v, c0);
    _mm512_storeu_si512(w[1] + v, c1);
    _mm512_storeu_si512(w[2] + v, c2);
    _mm512_storeu_si512(w[3] + v, c3);
  }
#else
  for (int round = 0; round < 10; ++round) {
    for (int64_t i = 0; i < kLanes; ++i) philox_round(w[0][i], w[1][i], w[2][i], w[3][i], k0, k1);
    philox_bump_key(k0, k1);
  }
#endif
}

// Fill one output row with the Gaussians of (seed, row), kLanes Philox blocks (4 * kLanes
// elements) at a time: words as above, then Box-Muller (common/gaussian.h) on each word pair, in
// a branch-free loop the compiler vectorises. The last chunk is computed whole and stored in part.
template <typename scalar_t>
void fill_gaussian_row(scalar_t* dst, int64_t numel, uint64_t seed, uint64_t row) {
  alignas(64) uint32_t w[4][kLanes];
  using T = gaussian_compute_t<scalar_t>;
  alignas(64) T z[4][kLanes];
  for (int64_t e0 = 0; e0 < numel; e0 += 4 * kLanes) {
    philox_lanes(seed, row, static_cast<uint64_t>(e0 / 4), w);
    for (int64_t b = 0; b < kLanes; ++b) box_muller<T>(w[0][b], w[1][b], z[0][b], z[1][b]);
    for (int64_t b = 0; b < kLanes; ++b) box_muller<T>(w[2][b], w[3][b], z[2][b], z[3][b]);
    // block b holds elements 4b .. 4b + 3 = z[0..3][b]
    if (numel - e0 >= 4 * kLanes) {
      for (int64_t b = 0; b < kLanes; ++b) {
        for (int64_t j = 0; j < 4; ++j) dst[e0 + 4 * b + j] = static_cast<scalar_t>(z[j][b]);
      }
    } else {
      for (int64_t i = 0; i < numel - e0; ++i) dst[e0 + i] = static_cast<scalar_t>(z[i % 4][i / 4]);
    }
  }
}

// Rows per task: enough bytes that thread start-up does not dominate.
int64_t row_grain(int64_t row_bytes) { return std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(row_bytes, 1)); }

std::tuple<Tensor, Tensor, Tensor, Tensor> ragged_insert_cpu(const Tensor& frames, const Tensor& cu_seqlens,
                                                             const Tensor& counts, int64_t total_new,
                                                             int64_t seed) {
  const InsertPlan plan = plan_insert(frames, cu_seqlens, counts, total_new);
  const Tensor x = frames.contiguous();
  Tensor out = empty_rows_like(frames, x.size(0) + total_new);
  const int64_t s = row_numel(frames);
  if (s == 0 || out.size(0) == 0) return {out, plan.out_cu_seqlens, plan.src_pos, plan.new_pos};
  // Source of every output row (-1 = new frame), so one parallel pass fills the output.
  std::vector<int64_t> row_src(out.size(0), -1);
  const int64_t* sp = plan.src_pos.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < x.size(0); ++j) row_src[sp[j]] = j;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, frames.scalar_type(), "ragged_insert_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, out.size(0), row_grain(s * sizeof(scalar_t)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (row_src[r] >= 0) {
          std::memcpy(dst + r * s, src + row_src[r] * s, s * sizeof(scalar_t));
        } else {
          fill_gaussian_row(dst + r * s, s, static_cast<uint64_t>(seed), static_cast<uint64_t>(r));
        }
      }
    });
  });
  return {out, plan.out_cu_seqlens, plan.src_pos, plan.new_pos};
}

std::tuple<Tensor, Tensor, Tensor> ragged_strip_cpu(const Tensor& frames, const Tensor& cu_seqlens,
                                                    const Tensor& keep, int64_t total_kept) {
  const StripPlan plan = plan_strip(frames, cu_seqlens, keep, total_kept);
  const Tensor x = frames.contiguous();
  Tensor out = empty_rows_like(frames, total_kept);
  const int64_t s = row_numel(frames);
  if (s == 0 || total_kept == 0) return {out, plan.out_cu_seqlens, plan.src_index};
  const int64_t row_bytes = s * static_cast<int64_t>(x.element_size());
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t* si = plan.src_index.const_data_ptr<int64_t>();
  at::parallel_for(0, total_kept, row_grain(row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) std::memcpy(dst + r * row_bytes, src + si[r] * row_bytes, row_bytes);
  });
  return {out, plan.out_cu_seqlens, plan.src_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(flowception, CPU, m) {
  m.impl("ragged_insert", &ragged_insert_cpu);
  m.impl("ragged_strip", &ragged_strip_cpu);
}

}  // namespace flowception
