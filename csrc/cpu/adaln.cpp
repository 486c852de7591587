// CPU kernels of the per-frame AdaLN ops (adaln_modulate, gated_residual, gated_residual_adaln
// and their backwards). Token t belongs to frame t / tokens_per_frame, so a frame's tokens are
// contiguous rows. Forward: one parallel pass over token rows; each row (a few KB) is read from
// memory once and re-read from L1. Backward: parallel over (frame, block of rows) tasks, each
// summing its rows' contributions to the per-frame gradients into its own partial row (no atomics,
// same result for any thread count); a short second pass adds the partials of every frame.
// Element math is csrc/common/layernorm.h, shared with the CUDA kernels. bf16/fp16 compute in fp32.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "adaln.h"
#include "common/layernorm.h"
#include "cpu/vec_round.h"

namespace flowception {
namespace {

using at::Tensor;

// Loads and stores of T data as vectors (or single values, for row tails) of the accumulation type.
template <typename T>
struct VecLane {
  using A = at::opmath_type<T>;
  using V = at::vec::Vectorized<A>;
  static constexpr int64_t kWidth = V::size();
  static V load(const T* p) {
    if constexpr (std::is_same_v<T, A>) {
      return V::loadu(p);
    } else {
      V v;
      at::vec::load_to_float<T>(p, v);
      return v;
    }
  }
  static void store(T* p, const V& v) {
    if constexpr (std::is_same_v<T, A>) {
      v.store(p);
    } else {
      store_rounded(p, v);
    }
  }
  static V load_acc(const A* p) { return V::loadu(p); }
  static void store_acc(A* p, const V& v) { v.store(p); }
};

template <typename T>
struct ScalarLane {
  using A = at::opmath_type<T>;
  using V = A;
  static constexpr int64_t kWidth = 1;
  static V load(const T* p) { return static_cast<A>(*p); }
  static void store(T* p, V v) { *p = static_cast<T>(v); }
  static V load_acc(const A* p) { return *p; }
  static void store_acc(A* p, V v) { *p = v; }
};

// Calls body(lane, d) on columns [first, D): full vectors first, then the tail one by one.
template <typename T, typename Body>
inline void for_each_column(int64_t D, const Body& body, int64_t first = 0) {
  int64_t d = first;
  for (; d + VecLane<T>::kWidth <= D; d += VecLane<T>::kWidth) body(VecLane<T>{}, d);
  for (; d < D; ++d) body(ScalarLane<T>{}, d);
}

// dst[d] = f(lane, d) on columns [0, D). bf16/fp16 vectors are rounded and stored in pairs:
// at::vec converts two fp32 vectors at once, so a lone vector would be converted twice.
template <typename T, typename F>
inline void store_columns(T* dst, int64_t D, const F& f) {
  int64_t d = 0;
  if constexpr (!std::is_same_v<T, at::opmath_type<T>>) {
    constexpr int64_t W = VecLane<T>::kWidth;
    for (; d + 2 * W <= D; d += 2 * W) store_rounded_pair(dst + d, f(VecLane<T>{}, d), f(VecLane<T>{}, d + W));
  }
  for_each_column<T>(D, [&](auto L, int64_t c) { L.store(dst + c, f(L, c)); }, d);
}

// Sums of f(lane, d) over columns [0, D) for two quantities at once, two vector accumulators
// each (see sum_columns).
template <typename T, typename F>
inline std::pair<at::opmath_type<T>, at::opmath_type<T>> sum_columns2(int64_t D, const F& f) {
  using A = at::opmath_type<T>;
  using L = VecLane<T>;
  using V = typename L::V;
  V a0(0), a1(0), b0(0), b1(0);
  int64_t d = 0;
  for (; d + 2 * L::kWidth <= D; d += 2 * L::kWidth) {
    const auto [a, b] = f(L{}, d);
    const auto [c, e] = f(L{}, d + L::kWidth);
    a0 += a, b0 += b, a1 += c, b1 += e;
  }
  for (; d + L::kWidth <= D; d += L::kWidth) {
    const auto [a, b] = f(L{}, d);
    a0 += a, b0 += b;
  }
  A sa = at::vec::vec_reduce_all<A>(std::plus<V>(), a0 + a1);
  A sb = at::vec::vec_reduce_all<A>(std::plus<V>(), b0 + b1);
  for (; d < D; ++d) {
    const auto [a, b] = f(ScalarLane<T>{}, d);
    sa += a, sb += b;
  }
  return {sa, sb};
}

// Sum of f(lane, d) over columns [0, D), with two vector accumulators so that consecutive
// vectors do not wait on each other's addition.
template <typename T, typename F>
inline at::opmath_type<T> sum_columns(int64_t D, const F& f) {
  using A = at::opmath_type<T>;
  using L = VecLane<T>;
  typename L::V v0(0), v1(0);
  int64_t d = 0;
  for (; d + 2 * L::kWidth <= D; d += 2 * L::kWidth) {
    v0 += f(L{}, d);
    v1 += f(L{}, d + L::kWidth);
  }
  for (; d + L::kWidth <= D; d += L::kWidth) v0 += f(L{}, d);
  A sum = at::vec::vec_reduce_all<A>(std::plus<typename L::V>(), v0 + v1);
  for (; d < D; ++d) sum += f(ScalarLane<T>{}, d);
  return sum;
}

// Statistics of a row. fp32/fp64: two passes over it (a row stays in L1), the mean, then the sum
// of squared deviations from it; both are throughput-bound, unlike a Welford update, which chains
// every element to the previous one, and at least as accurate. bf16/fp16, where the kernel is
// compute-bound: one pass of sums of x - x[0] and its square. Since x[0] is a value of the row,
// (x[0] - mean)^2 <= D var, so the cancellation in m2 = S2 - S1^2 / D costs at most a relative
// error of about D eps(fp32) (1e-4 at D = 1152), far below the 8-11 bits of the output.
template <typename T>
Welford<at::opmath_type<T>> row_stats(const T* x, int64_t D) {
  using A = at::opmath_type<T>;
  if (D == 0) return Welford<A>{0, 0, 0};
  if constexpr (!std::is_same_v<T, A>) {
    const A origin = static_cast<A>(x[0]);
    const auto [s1, s2] = sum_columns2<T>(D, [&](auto L, int64_t d) {
      using V = typename decltype(L)::V;
      const V dev = L.load(x + d) - V(origin);
      return std::pair<V, V>{dev, dev * dev};
    });
    const A m2 = s2 - s1 * (s1 / D);
    return Welford<A>{origin + s1 / D, m2 > A(0) ? m2 : A(0), static_cast<A>(D)};
  } else {
    const A mean = sum_columns<T>(D, [&](auto L, int64_t d) { return L.load(x + d); }) / D;
    const A m2 = sum_columns<T>(D, [&](auto L, int64_t d) {
      using V = typename decltype(L)::V;
      const V dev = L.load(x + d) - V(mean);
      return dev * dev;
    });
    return Welford<A>{mean, m2, static_cast<A>(D)};
  }
}

// Pointers and sizes of one call; the ones an op does not use are null.
template <typename T>
struct Args {
  using A = at::opmath_type<T>;
  int64_t D = 0, tokens_per_frame = 1;
  A eps = 0;
  const T *x = nullptr, *h = nullptr;                                // [T, D]: residual stream, branch
  const T *gate = nullptr, *shift = nullptr, *scale = nullptr;       // [F, D]
  T *res = nullptr, *y = nullptr;                                    // forward outputs [T, D]
  A *mean = nullptr, *rstd = nullptr;                                // row statistics [T]
  const T *grad_res = nullptr, *grad_y = nullptr;                    // backward inputs [T, D]
  T *dx = nullptr, *dh = nullptr;                                    // backward outputs [T, D]
  A *part_shift = nullptr, *part_scale = nullptr, *part_gate = nullptr;  // partial sums [tasks, D]
};

// dst = src in the accumulation type, vectorised (at::vec::convert is a scalar loop for bf16/fp16).
template <typename T>
void to_acc(const T* src, at::opmath_type<T>* dst, int64_t D) {
  for_each_column<T>(D, [&](auto L, int64_t d) { L.store_acc(dst + d, L.load(src + d)); });
}

// Rows [begin, end). kResidual: res = x + gate * h. kNorm: y = LayerNorm(src) * (1 + scale) + shift
// and the row statistics, with src = res when fused (normalising the stored, rounded values, as
// the two ops in sequence would), else x.
template <typename T, bool kNorm, bool kResidual>
void forward_rows(const Args<T>& a, int64_t begin, int64_t end) {
  using A = at::opmath_type<T>;
  // bf16/fp16: the frame's shift and scale are converted once per frame, not per row, into fp32
  // buffers that the output pass reads.
  constexpr bool kConvert = !std::is_same_v<T, A>;
  const int64_t D = a.D;
  std::vector<A> buf(kNorm && kConvert ? 2 * D : 0);
  A *shift_buf = buf.data(), *scale_buf = shift_buf + D;
  int64_t converted_frame = -1;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t f = r / a.tokens_per_frame;
    const T* src = a.x + r * D;
    if constexpr (kResidual) {
      const T *h = a.h + r * D, *gate = a.gate + f * D;
      T* res = a.res + r * D;
      store_columns(res, D, [&](auto L, int64_t d) {
        return gated_residual_elem(L.load(src + d), L.load(h + d), L.load(gate + d));
      });
      src = res;
    }
    if constexpr (kNorm) {
      const auto w = row_stats(src, D);
      const A *shift = nullptr, *scale = nullptr;
      if constexpr (kConvert) {
        if (f != converted_frame) {
          to_acc(a.shift + f * D, shift_buf, D);
          to_acc(a.scale + f * D, scale_buf, D);
          converted_frame = f;
        }
        shift = shift_buf, scale = scale_buf;
      } else {
        shift = a.shift + f * D, scale = a.scale + f * D;
      }
      const A mean = w.mean, rstd = layernorm_rstd(w, a.eps);
      a.mean[r] = mean;
      a.rstd[r] = rstd;
      T* y = a.y + r * D;
      store_columns(y, D, [&](auto L, int64_t d) {
        using V = typename decltype(L)::V;
        return adaln_modulate_elem(L.load(src + d), V(mean), V(rstd), L.load_acc(shift + d), L.load_acc(scale + d));
      });
    }
  }
}

// Rows [begin, end) of one frame, summing their per-frame gradients into row `task` of the partials.
// kNorm: dx = LayerNorm backward of grad_y (+ grad_res when fused), dshift += grad_y,
// dscale += grad_y * x̂. kResidual: with g = grad_res (+ the norm's dx when fused),
// dh = gate * g, dgate += g * h.
template <typename T, bool kNorm, bool kResidual>
void backward_rows(const Args<T>& a, int64_t task, int64_t begin, int64_t end) {
  using A = at::opmath_type<T>;
  const int64_t D = a.D;
  const int64_t f = begin / a.tokens_per_frame;
  // Offsets, not pointers: an op's unused inputs are null.
  const int64_t fo = f * D;
  A* p_shift = kNorm ? a.part_shift + task * D : nullptr;
  A* p_scale = kNorm ? a.part_scale + task * D : nullptr;
  A* p_gate = kResidual ? a.part_gate + task * D : nullptr;
  for (A* part : {p_shift, p_scale, p_gate}) {
    if (part != nullptr) std::fill_n(part, D, A(0));
  }
  // The row's gradient w.r.t. x̂, kept from the first pass so that the second uses the very same
  // rounded values (recomputing them could round differently under FMA contraction, an error
  // that rstd amplifies: rows of one element have rstd = 1 / sqrt(eps)).
  std::vector<A> g_hat(kNorm ? D : 0);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t o = r * D;
    // kResidual: the gradient g of the residual stream at column d -> dh, dgate.
    const auto residual = [&](auto L, int64_t d, auto g) {
      L.store(a.dh + o + d, L.load(a.gate + fo + d) * g);
      L.store_acc(p_gate + d, L.load_acc(p_gate + d) + g * L.load(a.h + o + d));
    };
    if constexpr (kNorm) {
      const A mean = a.mean[r], rstd = a.rstd[r];
      const auto xhat_at = [&](auto L, int64_t d) {
        using V = typename decltype(L)::V;
        return (L.load(a.x + o + d) - V(mean)) * V(rstd);
      };
      const auto [sum_g, sum_gx] = sum_columns2<T>(D, [&](auto L, int64_t d) {
        const auto gh = adaln_grad_xhat(L.load(a.grad_y + o + d), L.load(a.scale + fo + d));
        L.store_acc(g_hat.data() + d, gh);
        return std::make_pair(gh, gh * xhat_at(L, d));
      });
      const A mean_g = sum_g / D, mean_gx = sum_gx / D;  // D > 0: rows are never empty here
      for_each_column<T>(D, [&](auto L, int64_t d) {
        using V = typename decltype(L)::V;
        const V g = L.load(a.grad_y + o + d), xhat = xhat_at(L, d);
        V g_x = layernorm_dx_elem(L.load_acc(g_hat.data() + d), xhat, V(rstd), V(mean_g), V(mean_gx));
        L.store_acc(p_shift + d, L.load_acc(p_shift + d) + g);
        L.store_acc(p_scale + d, L.load_acc(p_scale + d) + g * xhat);
        if constexpr (kResidual) {
          g_x = g_x + L.load(a.grad_res + o + d);
          residual(L, d, g_x);
        }
        L.store(a.dx + o + d, g_x);
      });
    } else {
      for_each_column<T>(D, [&](auto L, int64_t d) { residual(L, d, L.load(a.grad_res + o + d)); });
    }
  }
}

