// Counter-based noise: Philox4x32-10 (Salmon et al., SC'11) + Box-Muller in double.
// Keyed by (seed, output row), counter = (block of 4 elements in the row, row), so the
// value of every element depends only on (seed, row, element) — not on thread count,
// tiling or device. python `flowception_ext.ops.reference` reproduces the integer stream.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace flowception {

struct Philox4 {
  uint32_t x[4];
};

FC_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Ten rounds of Philox4x32 on `ctr` with key (k0, k1).
FC_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, c0, hi0, lo0);
    philox_mulhilo(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += kW0; k1 += kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four raw words that feed elements [4*block, 4*block+4) of output row `row`.
FC_HOST_DEVICE Philox4 noise_words(uint64_t seed, uint64_t row, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                       static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Words -> uniforms: u1 in (0, 1] (safe for log), u2 in [0, 1).
FC_HOST_DEVICE double uniform_open0(uint32_t w) { return (static_cast<double>(w) + 1.0) * 0x1p-32; }
FC_HOST_DEVICE double uniform_open1(uint32_t w) { return static_cast<double>(w) * 0x1p-32; }

// Box-Muller on the word pair (a, b): (r cos θ, r sin θ), r = sqrt(-2 ln u1), θ = 2π u2.
FC_HOST_DEVICE void box_muller(uint32_t a, uint32_t b, double& z0, double& z1) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const double r = sqrt(-2.0 * log(uniform_open0(a)));
  const double theta = kTwoPi * uniform_open1(b);
  z0 = r * cos(theta);
  z1 = r * sin(theta);
}

// Pair `p` of row `row` gives elements 2p and 2p+1: words (x0, x1) of block p/2 for even p,
// (x2, x3) for odd p.
FC_HOST_DEVICE void gaussian_pair_at(uint64_t seed, uint64_t row, uint64_t p, double& z0, double& z1) {
  const Philox4 w = noise_words(seed, row, p >> 1);
  if ((p & 1) == 0) box_muller(w.x[0], w.x[1], z0, z1);
  else box_muller(w.x[2], w.x[3], z0, z1);
}

// Element `e` of row `row`: words (x0, x1) give elements 4b, 4b+1; (x2, x3) give 4b+2, 4b+3.
FC_HOST_DEVICE double gaussian_at(uint64_t seed, uint64_t row, uint64_t e) {
  double z0, z1;
  gaussian_pair_at(seed, row, e >> 1, z0, z1);
  return (e & 1) ? z1 : z0;
}

}  // namespace flowception
