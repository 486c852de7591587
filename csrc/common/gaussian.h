// Box-Muller from two Philox words, written with nothing but IEEE-754 + - * / (each correctly
// rounded on every CPU and GPU) and exact bit manipulation, in a fixed order, so the CPU kernel,
// the CUDA kernel and the pure-PyTorch reference (flowception_ext/ops/reference.py, which repeats
// these steps op for op) produce the same bits. Library log/sin/cos/sqrt are not used: they differ
// by an ulp or two between Sleef, glibc, MKL and CUDA's libdevice (torch's CPU sqrt goes through
// MKL VML, which is not correctly rounded).
//
// T is the compute type: double for float64 output, float for float32/bf16/fp16 (rounded from
// float), with polynomial degrees chosen for that type's precision.
//
// The compiler must not fuse a*b + c into an FMA (a different rounding): device code uses the
// _rn intrinsics, which are never contracted; the host file is built with -ffp-contract=off.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/macros.h"

namespace flowception {
namespace gaussian_detail {

// Per compute type: Taylor coefficients of sin and cos on [-π/4, π/4], of 2 atanh(s)/s on
// |s| <= 3 - 2√2, a quadratic guess of sqrt on [1, 4] (1.1%), ln 2 = hi + lo with k·hi exact
// for |k| <= 33, and 2π / 2^32 (one Philox step of the angle).
// Polynomial coefficients, lowest degree first. Returned by constexpr functions rather than held
// in static arrays, which device code could not read.
template <typename T, int N>
struct Poly {
  T c[N];
};

template <typename T>
struct Constants;

template <>
struct Constants<double> {
  using Bits = uint64_t;
  using Int = int64_t;  // same width as T, so vectorised lanes line up
  static constexpr int kMantissaBits = 52, kBias = 1023;
  // sin x = x + x z (S0 + z (S1 + ...)), z = x^2; S = -1/3!, 1/5!, ...
  FC_HOST_DEVICE static constexpr Poly<double, 9> sin_poly() {
    return {{-0x1.5555555555555p-3, 0x1.1111111111111p-7, -0x1.a01a01a01a01ap-13, 0x1.71de3a556c734p-19,
             -0x1.ae64567f544e4p-26, 0x1.6124613a86d09p-33, -0x1.ae7f3e733b81fp-41, 0x1.952c77030ad4ap-49,
             -0x1.2f49b46814157p-57}};
  }
  // cos x = (1 - z/2) + z^2 (C0 + z (C1 + ...)); C = 1/4!, -1/6!, ...
  FC_HOST_DEVICE static constexpr Poly<double, 8> cos_poly() {
    return {{0x1.5555555555555p-5, -0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-16, -0x1.27e4fb7789f5cp-22,
             0x1.1eed8eff8d898p-29, -0x1.93974a8c07c9dp-37, 0x1.ae7f3e733b81fp-45, -0x1.6827863b97d97p-53}};
  }
  // ln m = 2 atanh s = t + t z (A0 + z (A1 + ...)), t = 2s, z = s^2; A = 1/3, 1/5, ...
  FC_HOST_DEVICE static constexpr Poly<double, 11> atanh_poly() {
    return {{0x1.5555555555555p-2, 0x1.999999999999ap-3, 0x1.2492492492492p-3, 0x1.c71c71c71c71cp-4,
             0x1.745d1745d1746p-4, 0x1.3b13b13b13b14p-4, 0x1.1111111111111p-4, 0x1.e1e1e1e1e1e1ep-5,
             0x1.af286bca1af28p-5, 0x1.8618618618618p-5, 0x1.642c8590b2164p-5}};
  }
  FC_HOST_DEVICE static constexpr Poly<double, 3> sqrt_fit() { return {{0.53495, 0.513005, -0.037415}}; }
  static constexpr int kNewtonSteps = 3;  // 1.1% -> 6e-5 -> 2e-9 -> 1e-18
  static constexpr double kLn2Hi = 0x1.62e42fee00000p-1, kLn2Lo = 0x1.a39ef35793c76p-33;
  static constexpr double kSqrt2 = 0x1.6a09e667f3bcdp+0;
  static constexpr double kPiOver2Pow31 = 0x1.921fb54442d18p-30;
};

template <>
struct Constants<float> {
  using Bits = uint32_t;
  using Int = int32_t;
  static constexpr int kMantissaBits = 23, kBias = 127;
  FC_HOST_DEVICE static constexpr Poly<float, 5> sin_poly() {
    return {{-0x1.555556p-3f, 0x1.111112p-7f, -0x1.a01a02p-13f, 0x1.71de3ap-19f, -0x1.ae6456p-26f}};
  }
  FC_HOST_DEVICE static constexpr Poly<float, 5> cos_poly() {
    return {{0x1.555556p-5f, -0x1.6c16c2p-10f, 0x1.a01a02p-16f, -0x1.27e4fcp-22f, 0x1.1eed8ep-29f}};
  }
  FC_HOST_DEVICE static constexpr Poly<float, 5> atanh_poly() {
    return {{0x1.555556p-2f, 0x1.99999ap-3f, 0x1.24924ap-3f, 0x1.c71c72p-4f, 0x1.745d18p-4f}};
  }
  FC_HOST_DEVICE static constexpr Poly<float, 3> sqrt_fit() { return {{0x1.11e4f8p-1f, 0x1.06a898p-1f, -0x1.3280f2p-5f}}; }
  static constexpr int kNewtonSteps = 2;  // 1.1% -> 6e-5 -> 2e-9
  static constexpr float kLn2Hi = 0x1.62e4p-1f, kLn2Lo = 0x1.7f7d1cp-20f;
  static constexpr float kSqrt2 = 0x1.6a09e6p+0f;
  static constexpr float kPiOver2Pow31 = 0x1.921fb6p-30f;
};

// a * b and a + b, each rounded on its own (never fused into an FMA).
template <typename T>
FC_HOST_DEVICE T mul(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, double>) return __dmul_rn(a, b);
  else return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
template <typename T>
FC_HOST_DEVICE T add(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, double>) return __dadd_rn(a, b);
  else return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

template <typename T, int N>
FC_HOST_DEVICE T horner(const Poly<T, N>& poly, T z) {
  T p = poly.c[N - 1];
  for (int i = N - 2; i >= 0; --i) p = add(mul(p, z), poly.c[i]);
  return p;
}

template <typename T, typename Bits = typename Constants<T>::Bits>
FC_HOST_DEVICE Bits bits_of(T x) {
  Bits u;
  memcpy(&u, &x, sizeof u);
  return u;
}
template <typename T, typename Bits = typename Constants<T>::Bits>
FC_HOST_DEVICE T value_of(Bits u) {
  T x;
  memcpy(&x, &u, sizeof x);
  return x;
}

// x = 2^e m with m in [1, 2), for finite x > 0.
template <typename T, typename Int = typename Constants<T>::Int>
FC_HOST_DEVICE T split_exponent(T x, Int& e) {
  using C = Constants<T>;
  using Bits = typename C::Bits;
  const Bits bits = bits_of(x);
  e = static_cast<Int>(bits >> C::kMantissaBits) - C::kBias;
  const Bits mantissa = bits & ((Bits{1} << C::kMantissaBits) - 1);
  return value_of<T>(mantissa | (static_cast<Bits>(C::kBias) << C::kMantissaBits));
}

// 2^e for a normal exponent e.
template <typename T, typename Int = typename Constants<T>::Int>
FC_HOST_DEVICE T pow2(Int e) {
  using C = Constants<T>;
  return value_of<T>(static_cast<typename C::Bits>(e + C::kBias) << C::kMantissaBits);
}

}  // namespace gaussian_detail

// ln u1 for u1 = (a + 1) / 2^32 in (0, 1]: with a + 1 = 2^E m, m in [√½, √2],
// ln u1 = (E - 32) ln 2 + 2 atanh(s), s = (a + 1 - 2^E) / (a + 1 + 2^E). The numerator is taken
// in exact 32-bit integer arithmetic (|a + 1 - 2^E| < 2^31) so ln u1 keeps its relative precision
// even when u1 is within a few ulp of 1 in float. Written without branches so CPU loops vectorise.
template <typename T>
FC_HOST_DEVICE T log_uniform(uint32_t a) {
  using namespace gaussian_detail;
  using C = Constants<T>;
  const T n = add(static_cast<T>(a), T(1));  // exact in double, within an ulp in float
  typename C::Int e;
  const T m = split_exponent(n, e);
  e += m > C::kSqrt2;
  const uint32_t p = e >= 32 ? 0u : (uint32_t{1} << e);  // 2^E mod 2^32
  const T num = static_cast<T>(static_cast<int32_t>(a + 1u - p));  // wraps back to a + 1 - 2^E
  const T s = num / add(n, pow2<T>(e));
  const T z = mul(s, s), t = add(s, s);
  const T ln_m = add(t, mul(t, mul(z, horner(C::atanh_poly(), z))));
  const T k = static_cast<T>(e - 32);
  return add(mul(k, C::kLn2Hi), add(mul(k, C::kLn2Lo), ln_m));
}

// sqrt v for v >= 0: v = 2^e m with e even and m in [1, 4), a quadratic guess of sqrt m refined
// by Newton steps, times 2^(e/2).
template <typename T>
FC_HOST_DEVICE T sqrt_newton(T v) {
  using namespace gaussian_detail;
  using C = Constants<T>;
  typename C::Int e;
  T m = split_exponent(v, e);
  const bool odd = (e & 1) != 0;
  m = odd ? mul(m, T(2)) : m;
  e -= odd;
  T y = horner(C::sqrt_fit(), m);
  for (int i = 0; i < C::kNewtonSteps; ++i) y = mul(T(0.5), add(y, m / y));
  return v == T(0) ? T(0) : mul(y, pow2<T>(e / 2));
}

// sin and cos of θ = 2π b / 2^32. The reduction is exact on the integer: b = q 2^30 + f with
// q the nearest quadrant and |f| <= 2^29, so θ = q π/2 + x with x = f 2π/2^32 in [-π/4, π/4].
template <typename T>
FC_HOST_DEVICE void sincos_turn(uint32_t b, T& sin_theta, T& cos_theta) {
  using namespace gaussian_detail;
  using C = Constants<T>;
  // in 32-bit arithmetic b + 2^29 wraps for the last half quadrant: q = 0, f = b - 2^32 < 0
  const uint32_t q = (b + (uint32_t{1} << 29)) >> 30;
  const T x = mul(static_cast<T>(static_cast<int32_t>(b - (q << 30))), C::kPiOver2Pow31);
  const T z = mul(x, x);
  const T s = add(x, mul(mul(x, z), horner(C::sin_poly(), z)));
  const T c = add(add(T(1), mul(T(-0.5), z)), mul(mul(z, z), horner(C::cos_poly(), z)));
  // quadrant q: (sin, cos) = (s, c), (c, -s), (-s, -c), (-c, s)
  const bool swap = (q & 1) != 0;
  sin_theta = mul(swap ? c : s, (q & 2) ? T(-1) : T(1));
  cos_theta = mul(swap ? s : c, ((q + 1) & 2) ? T(-1) : T(1));
}

// Box-Muller on the word pair (a, b): z0 = r cos θ, z1 = r sin θ with r = sqrt(-2 ln u1).
template <typename T>
FC_HOST_DEVICE void box_muller(uint32_t a, uint32_t b, T& z0, T& z1) {
  using namespace gaussian_detail;
  const T r = sqrt_newton(mul(T(-2), log_uniform<T>(a)));
  T sin_theta, cos_theta;
  sincos_turn(b, sin_theta, cos_theta);
  z0 = mul(r, cos_theta);
  z1 = mul(r, sin_theta);
}

// float64 output is computed in double, every other dtype in float and rounded from it.
template <typename scalar_t>
using gaussian_compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace flowception
