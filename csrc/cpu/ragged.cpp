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
#include "ragged_plan.h"
#include "common/philox.h"

namespace flowception {
namespace {

using at::Tensor;

template <typename scalar_t>
inline scalar_t to_out(double z) {
  // Half types round through float, as torch's double -> half conversion does.
  if constexpr (std::is_same_v<scalar_t, double> || std::is_same_v<scalar_t, float>) {
    return static_cast<scalar_t>(z);
  } else {
    return static_cast<scalar_t>(static_cast<float>(z));
  }
}

// Philox words of kLanes consecutive blocks of one row, side by side (w[i][lane] = word i): the
// compiler vectorises the lane loops (8 products per instruction with AVX-512), which made the
// noise ~1.7x faster than one block at a time.
constexpr int64_t kLanes = 16;

void philox_lanes(uint64_t seed, uint64_t row, uint64_t block0, uint32_t (&w)[4][kLanes]) {
  for (int64_t i = 0; i < kLanes; ++i) {
    const uint64_t block = block0 + i;
    w[0][i] = static_cast<uint32_t>(block);
    w[1][i] = static_cast<uint32_t>(block >> 32);
    w[2][i] = static_cast<uint32_t>(row);
    w[3][i] = static_cast<uint32_t>(row >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int64_t i = 0; i < kLanes; ++i) philox_round(w[0][i], w[1][i], w[2][i], w[3][i], k0, k1);
    philox_bump_key(k0, k1);
  }
}

// sin and cos of whole vectors: one Sleef call computes both for little more than one of them.
inline void sincos(const at::vec::Vectorized<double>& x, at::vec::Vectorized<double>& s,
                   at::vec::Vectorized<double>& c) {
#if defined(CPU_CAPABILITY_AVX512)
  const Sleef___m512d_2 sc = Sleef_sincosd8_u10(x);
#elif defined(CPU_CAPABILITY_AVX2)
  const Sleef___m256d_2 sc = Sleef_sincosd4_u10(x);
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  s = sc.x;
  c = sc.y;
#else
  s = x.sin();
  c = x.cos();
#endif
}

// Fill one output row with the Gaussians of (seed, row), kLanes Philox blocks (4 * kLanes
// elements) at a time: words as above, then Box-Muller on at::vec doubles. The last chunk is
// computed whole and stored in part.
template <typename scalar_t>
void fill_gaussian_row(scalar_t* dst, int64_t numel, uint64_t seed, uint64_t row) {
  using Vec = at::vec::Vectorized<double>;
  constexpr int64_t kPairs = 2 * kLanes;  // block b gives pairs 2b (words 0, 1) and 2b+1 (words 2, 3)
  static_assert(kPairs % Vec::size() == 0);
  alignas(64) uint32_t w[4][kLanes];
  alignas(64) double u1[kPairs], u2[kPairs], z[2 * kPairs];
  for (int64_t e0 = 0; e0 < numel; e0 += 2 * kPairs) {
    philox_lanes(seed, row, static_cast<uint64_t>(e0 / 4), w);
    for (int64_t b = 0; b < kLanes; ++b) {
      u1[2 * b] = uniform_open0(w[0][b]);
      u2[2 * b] = uniform_open1(w[1][b]);
      u1[2 * b + 1] = uniform_open0(w[2][b]);
      u2[2 * b + 1] = uniform_open1(w[3][b]);
    }
    for (int64_t p = 0; p < kPairs; p += Vec::size()) {
      const Vec r = (Vec(-2.0) * Vec::loadu(u1 + p).log()).sqrt();
      const Vec theta = Vec(kTwoPi) * Vec::loadu(u2 + p);
      // pair p gives elements 2p (r cos θ) and 2p + 1 (r sin θ)
      Vec cos_theta, sin_theta;
      sincos(theta, sin_theta, cos_theta);
      const auto [lo, hi] = at::vec::interleave2(r * cos_theta, r * sin_theta);
      lo.store(z + 2 * p);
      hi.store(z + 2 * p + Vec::size());
    }
    const int64_t len = std::min<int64_t>(2 * kPairs, numel - e0);
    for (int64_t i = 0; i < len; ++i) dst[e0 + i] = to_out<scalar_t>(z[i]);
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
