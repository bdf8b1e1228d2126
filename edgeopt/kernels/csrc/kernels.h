// Declarations shared by the native kernels' sources: the kernels, their argument checks, the workspace record.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

#include "vec.h"

namespace edgeopt {

// act(group_norm(x)) for x (N, C, *), fp32 contiguous: per (n, group) one statistics pass and one pass that
// normalizes, applies the affine and the activation, and writes y.
at::Tensor group_norm_act(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps, c10::string_view act, bool scalar);

// act(layer_norm(x)) over the trailing `normalized_shape` dims, the same two passes per row.
at::Tensor layer_norm_act(const at::Tensor& x, at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps, c10::string_view act, bool scalar);

// softmax(q k^T · scale + mask) v, q (B, nh, Tq, hs), k (B, nh, Tk, hs), v (B, nh, Tk, hv), mask (B, nh, Tq, Tk)
// with any strides (a broadcast view) or none. Forward only.
at::Tensor partial_softmax_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                     const std::optional<at::Tensor>& mask, int64_t q_block, int64_t k_block,
                                     bool scalar);
at::Tensor flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           const std::optional<at::Tensor>& mask, int64_t q_block, int64_t k_block, bool scalar);

// Winograd F(m×m, 3×3) convolution, m = 2 or 4: x (N, C_in, H, W), U (α², C_out, C_in) the transformed
// weights G g G^T (α = m + 2, index k·α + l for the row k and column l of the α×α tile), bias (C_out) or
// none, zero padding (left, right, top, bottom); stride 1, dilation 1, groups 1. Forward only.
at::Tensor winograd_conv2d(const at::Tensor& x, const at::Tensor& U, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef padding, int64_t m, bool scalar);
// The (A^T, B^T) matrices winograd_conv2d uses for F(m×m, 3×3), shapes (m, α) and (α, α).
std::tuple<at::Tensor, at::Tensor> winograd_matrices(int64_t m);

// Bytes of scratch memory (every thread's buffers together) the last kernel call in this process allocated.
int64_t workspace_bytes();
void set_workspace_bytes(int64_t bytes);

// A tensor argument the kernels accept: fp32 and contiguous, else a ValueError naming it.
inline void check_float_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, ": expected a float32 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor (call .contiguous() first)");
}

}  // namespace edgeopt
