// Vector helpers of the native kernels: run-time ISA choice, AVX2+FMA math (exp, erf, activations,
// reductions) and their scalar twins. Written by hand: the kernels pick AVX2 at run time with
// __builtin_cpu_supports, so ATen's compile-time vector types (one ISA per translation unit) do not fit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EDGEOPT_X86 1
#define EDGEOPT_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace edgeopt {

// Which code path a kernel runs: AVX2+FMA intrinsics, or plain C++ (the compiler's baseline ISA).
enum class Isa { scalar, avx2 };

// AVX2 and FMA when this CPU has both and `force_scalar` is false, else scalar.
inline Isa pick_isa(bool force_scalar) {
#ifdef EDGEOPT_X86
  if (!force_scalar && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Isa::avx2;
  }
#endif
  (void)force_scalar;
  return Isa::scalar;
}

inline const char* isa_name(Isa isa) { return isa == Isa::avx2 ? "avx2+fma" : "scalar"; }

// The activation applied after normalization.
enum class Act { none, silu, gelu, gelu_tanh };

constexpr float kSqrt1_2 = 0.70710678118654752f;   // 1/sqrt(2)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2/pi)
constexpr float kGeluTanhCube = 0.044715f;

inline float act_scalar(float y, Act act) {
  switch (act) {
    case Act::silu:
      return y / (1.0f + std::exp(-y));
    case Act::gelu:
      return 0.5f * y * (1.0f + std::erf(y * kSqrt1_2));
    case Act::gelu_tanh: {
      // 0.5·y·(1 + tanh(u)) = y / (1 + exp(-2u)): no cancellation near u = 0
      float u = kSqrt2OverPi * (y + kGeluTanhCube * y * y * y);
      return y / (1.0f + std::exp(-2.0f * u));
    }
    case Act::none:
      break;
  }
  return y;
}

inline int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

#ifdef EDGEOPT_X86
// exp(x) for 8 floats: Cephes' polynomial (as in avx_mathfun), about 1 ulp on [-87, 88]; below that 0,
// above it clamped; NaN stays NaN.
EDGEOPT_AVX2 static inline __m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
  x = _mm256_max_ps(lo, _mm256_min_ps(hi, x));  // operands in this order keep NaN
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));  // n = 0: 2^-127 -> 0
}

// erf(x) for 8 floats: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), as ATen's vectorized erf.
EDGEOPT_AVX2 static inline __m256 erf256(__m256 x) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  __m256 sign = _mm256_and_ps(x, sign_bit);
  __m256 ax = _mm256_andnot_ps(sign_bit, x);
  __m256 one = _mm256_set1_ps(1.0f);
  __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), ax, one));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(ax, ax)));
  __m256 r = _mm256_fnmadd_ps(p, e, one);
  return _mm256_or_ps(r, sign);
}

EDGEOPT_AVX2 static inline __m256 act256(__m256 y, Act act) {
  const __m256 one = _mm256_set1_ps(1.0f);
  switch (act) {
    case Act::silu:
      return _mm256_div_ps(y, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), y))));
    case Act::gelu: {
      __m256 e = erf256(_mm256_mul_ps(y, _mm256_set1_ps(kSqrt1_2)));
      return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), y), _mm256_add_ps(one, e));
    }
    case Act::gelu_tanh: {
      __m256 y3 = _mm256_mul_ps(_mm256_mul_ps(y, y), y);
      __m256 u = _mm256_mul_ps(_mm256_set1_ps(-2.0f * kSqrt2OverPi),
                               _mm256_fmadd_ps(_mm256_set1_ps(kGeluTanhCube), y3, y));  // -2u
      return _mm256_div_ps(y, _mm256_add_ps(one, exp256(u)));
    }
    case Act::none:
      break;
  }
  return y;
}

EDGEOPT_AVX2 static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

EDGEOPT_AVX2 static inline double hsum256d(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

EDGEOPT_AVX2 static inline float hmax256(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif  // EDGEOPT_X86

}  // namespace edgeopt
