// CUDA glue of the per-frame AdaLN ops: the checks of the CPU kernels (adaln_checks.h), output
// allocation, and the raw-pointer launchers of adaln.cu on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "adaln_checks.h"
#include "cuda/adaln_launch.h"

namespace flowception {
namespace {

using at::Tensor;

cuda::DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {  // the argument checks admit the four floating types only
    case at::kDouble: return cuda::DType::kFloat64;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: return cuda::DType::kFloat32;
  }
}

Tensor contiguous_or_undefined(const Tensor& t) { return t.defined() ? t.contiguous() : t; }
const void* in_ptr(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* out_ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

at::TensorOptions stats_options(const Tensor& x) {
  return x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

struct Forward {
  Tensor res, y, mean, rstd;
};

Forward forward(const Tensor& x_in, const Tensor& h_in, const Tensor& gate_in, const Tensor& shift_in,
                const Tensor& scale_in, int64_t tokens_per_frame, double eps, bool norm, bool residual,
                const char* op) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = x_in.contiguous(), h = contiguous_or_undefined(h_in), gate = contiguous_or_undefined(gate_in),
               shift = contiguous_or_undefined(shift_in), scale = contiguous_or_undefined(scale_in);
  Forward out;
  if (residual) out.res = at::empty(x.sizes(), x.options());
  if (norm) {
    out.y = at::empty(x.sizes(), x.options());
    out.mean = at::empty({x.size(0)}, stats_options(x));
    out.rstd = at::empty({x.size(0)}, stats_options(x));
  }
  cuda::AdalnBuffers b;
  b.rows = x.size(0);
  b.dim = x.size(1);
  b.tokens_per_frame = tokens_per_frame;
  b.eps = eps;
  b.x = in_ptr(x);
  b.h = in_ptr(h);
  b.gate = in_ptr(gate);
  b.shift = in_ptr(shift);
  b.scale = in_ptr(scale);
  b.res = out_ptr(out.res);
  b.y = out_ptr(out.y);
  b.mean = out_ptr(out.mean);
  b.rstd = out_ptr(out.rstd);
  check_launch(cuda::launch_adaln_forward(b, dtype_of(x), norm, residual, c10::cuda::getCurrentCUDAStream()), op);
  return out;
}

struct Backward {
  Tensor dx, dh, dgate, dshift, dscale;
};

// `ref` is the [T, D] input giving shape and options (x when norm, else h).
Backward backward(const Tensor& ref, const Tensor& grad_res_in, const Tensor& grad_y_in, const Tensor& x_in,
                  const Tensor& h_in, const Tensor& gate_in, const Tensor& scale_in, const Tensor& mean_in,
                  const Tensor& rstd_in, int64_t tokens_per_frame, int64_t frames, bool norm, bool residual,
                  const char* op) {
  const c10::cuda::CUDAGuard guard(ref.device());
  const Tensor grad_res = contiguous_or_undefined(grad_res_in), grad_y = contiguous_or_undefined(grad_y_in),
               x = contiguous_or_undefined(x_in), h = contiguous_or_undefined(h_in),
               gate = contiguous_or_undefined(gate_in), scale = contiguous_or_undefined(scale_in),
               mean = contiguous_or_undefined(mean_in), rstd = contiguous_or_undefined(rstd_in);
  const int64_t dim = ref.size(1);
  Backward out;
  if (norm) {
    out.dx = at::empty(ref.sizes(), ref.options());
    out.dshift = at::empty({frames, dim}, ref.options());
    out.dscale = at::empty({frames, dim}, ref.options());
  }
  if (residual) {
    out.dh = at::empty(ref.sizes(), ref.options());
    out.dgate = at::empty({frames, dim}, ref.options());
  }
  cuda::AdalnBuffers b;
  b.rows = ref.size(0);
  b.dim = dim;
  b.tokens_per_frame = tokens_per_frame;
  b.x = in_ptr(x);
  b.h = in_ptr(h);
  b.gate = in_ptr(gate);
  b.scale = in_ptr(scale);
  b.mean = out_ptr(mean);
  b.rstd = out_ptr(rstd);
  b.grad_res = in_ptr(grad_res);
  b.grad_y = in_ptr(grad_y);
  b.dx = out_ptr(out.dx);
  b.dh = out_ptr(out.dh);
  b.dgate = out_ptr(out.dgate);
  b.dshift = out_ptr(out.dshift);
  b.dscale = out_ptr(out.dscale);
  check_launch(cuda::launch_adaln_backward(b, dtype_of(ref), norm, residual, c10::cuda::getCurrentCUDAStream()), op);
  return out;
}

std::tuple<Tensor, Tensor, Tensor> adaln_modulate_cuda(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                                       int64_t tokens_per_frame, double eps) {
  check_adaln_modulate_args(x, shift, scale, tokens_per_frame);
  auto o = forward(x, Tensor(), Tensor(), shift, scale, tokens_per_frame, eps, true, false, "adaln_modulate");
  return {o.y, o.mean, o.rstd};
}

std::tuple<Tensor, Tensor, Tensor> adaln_modulate_backward_cuda(const Tensor& grad_y, const Tensor& x,
                                                                const Tensor& scale, const Tensor& mean,
                                                                const Tensor& rstd, int64_t tokens_per_frame) {
  const int64_t frames = check_adaln_modulate_backward_args(grad_y, x, scale, mean, rstd, tokens_per_frame);
  auto g = backward(x, Tensor(), grad_y, x, Tensor(), Tensor(), scale, mean, rstd, tokens_per_frame, frames, true,
                    false, "adaln_modulate_backward");
  return {g.dx, g.dshift, g.dscale};
}

Tensor gated_residual_cuda(const Tensor& x, const Tensor& h, const Tensor& gate, int64_t tokens_per_frame) {
  check_gated_residual_args(x, h, gate, tokens_per_frame);
  return forward(x, h, gate, Tensor(), Tensor(), tokens_per_frame, 0.0, false, true, "gated_residual").res;
}

std::tuple<Tensor, Tensor> gated_residual_backward_cuda(const Tensor& grad_out, const Tensor& h, const Tensor& gate,
                                                        int64_t tokens_per_frame) {
  const int64_t frames = check_gated_residual_backward_args(grad_out, h, gate, tokens_per_frame);
  auto g = backward(h, grad_out, Tensor(), Tensor(), h, gate, Tensor(), Tensor(), Tensor(), tokens_per_frame, frames,
                    false, true, "gated_residual_backward");
  return {g.dh, g.dgate};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gated_residual_adaln_cuda(const Tensor& x, const Tensor& h,
                                                                     const Tensor& gate, const Tensor& shift,
                                                                     const Tensor& scale, int64_t tokens_per_frame,
                                                                     double eps) {
  check_gated_residual_adaln_args(x, h, gate, shift, scale, tokens_per_frame);
  auto o = forward(x, h, gate, shift, scale, tokens_per_frame, eps, true, true, "gated_residual_adaln");
  return {o.res, o.y, o.mean, o.rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gated_residual_adaln_backward_cuda(
    const Tensor& grad_x_new, const Tensor& grad_y, const Tensor& x_new, const Tensor& h, const Tensor& gate,
    const Tensor& scale, const Tensor& mean, const Tensor& rstd, int64_t tokens_per_frame) {
  const int64_t frames = check_gated_residual_adaln_backward_args(grad_x_new, grad_y, x_new, h, gate, scale, mean,
                                                                  rstd, tokens_per_frame);
  auto g = backward(x_new, grad_x_new, grad_y, x_new, h, gate, scale, mean, rstd, tokens_per_frame, frames, true,
                    true, "gated_residual_adaln_backward");
  return {g.dx, g.dh, g.dgate, g.dshift, g.dscale};
}

}  // namespace

TORCH_LIBRARY_IMPL(flowception, CUDA, m) {
  m.impl("adaln_modulate", &adaln_modulate_cuda);
  m.impl("adaln_modulate_backward", &adaln_modulate_backward_cuda);
  m.impl("gated_residual", &gated_residual_cuda);
  m.impl("gated_residual_backward", &gated_residual_backward_cuda);
  m.impl("gated_residual_adaln", &gated_residual_adaln_cuda);
  m.impl("gated_residual_adaln_backward", &gated_residual_adaln_backward_cuda);
}

}  // namespace flowception
