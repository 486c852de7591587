// LayerNorm statistics and the per-frame AdaLN element math, shared by the CPU kernels (with
// V = at::vec::Vectorized<acc> for full vectors, V = acc for tails) and the CUDA kernels
// (V = float/double), so both compute the same formulas. Row statistics are a (mean, m2) pair:
// the CUDA kernels build it with Welford updates across a warp, the CPU kernels from sums over
// the row (two passes for fp32, one shifted pass for bf16/fp16: csrc/cpu/adaln.cpp); both then
// use layernorm_rstd.
#pragma once
#include <cmath>

#include "common/macros.h"

namespace flowception {

// Welford running statistics of a set of values: mean and sum of squared deviations (m2).
template <typename T>
struct Welford {
  T mean;
  T m2;
  T count;
};

// Add value `x` to a running (mean, m2) whose count, including `x`, is 1 / inv_count.
template <typename V, typename T>
FC_HOST_DEVICE void welford_step(V& mean, V& m2, T inv_count, V x) {
  const V delta = x - mean;
  mean = mean + delta * V(inv_count);
  m2 = m2 + delta * (x - mean);
}

template <typename T>
FC_HOST_DEVICE void welford_push(Welford<T>& w, T x) {
  w.count += T(1);
  welford_step(w.mean, w.m2, T(1) / w.count, x);
}

// Statistics of the union of two disjoint sets (Chan et al.).
template <typename T>
FC_HOST_DEVICE Welford<T> welford_merge(const Welford<T>& a, const Welford<T>& b) {
  const T n = a.count + b.count;
  if (n == T(0)) return a;
  const T delta = b.mean - a.mean;
  const T wb = b.count / n;
  return Welford<T>{a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.count * wb, n};
}

// 1 / sqrt(biased variance + eps); an empty row has variance 0.
template <typename T>
FC_HOST_DEVICE T layernorm_rstd(const Welford<T>& w, T eps) {
  const T var = w.count > T(0) ? w.m2 / w.count : T(0);
  return T(1) / sqrt((var > T(0) ? var : T(0)) + eps);
}

// y = (x - mean) * rstd * (1 + scale) + shift
template <typename V>
FC_HOST_DEVICE V adaln_modulate_elem(V x, V mean, V rstd, V shift, V scale) {
  return (x - mean) * rstd * (V(1) + scale) + shift;
}

// x + gate * h
template <typename V>
FC_HOST_DEVICE V gated_residual_elem(V x, V h, V gate) {
  return x + gate * h;
}

// Gradient w.r.t. the normalised value x̂ of one element: g * (1 + scale) (the CUDA kernels use a
// variant with the product explicitly rounded, see csrc/cuda/adaln.cu).
template <typename V>
FC_HOST_DEVICE V adaln_grad_xhat(V g, V scale) {
  return g * (V(1) + scale);
}

// LayerNorm backward of one element: rstd * (ĝ - mean(ĝ) - x̂ * mean(ĝ x̂)), with ĝ the gradient
// w.r.t. x̂ and the two row means given.
template <typename V>
FC_HOST_DEVICE V layernorm_dx_elem(V g_hat, V xhat, V rstd, V mean_g, V mean_gx) {
  return rstd * (g_hat - mean_g - xhat * mean_gx);
}

}  // namespace flowception
