// Which frames see which in local_frame_attention, shared by the CPU and CUDA kernels.
// A query frame f of a video with frames [v0, v1) attends to the key frames g of the same
// video with f - before <= g <= f + after (a negative reach is unbounded): before = after =
// window for the bidirectional op, after = 0 when frame-causal. Both bounds are monotone in f,
// so every frame (and every run of frames) sees one contiguous range of frames, hence one
// contiguous range of packed tokens.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace flowception {

struct FrameReach {
  int64_t before;  // frames to the left a row frame sees (-1: all)
  int64_t after;   // frames to the right (-1: all)
};

// Reach of a query frame over the key frames.
FC_HOST_DEVICE FrameReach query_reach(int64_t window, bool causal) { return {window, causal ? 0 : window}; }

// Reach of a key frame over the query frames that see it (the transposed relation).
FC_HOST_DEVICE FrameReach key_reach(int64_t window, bool causal) {
  const FrameReach r = query_reach(window, causal);
  return {r.after, r.before};
}

// First frame of [v0, v1) seen by frame f.
FC_HOST_DEVICE int64_t reach_lo(FrameReach r, int64_t f, int64_t v0) {
  return (r.before < 0 || r.before >= f - v0) ? v0 : f - r.before;
}

// One past the last frame of [v0, v1) seen by frame f.
FC_HOST_DEVICE int64_t reach_hi(FrameReach r, int64_t f, int64_t v1) {
  return (r.after < 0 || r.after >= v1 - f) ? v1 : f + r.after + 1;
}

}  // namespace flowception
