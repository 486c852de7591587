// Arguments of the per-frame AdaLN ops, shared by the CPU kernels (csrc/cpu/adaln.cpp) and the
// CUDA glue (csrc/cuda/adaln_glue.cpp): the tensors of one call and the argument checks, whose
// messages match flowception_ext.ops.reference.check_adaln_args.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>

#include "checks.h"

namespace flowception {

// The tensors of one call of a forward or backward AdaLN op; undefined where the op does not use
// them. Token tensors are [T, D], per-frame ones [F, D], mean / rstd [T].
struct AdalnTensors {
  at::Tensor x, h, gate, shift, scale;  // inputs (x is the residual stream, x_new in the fused backward)
  at::Tensor res, y, mean, rstd;        // forward outputs: x + gate * h, modulated norm, row statistics
  at::Tensor grad_res, grad_y;          // backward inputs: gradients w.r.t. res (or x) and y
  at::Tensor dx, dh, dgate, dshift, dscale;  // backward outputs

  // Make the inputs contiguous (the kernels index rows directly).
  void make_inputs_contiguous() {
    for (at::Tensor* t : {&x, &h, &gate, &shift, &scale, &mean, &rstd, &grad_res, &grad_y}) {
      if (t->defined()) *t = t->contiguous();
    }
  }
};

// The token tensor `x` (named `x_name`): [T, D] floating, T a multiple of tokens_per_frame.
// Returns the number of frames F.
inline int64_t check_adaln_tokens(const at::Tensor& x, const char* x_name, int64_t tokens_per_frame) {
  TORCH_CHECK_VALUE(x.dim() == 2, x_name, " must be a 2-D tensor [T, D] of tokens, got shape ", x.sizes());
  check_floating(x, x_name);
  TORCH_CHECK_VALUE(tokens_per_frame >= 1, "tokens_per_frame must be >= 1, got ", tokens_per_frame);
  TORCH_CHECK_VALUE(x.size(0) % tokens_per_frame == 0, x_name, " has T = ", x.size(0),
                    " tokens, which is not a multiple of tokens_per_frame = ", tokens_per_frame);
  return x.size(0) / tokens_per_frame;
}

// `t` on x's device, of x's dtype, shaped [rows, D].
inline void check_like_tokens(const at::Tensor& x, const char* x_name, const at::Tensor& t, const char* name,
                              int64_t rows, const char* rows_meaning) {
  check_same_device(x, t, x_name, name);
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, " must have the dtype of ", x_name, " (",
                   x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == x.size(1), name, " must be a 2-D tensor with D = ", x.size(1),
                    " columns (as ", x_name, "), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.size(0) == rows, name, " must have ", rows, " rows (", rows_meaning, "), got ", t.size(0));
}

inline void check_per_frame(const at::Tensor& x, const char* x_name, const at::Tensor& t, const char* name,
                            int64_t frames) {
  check_like_tokens(x, x_name, t, name, frames, "one per frame: T / tokens_per_frame");
}

inline void check_per_token(const at::Tensor& x, const char* x_name, const at::Tensor& t, const char* name) {
  check_like_tokens(x, x_name, t, name, x.size(0), "one per token");
}

// mean / rstd saved by the forward: [T] in the accumulation type (float64 for float64 x, else float32).
inline void check_row_stats(const at::Tensor& x, const char* x_name, const at::Tensor& t, const char* name) {
  check_same_device(x, t, x_name, name);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(t.scalar_type() == acc, name, " must be ", acc, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), name, " must be a 1-D tensor with one entry per token (",
                    x.size(0), "), got shape ", t.sizes());
}

// ---- the checks of each op (shared by the CPU kernels and the CUDA glue); each returns F ----

inline int64_t check_adaln_modulate_args(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                         int64_t tokens_per_frame) {
  const int64_t frames = check_adaln_tokens(x, "x", tokens_per_frame);
  check_per_frame(x, "x", shift, "shift", frames);
  check_per_frame(x, "x", scale, "scale", frames);
  return frames;
}

inline int64_t check_adaln_modulate_backward_args(const at::Tensor& grad_y, const at::Tensor& x,
                                                  const at::Tensor& scale, const at::Tensor& mean,
                                                  const at::Tensor& rstd, int64_t tokens_per_frame) {
  const int64_t frames = check_adaln_tokens(x, "x", tokens_per_frame);
  check_per_token(x, "x", grad_y, "grad_y");
  check_per_frame(x, "x", scale, "scale", frames);
  check_row_stats(x, "x", mean, "mean");
  check_row_stats(x, "x", rstd, "rstd");
  return frames;
}

inline int64_t check_gated_residual_args(const at::Tensor& x, const at::Tensor& h, const at::Tensor& gate,
                                         int64_t tokens_per_frame) {
  const int64_t frames = check_adaln_tokens(x, "x", tokens_per_frame);
  check_per_token(x, "x", h, "h");
  check_per_frame(x, "x", gate, "gate", frames);
  return frames;
}

inline int64_t check_gated_residual_backward_args(const at::Tensor& grad_out, const at::Tensor& h,
                                                  const at::Tensor& gate, int64_t tokens_per_frame) {
  const int64_t frames = check_adaln_tokens(h, "h", tokens_per_frame);
  check_per_token(h, "h", grad_out, "grad_out");
  check_per_frame(h, "h", gate, "gate", frames);
  return frames;
}

inline int64_t check_gated_residual_adaln_args(const at::Tensor& x, const at::Tensor& h, const at::Tensor& gate,
                                               const at::Tensor& shift, const at::Tensor& scale,
                                               int64_t tokens_per_frame) {
  const int64_t frames = check_gated_residual_args(x, h, gate, tokens_per_frame);
  check_per_frame(x, "x", shift, "shift", frames);
  check_per_frame(x, "x", scale, "scale", frames);
  return frames;
}

inline int64_t check_gated_residual_adaln_backward_args(const at::Tensor& grad_x_new, const at::Tensor& grad_y,
                                                        const at::Tensor& x_new, const at::Tensor& h,
                                                        const at::Tensor& gate, const at::Tensor& scale,
                                                        const at::Tensor& mean, const at::Tensor& rstd,
                                                        int64_t tokens_per_frame) {
  const int64_t frames = check_adaln_modulate_backward_args(grad_y, x_new, scale, mean, rstd, tokens_per_frame);
  check_per_token(x_new, "x", grad_x_new, "grad_x_new");
  check_per_token(x_new, "x", h, "h");
  check_per_frame(x_new, "x", gate, "gate", frames);
  return frames;
}

}  // namespace flowception