// ---- drivers -------------------------------------------------------------------------------

template <typename T>
const T* ptr(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
Args<T> typed_args(const AdalnTensors& t, int64_t tokens_per_frame, double eps) {
  using A = at::opmath_type<T>;
  Args<T> a;
  a.D = (t.x.defined() ? t.x : t.h).size(1);
  a.tokens_per_frame = tokens_per_frame;
  a.eps = static_cast<A>(eps);
  a.x = ptr<T>(t.x);
  a.h = ptr<T>(t.h);
  a.gate = ptr<T>(t.gate);
  a.shift = ptr<T>(t.shift);
  a.scale = ptr<T>(t.scale);
  a.res = mut_ptr<T>(t.res);
  a.y = mut_ptr<T>(t.y);
  a.mean = mut_ptr<A>(t.mean);
  a.rstd = mut_ptr<A>(t.rstd);
  a.grad_res = ptr<T>(t.grad_res);
  a.grad_y = ptr<T>(t.grad_y);
  a.dx = mut_ptr<T>(t.dx);
  a.dh = mut_ptr<T>(t.dh);
  return a;
}

at::TensorOptions acc_options(const Tensor& x) {
  return x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

// Forward of the three ops: fills the outputs of `t`.
template <bool kNorm, bool kResidual>
AdalnTensors run_forward(AdalnTensors t, int64_t tokens_per_frame, double eps) {
  t.make_inputs_contiguous();
  const int64_t T = t.x.size(0), D = t.x.size(1);
  if (kResidual) t.res = at::empty({T, D}, t.x.options());
  if (kNorm) {
    t.y = at::empty({T, D}, t.x.options());
    t.mean = at::empty({T}, acc_options(t.x));
    t.rstd = at::empty({T}, acc_options(t.x));
  }
  if (T == 0) return t;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.x.scalar_type(), "adaln_forward_cpu", [&] {
    const Args<scalar_t> a = typed_args<scalar_t>(t, tokens_per_frame, eps);
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
    at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) { forward_rows<scalar_t, kNorm, kResidual>(a, begin, end); });
  });
  return t;
}

