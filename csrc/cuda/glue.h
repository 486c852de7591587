// Helpers shared by the CUDA glue files (built only with a CUDA build of torch).
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include "cuda/dtype.h"

namespace flowception::cuda {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {  // the argument checks admit the four floating types only
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "flowception ", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace flowception::cuda
