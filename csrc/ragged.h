// Argument checks and index bookkeeping of ragged_insert / ragged_strip, shared by the CPU
// kernels and the CUDA glue. Works on host copies of the (small) index tensors; the returned
// index tensors live on the CPU.
#pragma once
#include <ATen/ATen.h>

#include <limits>
#include <vector>

#include "checks.h"

namespace flowception {

struct InsertPlan {
  at::Tensor src_pos;         // [N] output row of every source frame
  at::Tensor new_pos;         // [M] output rows of the new frames, in order
  at::Tensor out_cu_seqlens;  // [B+1]
};

struct StripPlan {
  at::Tensor src_index;       // [K] source row of every kept frame
  at::Tensor out_cu_seqlens;  // [B+1]
};

inline at::Tensor empty_rows_like(const at::Tensor& frames, int64_t rows) {
  std::vector<int64_t> shape(frames.sizes().begin(), frames.sizes().end());
  shape[0] = rows;
  return at::empty(shape, frames.options().memory_format(at::MemoryFormat::Contiguous));
}

inline InsertPlan plan_insert(const at::Tensor& frames, const at::Tensor& cu_seqlens, const at::Tensor& counts,
                              int64_t total_new) {
  check_frames(frames);
  const int64_t n = frames.size(0);
  const at::Tensor cu = check_cu_seqlens(cu_seqlens, n, frames);
  TORCH_CHECK_TYPE(counts.scalar_type() == at::kLong, "counts must be int64, got ", counts.scalar_type());
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.size(0) == n,
                    "counts must be a 1-D tensor with one entry per frame (", n, "), got shape ", counts.sizes());
  check_same_device(frames, counts, "frames", "counts");
  TORCH_CHECK_VALUE(total_new >= 0, "total_new must be >= 0, got ", total_new);

  const at::Tensor cnt = counts.to(at::kCPU).contiguous();
  const int64_t* c = cnt.const_data_ptr<int64_t>();
  const int64_t nb = cu.numel() - 1;
  const int64_t* cuv = cu.const_data_ptr<int64_t>();
  const auto opts = cnt.options();

  InsertPlan plan{at::empty({n}, opts), at::Tensor(), at::empty({nb + 1}, opts)};
  int64_t* sp = plan.src_pos.data_ptr<int64_t>();
  int64_t inserted = 0;
  for (int64_t j = 0; j < n; ++j) {
    TORCH_CHECK_VALUE(c[j] >= 0, "counts must be >= 0, but counts[", j, "] = ", c[j]);
    // N + counts.sum() is the output size: it must fit int64 (a wrapped sum would corrupt memory).
    TORCH_CHECK_VALUE(c[j] <= std::numeric_limits<int64_t>::max() - n - inserted,
                      "counts too large: frames.size(0) + counts.sum() overflows int64 (counts[", j, "] = ", c[j], ")");
    sp[j] = j + inserted;
    inserted += c[j];
  }
  TORCH_CHECK_VALUE(inserted == total_new, "total_new (", total_new, ") must equal counts.sum() (", inserted, ")");

  plan.new_pos = at::empty({total_new}, opts);
  int64_t* np = plan.new_pos.data_ptr<int64_t>();
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t k = 1; k <= c[j]; ++k) np[m++] = sp[j] + k;
  }
  int64_t* oc = plan.out_cu_seqlens.data_ptr<int64_t>();
  oc[0] = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t last = cuv[b + 1];  // rows of video b end before src_pos[last] (or the end)
    oc[b + 1] = last < n ? sp[last] : n + total_new;
  }
  return plan;
}

inline StripPlan plan_strip(const at::Tensor& frames, const at::Tensor& cu_seqlens, const at::Tensor& keep,
                            int64_t total_kept) {
  check_frames(frames);
  const int64_t n = frames.size(0);
  const at::Tensor cu = check_cu_seqlens(cu_seqlens, n, frames);
  TORCH_CHECK_TYPE(keep.scalar_type() == at::kBool, "keep must be bool, got ", keep.scalar_type());
  TORCH_CHECK_VALUE(keep.dim() == 1 && keep.size(0) == n,
                    "keep must be a 1-D tensor with one entry per frame (", n, "), got shape ", keep.sizes());
  check_same_device(frames, keep, "frames", "keep");
  TORCH_CHECK_VALUE(total_kept >= 0, "total_kept must be >= 0, got ", total_kept);

  const at::Tensor kp = keep.to(at::kCPU).contiguous();
  const bool* k = kp.const_data_ptr<bool>();
  const int64_t nb = cu.numel() - 1;
  const int64_t* cuv = cu.const_data_ptr<int64_t>();
  int64_t kept = 0;
  for (int64_t j = 0; j < n; ++j) kept += k[j];
  TORCH_CHECK_VALUE(kept == total_kept, "total_kept (", total_kept, ") must equal keep.sum() (", kept, ")");

  const auto opts = cu.options();
  StripPlan plan{at::empty({total_kept}, opts), at::empty({nb + 1}, opts)};
  int64_t* si = plan.src_index.data_ptr<int64_t>();
  int64_t* oc = plan.out_cu_seqlens.data_ptr<int64_t>();
  int64_t m = 0;
  oc[0] = 0;
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t j = cuv[b]; j < cuv[b + 1]; ++j) {
      if (k[j]) si[m++] = j;
    }
    oc[b + 1] = m;
  }
  return plan;
}

}  // namespace flowception
