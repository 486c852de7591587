// Launchers of csrc/cuda/adaln.cu: plain pointers and the CUDA runtime only, no torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace flowception::cuda {

// The tensors of one AdaLN call, all contiguous; an op leaves the ones it does not use null.
// Token tensors are [rows, dim] of `dtype`; per-frame tensors [rows / tokens_per_frame, dim] of
// `dtype`; mean / rstd [rows] of float (double for float64 data).
struct AdalnBuffers {
  int64_t rows = 0, dim = 0, tokens_per_frame = 1;
  double eps = 0;
  const void *x = nullptr, *h = nullptr;                    // residual stream (x_new in backward), branch
  const void *gate = nullptr, *shift = nullptr, *scale = nullptr;
  void *res = nullptr, *y = nullptr;                        // forward outputs: x + gate * h, modulated norm
  void *mean = nullptr, *rstd = nullptr;                    // written by the forward, read by the backward
  const void *grad_res = nullptr, *grad_y = nullptr;        // backward inputs
  void *dx = nullptr, *dh = nullptr;                        // backward outputs per token
  void *dgate = nullptr, *dshift = nullptr, *dscale = nullptr;  // backward outputs per frame
};

// norm: y = LayerNorm(src) * (1 + scale[frame]) + shift[frame] (+ mean, rstd); residual:
// res = x + gate[frame] * h, and src = res when both are set, else x.
cudaError_t launch_adaln_forward(const AdalnBuffers& b, DType dtype, bool norm, bool residual, cudaStream_t stream);

// norm: dx, dshift, dscale from grad_y (+ grad_res added to dx when residual); residual: with
// g = grad_res (or the dx above), dh = gate[frame] * g and dgate = per-frame sums of g * h.
cudaError_t launch_adaln_backward(const AdalnBuffers& b, DType dtype, bool norm, bool residual, cudaStream_t stream);

}  // namespace flowception::cuda
