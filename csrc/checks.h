// Argument checks shared by the CPU kernels and the CUDA glue. Errors surface in Python as
// ValueError (TORCH_CHECK_VALUE) or TypeError (TORCH_CHECK_TYPE), naming the argument.
#pragma once
#include <ATen/ATen.h>

namespace flowception {

inline void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* ref_name,
                              const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
                    " (", ref.device(), "), got ", t.device());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", st);
}

// Elements per row of a packed [N, *S] tensor (valid for N = 0 too).
inline int64_t row_numel(const at::Tensor& t) {
  int64_t s = 1;
  for (int64_t d = 1; d < t.dim(); ++d) s *= t.size(d);
  return s;
}

// cu_seqlens: int64 [B+1], starts at 0, non-decreasing, ends at n_rows. Returns a contiguous
// CPU copy for reading.
inline at::Tensor check_cu_seqlens(const at::Tensor& cu, int64_t n_rows, const at::Tensor& frames) {
  TORCH_CHECK_TYPE(cu.scalar_type() == at::kLong, "cu_seqlens must be int64, got ", cu.scalar_type());
  TORCH_CHECK_VALUE(cu.dim() == 1 && cu.numel() >= 1,
                    "cu_seqlens must be a 1-D tensor [B+1] with at least one entry, got shape ",
                    cu.sizes());
  check_same_device(frames, cu, "frames", "cu_seqlens");
  at::Tensor host = cu.to(at::kCPU).contiguous();
  const int64_t* c = host.data_ptr<int64_t>();
  const int64_t nb = host.numel() - 1;
  TORCH_CHECK_VALUE(c[0] == 0, "cu_seqlens must start at 0, got ", c[0]);
  for (int64_t b = 0; b < nb; ++b) {
    TORCH_CHECK_VALUE(c[b + 1] >= c[b], "cu_seqlens must be non-decreasing, but cu_seqlens[", b + 1,
                      "] = ", c[b + 1], " < cu_seqlens[", b, "] = ", c[b]);
  }
  TORCH_CHECK_VALUE(c[nb] == n_rows, "cu_seqlens must end at the number of frames (", n_rows,
                    "), got ", c[nb]);
  return host;
}

inline void check_frames(const at::Tensor& frames) {
  TORCH_CHECK_VALUE(frames.dim() >= 1, "frames must have a leading frame dimension, got a 0-d tensor");
  check_floating(frames, "frames");
}

}  // namespace flowception
