// Element types the CUDA launchers accept (CUDA headers only, no torch).
#pragma once

namespace flowception::cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace flowception::cuda
