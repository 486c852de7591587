// Launchers of csrc/cuda/ragged.cu: plain pointers and the CUDA runtime only, no torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace flowception::cuda {

// Copy n_rows rows of row_bytes each: row i goes from src row (src_of_dst ? src_of_dst[i] : i)
// to dst row (dst_of_src ? dst_of_src[i] : i).
cudaError_t launch_copy_rows(const void* src, void* dst, const int64_t* dst_of_src, const int64_t* src_of_dst,
                             int64_t n_rows, int64_t row_bytes, cudaStream_t stream);

// Fill rows[i] of out (rows of row_numel elements) with the Gaussians of (seed, rows[i]).
cudaError_t launch_gaussian_rows(void* out, DType dtype, const int64_t* rows, int64_t n_rows, int64_t row_numel,
                                 uint64_t seed, cudaStream_t stream);

}  // namespace flowception::cuda
