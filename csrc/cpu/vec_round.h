// Rounding fp32 vectors to bf16/fp16 on store, for the CPU kernels. With AVX512-BF16 (the CMake
// AUTO build adds -mavx512bf16 when the build machine has it) bf16 takes one native
// round-to-nearest-even instruction instead of at::vec's integer emulation of it.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace flowception {

// dst[0, W) = T(v), W = Vectorized<float>::size(); T is bf16 or fp16.
template <typename T>
inline void store_rounded(T* dst, const at::vec::Vectorized<float>& v) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(v));
    return;
  }
#endif
  at::vec::convert_from_float<T>(v, v).store(dst, at::vec::Vectorized<float>::size());
}

// dst[0, 2 W) = T(lo), T(hi): at::vec rounds two vectors at once, so pairs halve its work.
template <typename T>
inline void store_rounded_pair(T* dst, const at::vec::Vectorized<float>& lo, const at::vec::Vectorized<float>& hi) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    return;
  }
#endif
  at::vec::convert_from_float<T>(lo, hi).store(dst);
}

}  // namespace flowception
