// Every op schema of the `flowception` namespace, in one place, plus the Python module init.
// Kernels live in csrc/cpu/<op>.cpp and csrc/cuda/<op>_glue.cpp; fake kernels, autograd and
// flop formulas in flowception_ext/ops/.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(flowception, m) {
  // Insert counts[j] fresh N(0, I) frames after frame j of a packed batch (noise keyed by
  // (seed, output row)). Returns (out, out_cu_seqlens, src_pos, new_pos).
  m.def(
      "ragged_insert(Tensor frames, Tensor cu_seqlens, Tensor counts, int total_new, int seed)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // Keep the frames where keep[j] is set. Returns (out, out_cu_seqlens, src_index).
  m.def(
      "ragged_strip(Tensor frames, Tensor cu_seqlens, Tensor keep, int total_kept)"
      " -> (Tensor, Tensor, Tensor)");
  // Per-frame AdaLN on tokens x [T, D], token t in frame t // tokens_per_frame:
  // y = LayerNorm(x) * (1 + scale[frame]) + shift[frame]. Returns (y, mean [T], rstd [T]).
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, int tokens_per_frame, float eps)"
        " -> (Tensor, Tensor, Tensor)");
  // Backward of adaln_modulate from its saved row statistics. Returns (dx, dshift, dscale).
  m.def("adaln_modulate_backward(Tensor grad_y, Tensor x, Tensor scale, Tensor mean, Tensor rstd,"
        " int tokens_per_frame) -> (Tensor, Tensor, Tensor)");
  // Gated residual x + gate[frame] * h.
  m.def("gated_residual(Tensor x, Tensor h, Tensor gate, int tokens_per_frame) -> Tensor");
  // Backward of gated_residual (dx is grad_out itself). Returns (dh, dgate).
  m.def("gated_residual_backward(Tensor grad_out, Tensor h, Tensor gate, int tokens_per_frame)"
        " -> (Tensor, Tensor)");
  // gated_residual then adaln_modulate in one pass. Returns (x_new, y, mean, rstd).
  m.def("gated_residual_adaln(Tensor x, Tensor h, Tensor gate, Tensor shift, Tensor scale, int tokens_per_frame,"
        " float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  // Backward of gated_residual_adaln. Returns (dx, dh, dgate, dshift, dscale).
  m.def("gated_residual_adaln_backward(Tensor grad_x_new, Tensor grad_y, Tensor x_new, Tensor h, Tensor gate,"
        " Tensor scale, Tensor mean, Tensor rstd, int tokens_per_frame)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Attention of packed tokens [T, H, d] within each video (cu_seqlens in frames of
  // tokens_per_frame tokens): frame f sees frames g with |f - g| <= window (-1: all), and
  // g <= f when causal. Returns (out [T, H, d], lse [H, T] float32, float64 for float64 inputs).
  m.def(
      "local_frame_attention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int tokens_per_frame,"
      " int window, bool causal, float scale) -> (Tensor, Tensor)");
  // Its backward (recomputes from lse; grad_lse may be None; out gives the softmax delta
  // <grad_out, out> directly, None computes it exactly, for rounded bf16/fp16 outputs).
  // Returns (dq, dk, dv).
  m.def(
      "local_frame_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? out, Tensor lse,"
      " Tensor? grad_lse, Tensor cu_seqlens, int tokens_per_frame, int window, bool causal, float scale)"
      " -> (Tensor, Tensor, Tensor)");

  // Private, for tests: C = A B (+ C when c is given) through one GEMM kernel of csrc/cpu/gemm.h,
  // kernel = "blas_nn" | "blas_nt" | "blas_tn" (float, double; a is [k, m] for tn, b is [n, k]
  // for nt), "fma" (float, AVX-512 builds), "bf16" | "bf16_transposed" (bfloat16 in, float out,
  // b is [n, k] for the transposed packing; where a bf16 backend exists).
  m.def("_cpu_gemm_test(Tensor a, Tensor b, str kernel, Tensor? c=None) -> Tensor");
}

namespace flowception {
const char* bf16_gemm_backend();  // csrc/cpu/gemm.cpp
}

namespace {

#ifndef FLOWCEPTION_CUDA_COMPILE_CHECKED
#define FLOWCEPTION_CUDA_COMPILE_CHECKED 0
#endif
#ifdef FLOWCEPTION_WITH_CUDA
constexpr bool kCudaKernels = true;
#else
constexpr bool kCudaKernels = false;
#endif

PyObject* build_info(PyObject*, PyObject*) {
  return Py_BuildValue("{s:s,s:O,s:O,s:O,s:s,s:z}", "torch_version", FLOWCEPTION_TORCH_VERSION,
                       "cpu_kernels", Py_True, "cuda_kernels", kCudaKernels ? Py_True : Py_False,
                       "cuda_compile_checked", FLOWCEPTION_CUDA_COMPILE_CHECKED ? Py_True : Py_False,
                       "cpu_capability", FLOWCEPTION_CPU_CAPABILITY_NAME,
                       "cpu_bf16_gemm", flowception::bf16_gemm_backend());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this build of the extension contains."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "flowception_ext compiled ops", -1, methods};

}  // namespace

// Importing the module loads the shared library, which registers the ops above.
PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
