// Online softmax over a row whose scores arrive in chunks (flash attention), shared by the CPU
// and CUDA kernels of local_frame_attention. A row's state is its running max `m` (-inf before
// any score) and `l` = sum of exp(s - m) over the scores seen so far. Masked scores are -inf and
// must contribute exactly 0, also when a whole chunk (or the whole row) is masked.
#pragma once
#include <cmath>

#include "common/macros.h"

namespace flowception {

FC_HOST_DEVICE float fc_exp(float x) { return expf(x); }
FC_HOST_DEVICE double fc_exp(double x) { return exp(x); }
FC_HOST_DEVICE float fc_log(float x) { return logf(x); }
FC_HOST_DEVICE double fc_log(double x) { return log(x); }

// Moves the running max to cover a chunk whose max is `chunk_max`; returns the factor the row's
// previous sum and output accumulator must be multiplied by (0 when nothing was seen yet).
template <typename T>
FC_HOST_DEVICE T online_softmax_update(T& m, T chunk_max) {
  if (!(chunk_max > m)) return T(1);  // also covers a fully masked chunk (chunk_max = -inf)
  const T factor = m == -INFINITY ? T(0) : fc_exp(m - chunk_max);  // 0 on the first chunk
  m = chunk_max;
  return factor;
}

// What to subtract from the row's scores before exponentiating: the running max, or 0 while
// the row has no score (so exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN).
template <typename T>
FC_HOST_DEVICE T softmax_shift(T m) {
  return m == -INFINITY ? T(0) : m;
}

// Log-sum-exp of a finished row; -inf for a row without any key.
template <typename T>
FC_HOST_DEVICE T softmax_lse(T m, T l) {
  return l > T(0) ? m + fc_log(l) : T(-INFINITY);
}

// exp(s - lse): the probability recomputed in the backward pass (0 for masked scores; a row
// without any key has lse = -inf and only masked scores).
template <typename T>
FC_HOST_DEVICE T softmax_prob(T s, T lse) {
  return s == -INFINITY ? T(0) : fc_exp(s - lse);
}

}  // namespace flowception
