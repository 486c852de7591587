// Counter-based noise: Philox4x32-10 (Salmon et al., SC'11) + Box-Muller in double (gaussian.h).
// Keyed by (seed, output row), counter = (block of 4 elements in the row, row), so the
// value of every element depends only on (seed, row, element) — not on thread count,
// tiling or device. python `flowception_ext.ops.reference` reproduces the integer stream.
#pragma once
#include <cstdint>

#include "common/gaussian.h"
#include "common/macros.h"

namespace flowception {

struct Philox4 {
  uint32_t x[4];
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;

// One Philox4x32 round on the counter (c0, c1, c2, c3) with round key (k0, k1).
FC_HOST_DEVICE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0, n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c0 = n0; c1 = static_cast<uint32_t>(p1); c2 = n2; c3 = static_cast<uint32_t>(p0);
}

// The key schedule: (k0, k1) of the next round.
FC_HOST_DEVICE void philox_bump_key(uint32_t& k0, uint32_t& k1) {
  k0 += 0x9E3779B9u;
  k1 += 0xBB67AE85u;
}

// Ten rounds of Philox4x32 on `ctr` with key (k0, k1).
FC_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    philox_round(c0, c1, c2, c3, k0, k1);
    philox_bump_key(k0, k1);
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four raw words that feed elements [4*block, 4*block+4) of output row `row`.
FC_HOST_DEVICE Philox4 noise_words(uint64_t seed, uint64_t row, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                       static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Pair `p` of row `row` gives elements 2p and 2p+1: words (x0, x1) of block p/2 for even p,
// (x2, x3) for odd p.
template <typename T>
FC_HOST_DEVICE void gaussian_pair_at(uint64_t seed, uint64_t row, uint64_t p, T& z0, T& z1) {
  const Philox4 w = noise_words(seed, row, p >> 1);
  if ((p & 1) == 0) box_muller<T>(w.x[0], w.x[1], z0, z1);
  else box_muller<T>(w.x[2], w.x[3], z0, z1);
}

}  // namespace flowception
