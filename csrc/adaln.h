// The per-frame AdaLN ops above a device's drivers, shared by the CPU kernels (csrc/cpu/adaln.cpp)
// and the CUDA glue (csrc/cuda/adaln_glue.cpp): the tensors of one call, the argument checks (their
// messages match flowception_ext.ops.reference.check_adaln_args) and the six op entry points.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>

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

// ---- the ops -------------------------------------------------------------------------------

// `Device` provides the drivers, which fill the outputs of `t`:
//   static AdalnTensors forward(AdalnTensors t, int64_t tokens_per_frame, double eps, bool norm, bool residual);
//   static AdalnTensors backward(AdalnTensors t, int64_t tokens_per_frame, int64_t frames, bool norm, bool residual);
// norm: the modulated LayerNorm (and its gradients); residual: x + gate * h (and its gradients).
template <typename Device>
struct AdalnOps {
  using Tensor = at::Tensor;

  static std::tuple<Tensor, Tensor, Tensor> adaln_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                                           int64_t tokens_per_frame, double eps) {
    const int64_t frames = check_adaln_tokens(x, "x", tokens_per_frame);
    check_per_frame(x, "x", shift, "shift", frames);
    check_per_frame(x, "x", scale, "scale", frames);
    const auto t = Device::forward({.x = x, .shift = shift, .scale = scale}, tokens_per_frame, eps, true, false);
    return {t.y, t.mean, t.rstd};
  }

  static std::tuple<Tensor, Tensor, Tensor> adaln_modulate_backward(const Tensor& grad_y, const Tensor& x,
                                                                    const Tensor& scale, const Tensor& mean,
                                                                    const Tensor& rstd, int64_t tokens_per_frame) {
    const int64_t frames = check_norm_backward(grad_y, x, scale, mean, rstd, tokens_per_frame);
    const auto t = Device::backward({.x = x, .scale = scale, .mean = mean, .rstd = rstd, .grad_y = grad_y},
                                    tokens_per_frame, frames, true, false);
    return {t.dx, t.dshift, t.dscale};
  }

  static Tensor gated_residual(const Tensor& x, const Tensor& h, const Tensor& gate, int64_t tokens_per_frame) {
    check_residual(x, h, gate, tokens_per_frame);
    return Device::forward({.x = x, .h = h, .gate = gate}, tokens_per_frame, 0.0, false, true).res;
  }

  static std::tuple<Tensor, Tensor> gated_residual_backward(const Tensor& grad_out, const Tensor& h,
                                                            const Tensor& gate, int64_t tokens_per_frame) {
    const int64_t frames = check_adaln_tokens(h, "h", tokens_per_frame);
    check_per_token(h, "h", grad_out, "grad_out");
    check_per_frame(h, "h", gate, "gate", frames);
    const auto t = Device::backward({.h = h, .gate = gate, .grad_res = grad_out}, tokens_per_frame, frames, false, true);
    return {t.dh, t.dgate};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> gated_residual_adaln(const Tensor& x, const Tensor& h,
                                                                         const Tensor& gate, const Tensor& shift,
                                                                         const Tensor& scale, int64_t tokens_per_frame,
                                                                         double eps) {
    const int64_t frames = check_residual(x, h, gate, tokens_per_frame);
    check_per_frame(x, "x", shift, "shift", frames);
    check_per_frame(x, "x", scale, "scale", frames);
    const auto t = Device::forward({.x = x, .h = h, .gate = gate, .shift = shift, .scale = scale}, tokens_per_frame,
                                   eps, true, true);
    return {t.res, t.y, t.mean, t.rstd};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gated_residual_adaln_backward(
      const Tensor& grad_x_new, const Tensor& grad_y, const Tensor& x_new, const Tensor& h, const Tensor& gate,
      const Tensor& scale, const Tensor& mean, const Tensor& rstd, int64_t tokens_per_frame) {
    const int64_t frames = check_norm_backward(grad_y, x_new, scale, mean, rstd, tokens_per_frame);
    check_per_token(x_new, "x", grad_x_new, "grad_x_new");
    check_per_token(x_new, "x", h, "h");
    check_per_frame(x_new, "x", gate, "gate", frames);
    const auto t = Device::backward({.x = x_new, .h = h, .gate = gate, .scale = scale, .mean = mean, .rstd = rstd,
                                     .grad_res = grad_x_new, .grad_y = grad_y},
                                    tokens_per_frame, frames, true, true);
    return {t.dx, t.dh, t.dgate, t.dshift, t.dscale};
  }

  static void register_kernels(torch::Library& m) {
    m.impl("adaln_modulate", &adaln_modulate);
    m.impl("adaln_modulate_backward", &adaln_modulate_backward);
    m.impl("gated_residual", &gated_residual);
    m.impl("gated_residual_backward", &gated_residual_backward);
    m.impl("gated_residual_adaln", &gated_residual_adaln);
    m.impl("gated_residual_adaln_backward", &gated_residual_adaln_backward);
  }

 private:
  static int64_t check_residual(const Tensor& x, const Tensor& h, const Tensor& gate, int64_t tokens_per_frame) {
    const int64_t frames = check_adaln_tokens(x, "x", tokens_per_frame);
    check_per_token(x, "x", h, "h");
    check_per_frame(x, "x", gate, "gate", frames);
    return frames;
  }

  static int64_t check_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& scale, const Tensor& mean,
                                     const Tensor& rstd, int64_t tokens_per_frame) {
    const int64_t frames = check_adaln_tokens(x, "x", tokens_per_frame);
    check_per_token(x, "x", grad_y, "grad_y");
    check_per_frame(x, "x", scale, "scale", frames);
    check_row_stats(x, "x", mean, "mean");
    check_row_stats(x, "x", rstd, "rstd");
    return frames;
  }
};

}  // namespace flowception
