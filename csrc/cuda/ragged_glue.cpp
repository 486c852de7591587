// CUDA glue of ragged_insert / ragged_strip (built only with a CUDA build of torch): the shared
// checks and index bookkeeping run on host copies (csrc/ragged.h), the row copies and the
// Philox noise run in the kernels of ragged.cu on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/glue.h"
#include "cuda/ragged_launch.h"
#include "ragged.h"

namespace flowception {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor> ragged_insert_cuda(const Tensor& frames, const Tensor& cu_seqlens,
                                                              const Tensor& counts, int64_t total_new,
                                                              int64_t seed) {
  const c10::cuda::CUDAGuard guard(frames.device());
  const InsertPlan plan = plan_insert(frames, cu_seqlens, counts, total_new);
  const auto dev = frames.device();
  Tensor src_pos = plan.src_pos.to(dev), new_pos = plan.new_pos.to(dev), out_cu = plan.out_cu_seqlens.to(dev);
  const Tensor x = frames.contiguous();
  Tensor out = empty_rows_like(frames, x.size(0) + total_new);
  const int64_t s = row_numel(frames);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  cuda::check_launch(cuda::launch_copy_rows(x.const_data_ptr(), out.data_ptr(), src_pos.const_data_ptr<int64_t>(),
                                            nullptr, x.size(0), s * x.element_size(), stream),
                     "ragged_insert copy");
  cuda::check_launch(cuda::launch_gaussian_rows(out.data_ptr(), cuda::dtype_of(out), new_pos.const_data_ptr<int64_t>(),
                                                total_new, s, static_cast<uint64_t>(seed), stream),
                     "ragged_insert noise");
  return {out, out_cu, src_pos, new_pos};
}

std::tuple<Tensor, Tensor, Tensor> ragged_strip_cuda(const Tensor& frames, const Tensor& cu_seqlens, const Tensor& keep,
                                                     int64_t total_kept) {
  const c10::cuda::CUDAGuard guard(frames.device());
  const StripPlan plan = plan_strip(frames, cu_seqlens, keep, total_kept);
  const auto dev = frames.device();
  Tensor src_index = plan.src_index.to(dev), out_cu = plan.out_cu_seqlens.to(dev);
  const Tensor x = frames.contiguous();
  Tensor out = empty_rows_like(frames, total_kept);
  cuda::check_launch(cuda::launch_copy_rows(x.const_data_ptr(), out.data_ptr(), nullptr,
                                            src_index.const_data_ptr<int64_t>(), total_kept,
                                            row_numel(frames) * x.element_size(), c10::cuda::getCurrentCUDAStream()),
                     "ragged_strip copy");
  return {out, out_cu, src_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(flowception, CUDA, m) {
  m.impl("ragged_insert", &ragged_insert_cuda);
  m.impl("ragged_strip", &ragged_strip_cuda);
}

}  // namespace flowception
