// CUDA dispatcher glue of local_frame_attention (built only with a CUDA torch): argument checks,
// contiguous inputs, output allocation, and the raw-pointer launchers of local_attention.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "cuda/glue.h"
#include "cuda/local_attention_launch.h"
#include "local_attention.h"

namespace flowception {
namespace {

using at::Tensor;
using cuda::check_launch;

// Checks the arguments and describes the problem; the contiguous inputs it points at are
// returned in `keep`, which must outlive the launch.
cuda::AttentionProblem make_problem(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                    int64_t tokens_per_frame, int64_t window, bool causal, double scale,
                                    std::vector<Tensor>& keep) {
  check_attention_inputs(q, k, v, cu_seqlens, tokens_per_frame, window);
  const int64_t d = q.size(2);
  TORCH_CHECK_VALUE(d == 32 || d == 64 || d == 128, "head dim q.size(2) must be 32, 64 or 128 on CUDA, got ", d);
  keep = {q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens.contiguous()};
  return {cuda::dtype_of(q), keep[0].const_data_ptr(), keep[1].const_data_ptr(), keep[2].const_data_ptr(),
          keep[3].const_data_ptr<int64_t>(), cu_seqlens.numel() - 1, q.size(0), q.size(1), d, tokens_per_frame,
          window, causal, scale};
}

std::tuple<Tensor, Tensor> local_frame_attention_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                                      const Tensor& cu_seqlens, int64_t tokens_per_frame,
                                                      int64_t window, bool causal, double scale) {
  std::vector<Tensor> keep;
  const cuda::AttentionProblem p = make_problem(q, k, v, cu_seqlens, tokens_per_frame, window, causal, scale, keep);
  const c10::cuda::CUDAGuard guard(q.device());
  Tensor out = at::empty_like(keep[0]);
  Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(lse_dtype(q.scalar_type())));
  check_launch(cuda::launch_local_attention_forward(p, out.data_ptr(), lse.data_ptr(),
                                                    c10::cuda::getCurrentCUDAStream().stream()),
               "local_frame_attention");
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> local_frame_attention_backward_cuda(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const c10::optional<Tensor>& out,
    const Tensor& lse, const c10::optional<Tensor>& grad_lse, const Tensor& cu_seqlens, int64_t tokens_per_frame,
    int64_t window, bool causal, double scale) {
  // The CUDA kernels always compute the softmax delta exactly (sum_j P_ij dP_ij); `out` is only checked.
  std::vector<Tensor> keep;
  const cuda::AttentionProblem p = make_problem(q, k, v, cu_seqlens, tokens_per_frame, window, causal, scale, keep);
  check_backward_inputs(q, grad_out, out, lse, grad_lse);
  const c10::cuda::CUDAGuard guard(q.device());
  const Tensor go = grad_out.contiguous(), lse_c = lse.contiguous();
  const Tensor gl = grad_lse.has_value() ? grad_lse->contiguous() : Tensor();
  Tensor delta = at::empty_like(lse_c);
  Tensor dq = at::empty_like(keep[0]), dk = at::empty_like(keep[0]), dv = at::empty_like(keep[0]);
  check_launch(cuda::launch_local_attention_backward(p, go.const_data_ptr(), lse_c.const_data_ptr(),
                                                     gl.defined() ? gl.const_data_ptr() : nullptr, delta.data_ptr(),
                                                     dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                                     c10::cuda::getCurrentCUDAStream().stream()),
               "local_frame_attention_backward");
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(flowception, CUDA, m) {
  m.impl("local_frame_attention", &local_frame_attention_cuda);
  m.impl("local_frame_attention_backward", &local_frame_attention_backward_cuda);
}

}  // namespace flowception
