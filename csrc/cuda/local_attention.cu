// CUDA kernels of local_frame_attention, with the CPU kernel's frame tiling: a block owns up to
// kRows rows (one thread each) of one frame and one head, so all its rows see the same
// contiguous range of tokens (common/frame_window.h); that range is staged through shared
// memory kCols rows at a time, with the online softmax of common/softmax.h. Blocks outside the
// window are never visited. Backward as on the CPU: a dq kernel over query frames that also
// produces delta_i = sum_j P_ij dP_ij, then a dk/dv kernel over key frames (no atomics).
// Raw-pointer launchers with CUDA headers only, so nvcc compile-checks them against a CPU torch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/frame_window.h"
#include "common/softmax.h"
#include "cuda/local_attention_launch.h"

namespace flowception::cuda {
namespace {

constexpr int kRows = 64;

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Rows of the other side staged per step: 2 x kCols x D accumulators fit the 48 KB of static shared memory.
template <typename A>
constexpr int kCols = sizeof(A) == 8 ? 16 : 32;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(float x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <typename T>
__device__ __forceinline__ T from_acc(double x) {
  return x;
}

// Frames [v0, v1) of the video holding `frame` (binary search; empty videos are skipped).
__device__ void video_bounds(const int64_t* cu, int64_t num_videos, int64_t frame, int64_t& v0, int64_t& v1) {
  int64_t lo = 0, hi = num_videos;  // cu[lo] <= frame < cu[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (cu[mid] <= frame) lo = mid; else hi = mid;
  }
  v0 = cu[lo];
  v1 = cu[lo + 1];
}

// Where a block is: frame f, its rows [f*P + r_begin, ...), this thread's row, head h, and the
// token range [c_begin, c_end) of the other side that the frame reaches.
struct BlockPlace {
  int64_t row, head, c_begin, c_end;
  bool active;
};

__device__ BlockPlace place_block(const AttentionProblem& p, FrameReach reach) {
  const int64_t P = p.tokens_per_frame, slices = (P + kRows - 1) / kRows;
  const int64_t f = blockIdx.x / slices, in_frame = (blockIdx.x % slices) * kRows + threadIdx.x;
  int64_t v0, v1;
  video_bounds(p.cu_seqlens, p.num_videos, f, v0, v1);
  return {f * P + in_frame, static_cast<int64_t>(blockIdx.y), reach_lo(reach, f, v0) * P, reach_hi(reach, f, v1) * P,
          in_frame < P};
}

// Stage rows [c0, c0 + n) of head h of a [T, H, D] tensor into dst[kCols][D] as accumulators.
template <typename T, typename A, int D>
__device__ void stage_rows(const T* src, int64_t H, int64_t h, int64_t c0, int n, A (*dst)[D]) {
  for (int i = threadIdx.x; i < n * D; i += blockDim.x) {
    const int j = i / D, e = i % D;
    dst[j][e] = to_acc(src[((c0 + j) * H + h) * D + e]);
  }
}

template <typename A, int D>
__device__ __forceinline__ A dot(const A* a, const A* b) {
  A s = 0;
#pragma unroll
  for (int e = 0; e < D; ++e) s += a[e] * b[e];
  return s;
}

template <typename T, int D>
__global__ void __launch_bounds__(kRows) forward_kernel(AttentionProblem p, T* __restrict__ out,
                                                        typename Acc<T>::type* __restrict__ lse) {
  using A = typename Acc<T>::type;
  constexpr int C = kCols<A>;
  __shared__ A ks[C][D];
  __shared__ A vs[C][D];
  const T* q = static_cast<const T*>(p.q);
  const BlockPlace b = place_block(p, query_reach(p.window, p.causal));
  const int64_t H = p.heads;
  const A scale = static_cast<A>(p.scale);
  A qr[D], o[D];
#pragma unroll
  for (int e = 0; e < D; ++e) {
    qr[e] = b.active ? to_acc(q[(b.row * H + b.head) * D + e]) : A(0);
    o[e] = 0;
  }
  A m = -INFINITY, l = 0;
  for (int64_t c0 = b.c_begin; c0 < b.c_end; c0 += C) {
    const int n = static_cast<int>(b.c_end - c0 < C ? b.c_end - c0 : C);
    __syncthreads();
    stage_rows<T, A, D>(static_cast<const T*>(p.k), H, b.head, c0, n, ks);
    stage_rows<T, A, D>(static_cast<const T*>(p.v), H, b.head, c0, n, vs);
    __syncthreads();
    A s[C];
    A chunk_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < C; ++j) {
      s[j] = j < n ? scale * dot<A, D>(qr, ks[j]) : A(-INFINITY);
      chunk_max = s[j] > chunk_max ? s[j] : chunk_max;
    }
    const A factor = online_softmax_update(m, chunk_max);
    const A shift = softmax_shift(m);
    l *= factor;
#pragma unroll
    for (int e = 0; e < D; ++e) o[e] *= factor;
    for (int j = 0; j < n; ++j) {
      const A pj = fc_exp(s[j] - shift);
      l += pj;
#pragma unroll
      for (int e = 0; e < D; ++e) o[e] += pj * vs[j][e];
    }
  }
  if (!b.active) return;
  const A inv = l > A(0) ? A(1) / l : A(0);
#pragma unroll
  for (int e = 0; e < D; ++e) out[(b.row * H + b.head) * D + e] = from_acc<T>(o[e] * inv);
  lse[b.head * p.tokens + b.row] = softmax_lse(m, l);
}

// dq = scale * ((P * dP) K - delta P K), delta_i = sum_j P_ij dP_ij - grad_lse_i.
template <typename T, int D>
__global__ void __launch_bounds__(kRows) dq_kernel(AttentionProblem p, const T* __restrict__ grad_out,
                                                   const typename Acc<T>::type* __restrict__ lse,
                                                   const typename Acc<T>::type* __restrict__ grad_lse,
                                                   typename Acc<T>::type* __restrict__ delta, T* __restrict__ dq) {
  using A = typename Acc<T>::type;
  constexpr int C = kCols<A>;
  __shared__ A ks[C][D];
  __shared__ A vs[C][D];
  const T* q = static_cast<const T*>(p.q);
  const BlockPlace b = place_block(p, query_reach(p.window, p.causal));
  const int64_t H = p.heads, at = b.head * p.tokens + b.row;
  const A scale = static_cast<A>(p.scale);
  const A row_lse = b.active ? lse[at] : A(0);
  A qr[D], gr[D], acc[D], pk[D];
#pragma unroll
  for (int e = 0; e < D; ++e) {
    qr[e] = b.active ? to_acc(q[(b.row * H + b.head) * D + e]) : A(0);
    gr[e] = b.active ? to_acc(grad_out[(b.row * H + b.head) * D + e]) : A(0);
    acc[e] = pk[e] = 0;
  }
  A row_delta = 0;
  for (int64_t c0 = b.c_begin; c0 < b.c_end; c0 += C) {
    const int n = static_cast<int>(b.c_end - c0 < C ? b.c_end - c0 : C);
    __syncthreads();
    stage_rows<T, A, D>(static_cast<const T*>(p.k), H, b.head, c0, n, ks);
    stage_rows<T, A, D>(static_cast<const T*>(p.v), H, b.head, c0, n, vs);
    __syncthreads();
    for (int j = 0; j < n; ++j) {
      const A pj = softmax_prob(scale * dot<A, D>(qr, ks[j]), row_lse);
      const A pdp = pj * dot<A, D>(gr, vs[j]);
      row_delta += pdp;
#pragma unroll
      for (int e = 0; e < D; ++e) {
        acc[e] += pdp * ks[j][e];
        pk[e] += pj * ks[j][e];
      }
    }
  }
  if (!b.active) return;
  const A di = row_delta - (grad_lse != nullptr ? grad_lse[at] : A(0));
  delta[at] = di;
#pragma unroll
  for (int e = 0; e < D; ++e) dq[(b.row * H + b.head) * D + e] = from_acc<T>(scale * (acc[e] - di * pk[e]));
}

// Over key frames: dv = P^T dO, dk = scale * (P * (V dO^T - delta))^T Q.
template <typename T, int D>
__global__ void __launch_bounds__(kRows) dkdv_kernel(AttentionProblem p, const T* __restrict__ grad_out,
                                                     const typename Acc<T>::type* __restrict__ lse,
                                                     const typename Acc<T>::type* __restrict__ delta,
                                                     T* __restrict__ dk, T* __restrict__ dv) {
  using A = typename Acc<T>::type;
  constexpr int C = kCols<A>;
  __shared__ A qs[C][D];
  __shared__ A gs[C][D];
  __shared__ A lse_s[C];
  __shared__ A delta_s[C];
  const BlockPlace b = place_block(p, key_reach(p.window, p.causal));
  const int64_t H = p.heads;
  const A scale = static_cast<A>(p.scale);
  A kr[D], vr[D], dk_acc[D], dv_acc[D];
#pragma unroll
  for (int e = 0; e < D; ++e) {
    kr[e] = b.active ? to_acc(static_cast<const T*>(p.k)[(b.row * H + b.head) * D + e]) : A(0);
    vr[e] = b.active ? to_acc(static_cast<const T*>(p.v)[(b.row * H + b.head) * D + e]) : A(0);
    dk_acc[e] = dv_acc[e] = 0;
  }
  for (int64_t c0 = b.c_begin; c0 < b.c_end; c0 += C) {
    const int n = static_cast<int>(b.c_end - c0 < C ? b.c_end - c0 : C);
    __syncthreads();
    stage_rows<T, A, D>(static_cast<const T*>(p.q), H, b.head, c0, n, qs);
    stage_rows<T, A, D>(grad_out, H, b.head, c0, n, gs);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      lse_s[j] = lse[b.head * p.tokens + c0 + j];
      delta_s[j] = delta[b.head * p.tokens + c0 + j];
    }
    __syncthreads();
    for (int j = 0; j < n; ++j) {
      const A pj = softmax_prob(scale * dot<A, D>(kr, qs[j]), lse_s[j]);
      const A ds = pj * (dot<A, D>(vr, gs[j]) - delta_s[j]);
#pragma unroll
      for (int e = 0; e < D; ++e) {
        dv_acc[e] += pj * gs[j][e];
        dk_acc[e] += ds * qs[j][e];
      }
    }
  }
  if (!b.active) return;
#pragma unroll
  for (int e = 0; e < D; ++e) {
    dk[(b.row * H + b.head) * D + e] = from_acc<T>(scale * dk_acc[e]);
    dv[(b.row * H + b.head) * D + e] = from_acc<T>(dv_acc[e]);
  }
}

