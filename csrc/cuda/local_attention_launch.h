// Launchers of csrc/cuda/local_attention.cu: plain pointers and the CUDA runtime only, no torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/ragged_launch.h"  // DType

namespace flowception::cuda {

// One local_frame_attention problem: q, k, v (and grad_out) contiguous [T, H, d] of `dtype`;
// cu_seqlens int64 [num_videos + 1] in frames, on the device; lse (and the backward's delta,
// grad_lse) [H, T] in the accumulation type (double for kFloat64, else float). d is 32, 64 or 128.
struct AttentionProblem {
  DType dtype;
  const void* q;
  const void* k;
  const void* v;
  const int64_t* cu_seqlens;
  int64_t num_videos, tokens, heads, head_dim, tokens_per_frame, window;
  bool causal;
  double scale;
};

// out [T, H, d] (dtype) and lse [H, T].
cudaError_t launch_local_attention_forward(const AttentionProblem& p, void* out, void* lse, cudaStream_t stream);

// dq, dk, dv [T, H, d] (dtype) from grad_out and lse; grad_lse may be null; delta is an [H, T]
// scratch buffer (written by the dq kernel, read by the dk/dv kernel).
cudaError_t launch_local_attention_backward(const AttentionProblem& p, const void* grad_out, const void* lse,
                                            const void* grad_lse, void* delta, void* dq, void* dk, void* dv,
                                            cudaStream_t stream);

}  // namespace flowception::cuda