// Rows per backward task: a frame's rows are split into blocks of this many, so that frames with
// many tokens still give every thread work; each block owns one partial row per per-frame gradient.
constexpr int64_t kRowsPerTask = 64;

// out[f] = the sum of the partial rows part[f * splits + s], s < splits, for frames [begin, end).
template <typename T>
void sum_partials(const at::opmath_type<T>* part, T* out, int64_t splits, int64_t D, int64_t begin, int64_t end) {
  for (int64_t f = begin; f < end; ++f) {
    const auto* rows = part + f * splits * D;
    for_each_column<T>(D, [&](auto L, int64_t d) {
      auto sum = L.load_acc(rows + d);
      for (int64_t s = 1; s < splits; ++s) sum = sum + L.load_acc(rows + s * D + d);
      L.store(out + f * D + d, sum);
    });
  }
}

// Backward of the three ops: fills the gradients of `t`. Two parallel regions (per-token work,
// then the per-frame sums), as every region costs a thread hand-off.
template <bool kNorm, bool kResidual>
AdalnTensors run_backward(AdalnTensors t, int64_t tokens_per_frame, int64_t frames) {
  t.make_inputs_contiguous();
  const Tensor& ref = kNorm ? t.x : t.h;  // a [T, D] input: shape and options of the gradients
  const int64_t T = ref.size(0), D = ref.size(1);
  if (kNorm) {
    t.dx = at::empty({T, D}, ref.options());
    t.dshift = at::empty({frames, D}, ref.options());
    t.dscale = at::empty({frames, D}, ref.options());
  }
  if (kResidual) {
    t.dh = at::empty({T, D}, ref.options());
    t.dgate = at::empty({frames, D}, ref.options());
  }
  if (T == 0 || D == 0) return t;
  const int64_t splits = (tokens_per_frame + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tasks = frames * splits;
  // Partial per-frame sums of every task, [kinds, tasks, D]: (dshift, dscale | dgate).
  const int64_t kinds = (kNorm ? 2 : 0) + (kResidual ? 1 : 0);
  const Tensor part = at::empty({kinds, tasks, D}, acc_options(ref));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "adaln_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    Args<scalar_t> a = typed_args<scalar_t>(t, tokens_per_frame, 0.0);
    A* p = part.data_ptr<A>();
    a.part_shift = kNorm ? p : nullptr;
    a.part_scale = kNorm ? p + tasks * D : nullptr;
    a.part_gate = kResidual ? p + (kinds - 1) * tasks * D : nullptr;
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t f = task / splits, s = task % splits;
        const int64_t first = f * tokens_per_frame + s * kRowsPerTask;
        const int64_t last = std::min(first + kRowsPerTask, (f + 1) * tokens_per_frame);
        backward_rows<scalar_t, kNorm, kResidual>(a, task, first, last);
      }
    });
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / (kinds * splits * D));  // small: inline
    at::parallel_for(0, frames, grain, [&](int64_t begin, int64_t end) {
      if (kNorm) {
        sum_partials(a.part_shift, t.dshift.data_ptr<scalar_t>(), splits, D, begin, end);
        sum_partials(a.part_scale, t.dscale.data_ptr<scalar_t>(), splits, D, begin, end);
      }
      if (kResidual) sum_partials(a.part_gate, t.dgate.data_ptr<scalar_t>(), splits, D, begin, end);
    });
  });
  return t;
}

// The drivers for AdalnOps: runtime flags to kernel instantiations.
struct Cpu {
  static AdalnTensors forward(AdalnTensors t, int64_t tokens_per_frame, double eps, bool norm, bool residual) {
    if (norm && residual) return run_forward<true, true>(std::move(t), tokens_per_frame, eps);
    if (norm) return run_forward<true, false>(std::move(t), tokens_per_frame, eps);
    return run_forward<false, true>(std::move(t), tokens_per_frame, eps);
  }
  static AdalnTensors backward(AdalnTensors t, int64_t tokens_per_frame, int64_t frames, bool norm, bool residual) {
    if (norm && residual) return run_backward<true, true>(std::move(t), tokens_per_frame, frames);
    if (norm) return run_backward<true, false>(std::move(t), tokens_per_frame, frames);
    return run_backward<false, true>(std::move(t), tokens_per_frame, frames);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(flowception, CPU, m) { AdalnOps<Cpu>::register_kernels(m); }

}  // namespace flowception