dim3 grid_of(const AttentionProblem& p) {
  const int64_t frames = p.tokens / p.tokens_per_frame;
  const int64_t slices = (p.tokens_per_frame + kRows - 1) / kRows;
  return dim3(static_cast<unsigned>(frames * slices), static_cast<unsigned>(p.heads));
}

template <typename T, int D>
struct Forward {
  static cudaError_t run(const AttentionProblem& p, void* out, void* lse, cudaStream_t stream) {
    using A = typename Acc<T>::type;
    forward_kernel<T, D><<<grid_of(p), kRows, 0, stream>>>(p, static_cast<T*>(out), static_cast<A*>(lse));
    return cudaGetLastError();
  }
};

template <typename T, int D>
struct Backward {
  static cudaError_t run(const AttentionProblem& p, const void* grad_out, const void* lse, const void* grad_lse,
                         void* delta, void* dq, void* dk, void* dv, cudaStream_t stream) {
    using A = typename Acc<T>::type;
    const T* go = static_cast<const T*>(grad_out);
    dq_kernel<T, D><<<grid_of(p), kRows, 0, stream>>>(p, go, static_cast<const A*>(lse),
                                                      static_cast<const A*>(grad_lse), static_cast<A*>(delta),
                                                      static_cast<T*>(dq));
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    dkdv_kernel<T, D><<<grid_of(p), kRows, 0, stream>>>(p, go, static_cast<const A*>(lse),
                                                        static_cast<const A*>(delta), static_cast<T*>(dk),
                                                        static_cast<T*>(dv));
    return cudaGetLastError();
  }
};

