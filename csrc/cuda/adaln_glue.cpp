// CUDA glue of the per-frame AdaLN ops: the drivers behind the shared op entry points and checks
// (csrc/adaln.h): output allocation and the raw-pointer launchers of adaln.cu on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "adaln.h"
#include "cuda/adaln_launch.h"
#include "cuda/glue.h"

namespace flowception {
namespace {

using at::Tensor;
using cuda::check_launch;
using cuda::dtype_of;

const void* in_ptr(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* out_ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

at::TensorOptions stats_options(const Tensor& x) {
  return x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

cuda::AdalnBuffers buffers(const AdalnTensors& t, const Tensor& ref, int64_t tokens_per_frame, double eps) {
  cuda::AdalnBuffers b;
  b.rows = ref.size(0);
  b.dim = ref.size(1);
  b.tokens_per_frame = tokens_per_frame;
  b.eps = eps;
  b.x = in_ptr(t.x);
  b.h = in_ptr(t.h);
  b.gate = in_ptr(t.gate);
  b.shift = in_ptr(t.shift);
  b.scale = in_ptr(t.scale);
  b.res = out_ptr(t.res);
  b.y = out_ptr(t.y);
  b.mean = out_ptr(t.mean);
  b.rstd = out_ptr(t.rstd);
  b.grad_res = in_ptr(t.grad_res);
  b.grad_y = in_ptr(t.grad_y);
  b.dx = out_ptr(t.dx);
  b.dh = out_ptr(t.dh);
  b.dgate = out_ptr(t.dgate);
  b.dshift = out_ptr(t.dshift);
  b.dscale = out_ptr(t.dscale);
  return b;
}


// The drivers for AdalnOps.
struct Cuda {
  static AdalnTensors forward(AdalnTensors t, int64_t tokens_per_frame, double eps, bool norm, bool residual) {
    const c10::cuda::CUDAGuard guard(t.x.device());
    t.make_inputs_contiguous();
    if (residual) t.res = at::empty(t.x.sizes(), t.x.options());
    if (norm) {
      t.y = at::empty(t.x.sizes(), t.x.options());
      t.mean = at::empty({t.x.size(0)}, stats_options(t.x));
      t.rstd = at::empty({t.x.size(0)}, stats_options(t.x));
    }
    check_launch(cuda::launch_adaln_forward(buffers(t, t.x, tokens_per_frame, eps), dtype_of(t.x), norm, residual,
                                            c10::cuda::getCurrentCUDAStream()),
                 "AdaLN forward");
    return t;
  }

  static AdalnTensors backward(AdalnTensors t, int64_t tokens_per_frame, int64_t frames, bool norm, bool residual) {
    const Tensor ref = norm ? t.x : t.h;  // a [T, D] input: shape and options of the gradients
    const c10::cuda::CUDAGuard guard(ref.device());
    t.make_inputs_contiguous();
    if (norm) {
      t.dx = at::empty(ref.sizes(), ref.options());
      t.dshift = at::empty({frames, ref.size(1)}, ref.options());
      t.dscale = at::empty({frames, ref.size(1)}, ref.options());
    }
    if (residual) {
      t.dh = at::empty(ref.sizes(), ref.options());
      t.dgate = at::empty({frames, ref.size(1)}, ref.options());
    }
    check_launch(cuda::launch_adaln_backward(buffers(t, ref, tokens_per_frame, 0.0), dtype_of(ref), norm, residual,
                                             c10::cuda::getCurrentCUDAStream()),
                 "AdaLN backward");
    return t;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(flowception, CUDA, m) { AdalnOps<Cuda>::register_kernels(m); }

}  // namespace flowception
