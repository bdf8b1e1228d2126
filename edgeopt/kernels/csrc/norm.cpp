// GroupNorm / LayerNorm fused with SiLU or GELU, fp32, forward only: per normalized group one statistics pass
// (sum and sum of squares in double, shifted by the group's first element) and one pass that writes
// act(x·a + b) (GroupNorm: a = rstd·weight, b = bias − mean·a per channel; LayerNorm: the affine per element
// after (x − mean)·rstd). Nothing else is allocated.
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

#include "kernels.h"

namespace edgeopt {
namespace {

struct Moments {
  double mean, rstd;
};

Moments finish(double shift, double sum, double sumsq, int64_t n, double eps) {
  double m = sum / static_cast<double>(n);
  double var = std::max(sumsq / static_cast<double>(n) - m * m, 0.0);
  return {shift + m, 1.0 / std::sqrt(var + eps)};
}

Moments moments_scalar(const float* x, int64_t n, double eps) {
  const float shift = x[0];
  double s = 0.0, s2 = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double d = static_cast<double>(x[i] - shift);
    s += d;
    s2 += d * d;
  }
  return finish(shift, s, s2, n, eps);
}

// y[i] = act((x[i]·a + s)·w[i] + b[i]), w and b per element and optional (nullptr: 1 and 0).
void affine_act_scalar(const float* x, float* y, int64_t n, float a, float s, const float* w, const float* b,
                       Act act) {
  for (int64_t i = 0; i < n; ++i) {
    // x·a + s rounded once, as the FMA of the vector path does (x·a and s nearly cancel when the spread is small)
    float t = static_cast<float>(static_cast<double>(x[i]) * a + s);
    if (w) t *= w[i];
    if (b) t += b[i];
    y[i] = act_scalar(t, act);
  }
}

#ifdef EDGEOPT_X86
EDGEOPT_AVX2 Moments moments_avx2(const float* x, int64_t n, double eps) {
  const float shift = x[0];
  const __m256 vshift = _mm256_set1_ps(shift);
  __m256d s0 = _mm256_setzero_pd(), s1 = s0, q0 = s0, q1 = s0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vshift);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(d)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1));
    s0 = _mm256_add_pd(s0, lo);
    s1 = _mm256_add_pd(s1, hi);
    q0 = _mm256_fmadd_pd(lo, lo, q0);
    q1 = _mm256_fmadd_pd(hi, hi, q1);
  }
  double s = hsum256d(_mm256_add_pd(s0, s1)), s2 = hsum256d(_mm256_add_pd(q0, q1));
  for (; i < n; ++i) {
    double d = static_cast<double>(x[i] - shift);
    s += d;
    s2 += d * d;
  }
  return finish(shift, s, s2, n, eps);
}

EDGEOPT_AVX2 static inline __m256 affine256(__m256 x, __m256 a, __m256 s, const float* w, const float* b) {
  __m256 t = _mm256_fmadd_ps(x, a, s);
  if (w) t = _mm256_mul_ps(t, _mm256_loadu_ps(w));
  if (b) t = _mm256_add_ps(t, _mm256_loadu_ps(b));
  return t;
}

EDGEOPT_AVX2 void affine_act_avx2(const float* x, float* y, int64_t n, float a, float s, const float* w,
                                  const float* b, Act act) {
  const __m256 va = _mm256_set1_ps(a), vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, act256(affine256(_mm256_loadu_ps(x + i), va, vs, w ? w + i : w, b ? b + i : b), act));
  }
  if (i < n) {  // the tail through the same vector code, so every element sees the same math
    alignas(32) float xt[8] = {0}, wt[8] = {0}, bt[8] = {0}, yt[8];
    for (int64_t j = 0; j < n - i; ++j) {
      xt[j] = x[i + j];
      wt[j] = w ? w[i + j] : 0.0f;
      bt[j] = b ? b[i + j] : 0.0f;
    }
    __m256 t = affine256(_mm256_load_ps(xt), va, vs, w ? wt : nullptr, b ? bt : nullptr);
    _mm256_store_ps(yt, act256(t, act));
    std::copy(yt, yt + (n - i), y + i);
  }
}
#endif