// Launch<T, D>::run(p, args...) for the problem's head dim, then dtype.
template <template <typename, int> class Launch, typename T, typename... Args>
cudaError_t by_head_dim(const AttentionProblem& p, Args... args) {
  switch (p.head_dim) {
    case 32: return Launch<T, 32>::run(p, args...);
    case 64: return Launch<T, 64>::run(p, args...);
    case 128: return Launch<T, 128>::run(p, args...);
    default: return cudaErrorInvalidValue;
  }
}

template <template <typename, int> class Launch, typename... Args>
cudaError_t dispatch(const AttentionProblem& p, Args... args) {
  switch (p.dtype) {
    case DType::kFloat32: return by_head_dim<Launch, float>(p, args...);
    case DType::kFloat64: return by_head_dim<Launch, double>(p, args...);
    case DType::kFloat16: return by_head_dim<Launch, __half>(p, args...);
    case DType::kBFloat16: return by_head_dim<Launch, __nv_bfloat16>(p, args...);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_local_attention_forward(const AttentionProblem& p, void* out, void* lse, cudaStream_t stream) {
  if (p.tokens == 0 || p.heads == 0) return cudaSuccess;
  return dispatch<Forward>(p, out, lse, stream);
}

cudaError_t launch_local_attention_backward(const AttentionProblem& p, const void* grad_out, const void* lse,
                                            const void* grad_lse, void* delta, void* dq, void* dk, void* dv,
                                            cudaStream_t stream) {
  if (p.tokens == 0 || p.heads == 0) return cudaSuccess;
  return dispatch<Backward>(p, grad_out, lse, grad_lse, delta, dq, dk, dv, stream);
}

}  // namespace flowception::cuda
