// Shared by the CPU and CUDA kernels: element math that must give the same numbers on both.
#pragma once
#if defined(__CUDACC__)
#define FC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FC_HOST_DEVICE inline
#endif
