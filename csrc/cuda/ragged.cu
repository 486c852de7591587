// CUDA kernels of ragged_insert / ragged_strip. Raw-pointer launchers with CUDA headers only,
// so nvcc compile-checks them against a CPU build of torch; ragged_glue.cpp binds them to the
// dispatcher when torch has CUDA. Element math (Philox, Box-Muller) is csrc/common/philox.h,
// the same code the CPU kernels run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/philox.h"
#include "cuda/ragged_launch.h"

namespace flowception::cuda {
namespace {

constexpr int kThreads = 256;

// Noise is computed in gaussian_compute_t<T> (double for double, else float) and rounded once.
template <typename T>
__device__ __forceinline__ T from_compute(gaussian_compute_t<T> z) { return static_cast<T>(z); }
template <> __device__ __forceinline__ __half from_compute<__half>(float z) { return __float2half_rn(z); }
template <> __device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float z) {
  return __float2bfloat16_rn(z);
}

// grid.y = destination row; grid.x strides over the row's 16-byte words (or bytes for odd sizes).
template <typename Word>
__global__ void copy_rows_kernel(const Word* __restrict__ src, Word* __restrict__ dst,
                                 const int64_t* __restrict__ dst_of_src, const int64_t* __restrict__ src_of_dst,
                                 int64_t n_rows, int64_t words_per_row) {
  for (int64_t r = blockIdx.y; r < n_rows; r += gridDim.y) {
    const int64_t s = src_of_dst ? src_of_dst[r] : r;
    const int64_t d = dst_of_src ? dst_of_src[r] : r;
    const Word* in = src + s * words_per_row;
    Word* out = dst + d * words_per_row;
    for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < words_per_row; i += int64_t(gridDim.x) * blockDim.x) {
      out[i] = in[i];
    }
  }
}

// One thread per Box-Muller pair; rows stride over grid.y.
template <typename T>
__global__ void gaussian_rows_kernel(T* __restrict__ out, const int64_t* __restrict__ rows, int64_t n_rows,
                                     int64_t row_numel, uint64_t seed) {
  const int64_t n_pairs = (row_numel + 1) / 2;
  for (int64_t i = blockIdx.y; i < n_rows; i += gridDim.y) {
    const int64_t row = rows[i];
    T* dst = out + row * row_numel;
    for (int64_t p = blockIdx.x * blockDim.x + threadIdx.x; p < n_pairs; p += int64_t(gridDim.x) * blockDim.x) {
      gaussian_compute_t<T> z0, z1;
      gaussian_pair_at(seed, static_cast<uint64_t>(row), static_cast<uint64_t>(p), z0, z1);
      dst[2 * p] = from_compute<T>(z0);
      if (2 * p + 1 < row_numel) dst[2 * p + 1] = from_compute<T>(z1);
    }
  }
}

unsigned grid_x(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 1024 ? 1024 : blocks));
}

unsigned grid_y(int64_t rows) { return static_cast<unsigned>(rows > 65535 ? 65535 : rows); }

}  // namespace

cudaError_t launch_copy_rows(const void* src, void* dst, const int64_t* dst_of_src, const int64_t* src_of_dst,
                             int64_t n_rows, int64_t row_bytes, cudaStream_t stream) {
  if (n_rows == 0 || row_bytes == 0) return cudaSuccess;
  const dim3 block(kThreads);
  const bool aligned16 = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  if (aligned16) {
    const int64_t words = row_bytes / 16;
    copy_rows_kernel<uint4><<<dim3(grid_x(words), grid_y(n_rows)), block, 0, stream>>>(
        static_cast<const uint4*>(src), static_cast<uint4*>(dst), dst_of_src, src_of_dst, n_rows, words);
  } else {
    copy_rows_kernel<unsigned char><<<dim3(grid_x(row_bytes), grid_y(n_rows)), block, 0, stream>>>(
        static_cast<const unsigned char*>(src), static_cast<unsigned char*>(dst), dst_of_src, src_of_dst, n_rows, row_bytes);
  }
  return cudaGetLastError();
}

cudaError_t launch_gaussian_rows(void* out, DType dtype, const int64_t* rows, int64_t n_rows, int64_t row_numel,
                                 uint64_t seed, cudaStream_t stream) {
  if (n_rows == 0 || row_numel == 0) return cudaSuccess;
  const dim3 grid(grid_x((row_numel + 1) / 2), grid_y(n_rows)), block(kThreads);
  switch (dtype) {
    case DType::kFloat32:
      gaussian_rows_kernel<<<grid, block, 0, stream>>>(static_cast<float*>(out), rows, n_rows, row_numel, seed);
      break;
    case DType::kFloat64:
      gaussian_rows_kernel<<<grid, block, 0, stream>>>(static_cast<double*>(out), rows, n_rows, row_numel, seed);
      break;
    case DType::kFloat16:
      gaussian_rows_kernel<<<grid, block, 0, stream>>>(static_cast<__half*>(out), rows, n_rows, row_numel, seed);
      break;
    case DType::kBFloat16:
      gaussian_rows_kernel<<<grid, block, 0, stream>>>(static_cast<__nv_bfloat16*>(out), rows, n_rows, row_numel, seed);
      break;
  }
  return cudaGetLastError();
}

}  // namespace flowception::cuda
