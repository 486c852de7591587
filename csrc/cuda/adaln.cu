// CUDA kernels of the per-frame AdaLN ops. Raw-pointer launchers with CUDA headers only, so nvcc
// compile-checks them against a CPU build of torch; adaln_glue.cpp binds them to the dispatcher
// when torch has CUDA. Element math is csrc/common/layernorm.h, the code the CPU kernels run.
//
// Forward and the per-token part of the backward: one warp per token row (row statistics and
// row sums by warp shuffles). Per-frame gradients: one thread per (frame, column) summing over
// the frame's rows, which are contiguous, so there are no atomics and the result is deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/layernorm.h"
#include "cuda/adaln_launch.h"

namespace flowception::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;      // warps per block in the row kernels
constexpr int kColumnThreads = 256;   // threads per block in the per-frame column kernel

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

template <typename T> __device__ __forceinline__ acc_t<T> load(const T* p) { return static_cast<acc_t<T>>(*p); }
template <> __device__ __forceinline__ float load<__half>(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T> __device__ __forceinline__ void store(T* p, acc_t<T> v) { *p = static_cast<T>(v); }
template <> __device__ __forceinline__ void store<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// adaln_grad_xhat with the product rounded before any use: nvcc could otherwise fuse it into the
// following add in one pass over the row and not in the other, a difference that rstd amplifies
// (rows of one element have rstd = 1 / sqrt(eps)). The CPU kernels keep the first pass's values.
__device__ __forceinline__ float grad_xhat(float g, float scale) { return __fmul_rn(g, 1.0f + scale); }
__device__ __forceinline__ double grad_xhat(double g, double scale) { return __dmul_rn(g, 1.0 + scale); }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename A>
__device__ __forceinline__ Welford<A> warp_welford(Welford<A> w) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const Welford<A> other{__shfl_xor_sync(0xffffffffu, w.mean, offset), __shfl_xor_sync(0xffffffffu, w.m2, offset),
                           __shfl_xor_sync(0xffffffffu, w.count, offset)};
    w = welford_merge(w, other);
  }
  // The merge is not symmetric in rounding: give every lane lane 0's result (the saved one).
  return Welford<A>{__shfl_sync(0xffffffffu, w.mean, 0), __shfl_sync(0xffffffffu, w.m2, 0),
                    __shfl_sync(0xffffffffu, w.count, 0)};
}

// Typed view of AdalnBuffers.
template <typename T>
struct Typed {
  using A = acc_t<T>;
  int64_t rows, dim, tokens_per_frame;
  A eps;
  const T *x, *h, *gate, *shift, *scale, *grad_res, *grad_y;
  T *res, *y, *dx, *dh, *dgate, *dshift, *dscale;
  A *mean, *rstd;

  explicit Typed(const AdalnBuffers& b)
      : rows(b.rows), dim(b.dim), tokens_per_frame(b.tokens_per_frame), eps(static_cast<A>(b.eps)),
        x(static_cast<const T*>(b.x)), h(static_cast<const T*>(b.h)), gate(static_cast<const T*>(b.gate)),
        shift(static_cast<const T*>(b.shift)), scale(static_cast<const T*>(b.scale)),
        grad_res(static_cast<const T*>(b.grad_res)), grad_y(static_cast<const T*>(b.grad_y)),
        res(static_cast<T*>(b.res)), y(static_cast<T*>(b.y)), dx(static_cast<T*>(b.dx)), dh(static_cast<T*>(b.dh)),
        dgate(static_cast<T*>(b.dgate)), dshift(static_cast<T*>(b.dshift)), dscale(static_cast<T*>(b.dscale)),
        mean(static_cast<A*>(b.mean)), rstd(static_cast<A*>(b.rstd)) {}
};

// One warp per row. Each lane reads back only the residual elements it wrote itself.
template <typename T, bool kNorm, bool kResidual>
__global__ void forward_kernel(Typed<T> a) {
  using A = acc_t<T>;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (r >= a.rows) return;  // the whole warp leaves together
  const int64_t D = a.dim, o = r * D, fo = (r / a.tokens_per_frame) * D;
  const T* src = a.x + o;
  if (kResidual) {
    for (int64_t d = threadIdx.x; d < D; d += kWarp) {
      store(a.res + o + d, gated_residual_elem(load(a.x + o + d), load(a.h + o + d), load(a.gate + fo + d)));
    }
    src = a.res + o;
  }
  if (kNorm) {
    Welford<A> w{A(0), A(0), A(0)};
    for (int64_t d = threadIdx.x; d < D; d += kWarp) welford_push(w, load(src + d));
    w = warp_welford(w);
    const A mean = w.mean, rstd = layernorm_rstd(w, a.eps);
    if (threadIdx.x == 0) {
      a.mean[r] = mean;
      a.rstd[r] = rstd;
    }
    for (int64_t d = threadIdx.x; d < D; d += kWarp) {
      store(a.y + o + d, adaln_modulate_elem(load(src + d), mean, rstd, load(a.shift + fo + d), load(a.scale + fo + d)));
    }
  }
}