Moments moments(Isa isa, const float* x, int64_t n, double eps) {
#ifdef EDGEOPT_X86
  if (isa == Isa::avx2) return moments_avx2(x, n, eps);
#endif
  return moments_scalar(x, n, eps);
}

void affine_act(Isa isa, const float* x, float* y, int64_t n, float a, float s, const float* w, const float* b,
                Act act) {
#ifdef EDGEOPT_X86
  if (isa == Isa::avx2) return affine_act_avx2(x, y, n, a, s, w, b, act);
#endif
  affine_act_scalar(x, y, n, a, s, w, b, act);
}

Act parse_act(c10::string_view name) {
  if (name == "silu") return Act::silu;
  if (name == "gelu") return Act::gelu;
  if (name == "gelu_tanh") return Act::gelu_tanh;
  TORCH_CHECK_VALUE(name == "none", "act: unknown activation '", std::string(name),
                    "'; known: silu, gelu, gelu_tanh, none");
  return Act::none;
}

// The affine parameter `p` (weight or bias) as a pointer, checked to hold `n` float32 values; nullptr if absent.
const float* affine_ptr(const std::optional<at::Tensor>& p, int64_t n, const char* name) {
  if (!p.has_value() || !p->defined()) return nullptr;
  check_float_contiguous(*p, name);
  TORCH_CHECK_VALUE(p->numel() == n, name, ": expected ", n, " values, got ", p->numel());
  return p->data_ptr<float>();
}

// Work items per parallel chunk so that each chunk touches at least ~32k elements.
int64_t grain(int64_t elems_per_item) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, elems_per_item)); }

}  // namespace

at::Tensor group_norm_act(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps, c10::string_view act_name, bool scalar) {
  check_float_contiguous(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 2, "x: expected (N, C, *), got ", x.dim(), " dims");
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK_VALUE(num_groups >= 1 && C % num_groups == 0, "num_groups: ", num_groups,
                    " does not divide the ", C, " channels");
  const Act act = parse_act(act_name);
  const float* w = affine_ptr(weight, C, "weight");
  const float* b = affine_ptr(bias, C, "bias");
  set_workspace_bytes(0);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t HW = x.numel() / (N * C), Cg = C / num_groups, group = Cg * HW;
  const Isa isa = pick_isa(scalar);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N * num_groups, grain(group), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {  // i = n·G + g: the group's Cg·HW values are contiguous
      const Moments mo = moments(isa, xp + i * group, group, eps);
      const int64_t c0 = (i % num_groups) * Cg;
      for (int64_t c = 0; c < Cg; ++c) {
        const float a = static_cast<float>(mo.rstd * (w ? w[c0 + c] : 1.0f));
        const float sh = static_cast<float>((b ? b[c0 + c] : 0.0f) - mo.mean * a);
        affine_act(isa, xp + i * group + c * HW, yp + i * group + c * HW, HW, a, sh, nullptr, nullptr, act);
      }
    }
  });
  return y;
}

at::Tensor layer_norm_act(const at::Tensor& x, at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps, c10::string_view act_name, bool scalar) {
  check_float_contiguous(x, "x");
  const int64_t k = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK_VALUE(k >= 1 && x.dim() >= k && x.sizes().slice(x.dim() - k).equals(normalized_shape),
                    "normalized_shape: ", normalized_shape, " is not the trailing shape of x ", x.sizes());
  const Act act = parse_act(act_name);
  int64_t D = 1;
  for (int64_t s : normalized_shape) D *= s;
  const float* w = affine_ptr(weight, D, "weight");
  const float* b = affine_ptr(bias, D, "bias");
  set_workspace_bytes(0);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t M = x.numel() / D;
  const Isa isa = pick_isa(scalar);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, M, grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Moments mo = moments(isa, xp + r * D, D, eps);
      const float rstd = static_cast<float>(mo.rstd);
      affine_act(isa, xp + r * D, yp + r * D, D, rstd, static_cast<float>(-mo.mean * mo.rstd), w, b, act);
    }
  });
  return y;
}

}  // namespace edgeopt
