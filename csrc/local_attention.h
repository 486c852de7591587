// Argument checks of local_frame_attention (forward and backward), shared by the CPU kernel
// and the CUDA glue. Errors surface in Python as ValueError / TypeError naming the argument.
#pragma once
#include <ATen/ATen.h>

#include "checks.h"

namespace flowception {

constexpr int64_t kMaxHeadDim = 256;

// The dtype of the log-sum-exp (and of the accumulation): float32, or float64 for float64 inputs.
inline at::ScalarType lse_dtype(at::ScalarType input) { return input == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_like_q(const at::Tensor& q, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == q.sizes(), name, " must have the shape of q ", q.sizes(), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), name, " must have the dtype of q (", q.scalar_type(),
                   "), got ", t.scalar_type());
  check_same_device(q, t, "q", name);
}

// Checks q, k, v [T, H, d], tokens_per_frame, window and cu_seqlens (in frames, ending at
// T / tokens_per_frame). Returns a contiguous CPU copy of cu_seqlens.
inline at::Tensor check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& cu_seqlens, int64_t tokens_per_frame, int64_t window) {
  TORCH_CHECK_VALUE(q.dim() == 3, "q must be a 3-D tensor [T, H, d], got shape ", q.sizes());
  check_floating(q, "q");
  check_like_q(q, k, "k");
  check_like_q(q, v, "v");
  TORCH_CHECK_VALUE(q.size(2) >= 1 && q.size(2) <= kMaxHeadDim, "head dim q.size(2) must be between 1 and ",
                    kMaxHeadDim, ", got ", q.size(2));
  TORCH_CHECK_VALUE(tokens_per_frame >= 1, "tokens_per_frame must be >= 1, got ", tokens_per_frame);
  TORCH_CHECK_VALUE(window >= -1, "window must be >= 0, or -1 for whole videos, got ", window);
  TORCH_CHECK_VALUE(q.size(0) % tokens_per_frame == 0, "the number of tokens q.size(0) = ", q.size(0),
                    " must be a multiple of tokens_per_frame = ", tokens_per_frame);
  check_same_device(q, cu_seqlens, "q", "cu_seqlens");
  return check_cu_seqlens(cu_seqlens, q.size(0) / tokens_per_frame, q);
}

// The extra tensors of the backward: grad_out (and out) like q, lse (and grad_lse) [H, T].
inline void check_backward_inputs(const at::Tensor& q, const at::Tensor& grad_out, const c10::optional<at::Tensor>& out,
                                  const at::Tensor& lse, const c10::optional<at::Tensor>& grad_lse) {
  check_like_q(q, grad_out, "grad_out");
  if (out.has_value()) check_like_q(q, *out, "out");
  const at::ScalarType acc = lse_dtype(q.scalar_type());
  for (const at::Tensor* t : {&lse, grad_lse.has_value() ? &*grad_lse : nullptr}) {
    if (t == nullptr) continue;
    const char* name = t == &lse ? "lse" : "grad_lse";
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == q.size(1) && t->size(1) == q.size(0), name,
                      " must be [H, T] = [", q.size(1), ", ", q.size(0), "], got shape ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == acc, name, " must be ", acc, ", got ", t->scalar_type());
    check_same_device(q, *t, "q", name);
  }
}

}  // namespace flowception