// Per-token gradients, one warp per row: dx (kNorm) and dh (kResidual).
template <typename T, bool kNorm, bool kResidual>
__global__ void backward_rows_kernel(Typed<T> a) {
  using A = acc_t<T>;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (r >= a.rows) return;
  const int64_t D = a.dim, o = r * D, fo = (r / a.tokens_per_frame) * D;
  if (kNorm) {
    const A mean = a.mean[r], rstd = a.rstd[r];
    A sum_g = 0, sum_gx = 0;
    for (int64_t d = threadIdx.x; d < D; d += kWarp) {
      const A g_hat = grad_xhat(load(a.grad_y + o + d), load(a.scale + fo + d));
      sum_g += g_hat;
      sum_gx += g_hat * (load(a.x + o + d) - mean) * rstd;
    }
    const A mean_g = warp_sum(sum_g) / D, mean_gx = warp_sum(sum_gx) / D;
    for (int64_t d = threadIdx.x; d < D; d += kWarp) {
      const A xhat = (load(a.x + o + d) - mean) * rstd;
      A g = layernorm_dx_elem(grad_xhat(load(a.grad_y + o + d), load(a.scale + fo + d)), xhat, rstd, mean_g, mean_gx);
      if (kResidual) {
        g += load(a.grad_res + o + d);
        store(a.dh + o + d, load(a.gate + fo + d) * g);
      }
      store(a.dx + o + d, g);
    }
  } else {
    for (int64_t d = threadIdx.x; d < D; d += kWarp) {
      store(a.dh + o + d, load(a.gate + fo + d) * load(a.grad_res + o + d));
    }
  }
}

// Per-frame gradients: thread (frame f = blockIdx.x, column d) sums over the frame's rows.
// The residual gradient g is grad_res, or the dx written by backward_rows_kernel when fused.
template <typename T, bool kNorm, bool kResidual>
__global__ void backward_frames_kernel(Typed<T> a) {
  using A = acc_t<T>;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * kColumnThreads + threadIdx.x;
  if (d >= a.dim) return;
  const int64_t f = blockIdx.x, D = a.dim;
  A sum_shift = 0, sum_scale = 0, sum_gate = 0;
  for (int64_t r = f * a.tokens_per_frame; r < (f + 1) * a.tokens_per_frame; ++r) {
    const int64_t i = r * D + d;
    if (kNorm) {
      const A g = load(a.grad_y + i);
      sum_shift += g;
      sum_scale += g * (load(a.x + i) - a.mean[r]) * a.rstd[r];
    }
    if (kResidual) sum_gate += (kNorm ? load(a.dx + i) : load(a.grad_res + i)) * load(a.h + i);
  }
  if (kNorm) {
    store(a.dshift + f * D + d, sum_shift);
    store(a.dscale + f * D + d, sum_scale);
  }
  if (kResidual) store(a.dgate + f * D + d, sum_gate);
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

template <typename T, bool kNorm, bool kResidual>
cudaError_t forward_typed(const AdalnBuffers& b, cudaStream_t stream) {
  forward_kernel<T, kNorm, kResidual><<<row_blocks(b.rows), dim3(kWarp, kRowsPerBlock), 0, stream>>>(Typed<T>(b));
  return cudaGetLastError();
}

template <typename T, bool kNorm, bool kResidual>
cudaError_t backward_typed(const AdalnBuffers& b, cudaStream_t stream) {
  const Typed<T> a(b);
  backward_rows_kernel<T, kNorm, kResidual><<<row_blocks(b.rows), dim3(kWarp, kRowsPerBlock), 0, stream>>>(a);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(b.rows / b.tokens_per_frame),
                  static_cast<unsigned>((b.dim + kColumnThreads - 1) / kColumnThreads));
  backward_frames_kernel<T, kNorm, kResidual><<<grid, kColumnThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

// Calls fn.template operator()<T>() for the element type of `dtype`.
template <typename Fn>
cudaError_t dispatch(DType dtype, const Fn& fn) {
  switch (dtype) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat64: return fn(double{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_adaln_forward(const AdalnBuffers& b, DType dtype, bool norm, bool residual, cudaStream_t stream) {
  if (b.rows == 0 || (b.dim == 0 && !norm)) return cudaSuccess;
  if (b.rows > int64_t(kRowsPerBlock) * 0x7fffffff || (!norm && !residual)) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (norm && residual) return forward_typed<T, true, true>(b, stream);
    if (norm) return forward_typed<T, true, false>(b, stream);
    return forward_typed<T, false, true>(b, stream);
  });
}

cudaError_t launch_adaln_backward(const AdalnBuffers& b, DType dtype, bool norm, bool residual, cudaStream_t stream) {
  if (b.rows == 0 || b.dim == 0) return cudaSuccess;
  const int64_t column_blocks = (b.dim + kColumnThreads - 1) / kColumnThreads;
  if (b.rows > int64_t(kRowsPerBlock) * 0x7fffffff || column_blocks > 65535 || (!norm && !residual)) {
    return cudaErrorInvalidValue;
  }
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (norm && residual) return backward_typed<T, true, true>(b, stream);
    if (norm) return backward_typed<T, true, false>(b, stream);
    return backward_typed<T, false, true>(b, stream);
  });
}

}  // namespace flowception::cuda
