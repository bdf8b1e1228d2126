// Registers the native kernels as PyTorch operators in the namespace edgeopt_native (CPU only, forward only).
#include <torch/library.h>

#include "kernels.h"

namespace {

std::string cpu_isa() { return edgeopt::isa_name(edgeopt::pick_isa(false)); }

}  // namespace

TORCH_LIBRARY(edgeopt_native, m) {
  m.def("group_norm_act(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, str act, "
        "bool scalar=False) -> Tensor");
  m.def("layer_norm_act(Tensor x, int[] normalized_shape, Tensor? weight, Tensor? bias, float eps, str act, "
        "bool scalar=False) -> Tensor");
  m.def("partial_softmax_attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? mask, int q_block, "
        "int k_block, bool scalar=False) -> Tensor");
  m.def("flash_attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? mask, int q_block, int k_block, "
        "bool scalar=False) -> Tensor");
  m.def("winograd_conv2d(Tensor x, Tensor U, Tensor? bias, int[] padding, int m, bool scalar=False) -> Tensor");
  m.def("winograd_matrices(int m) -> (Tensor, Tensor)", &edgeopt::winograd_matrices);
  m.def("workspace_bytes() -> int", &edgeopt::workspace_bytes);
  m.def("cpu_isa() -> str", &cpu_isa);
}

TORCH_LIBRARY_IMPL(edgeopt_native, CPU, m) {
  m.impl("group_norm_act", &edgeopt::group_norm_act);
  m.impl("layer_norm_act", &edgeopt::layer_norm_act);
  m.impl("partial_softmax_attention", &edgeopt::partial_softmax_attention);
  m.impl("flash_attention", &edgeopt::flash_attention);
  m.impl("winograd_conv2d", &edgeopt::winograd_conv2d);
}
