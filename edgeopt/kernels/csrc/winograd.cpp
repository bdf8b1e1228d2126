// Winograd convolution F(m×m, 3×3), m = 2 or 4, on CPU: fp32, NCHW, stride 1, dilation 1, groups 1, zero
// padding, forward only (inference). Three stages, one pass each:
// 1. input tiles: per (image, input channel) the padded plane is copied once into a thread's buffer with
//    its columns sorted by phase (column mod m), so the j-th column of 8 horizontally adjacent α×α tiles is
//    one contiguous 8-float load; B^T d B is computed for those 8 tiles at once and written straight into
//    V (α², C_in, P), P = N·th·tw tiles, as 8-float stores;
// 2. the α² products M_k = U_k V_k (C_out × C_in by C_in × P) in one at::bmm (ATen's BLAS: a hand-written
//    GEMM lost to ATen's in the attention kernels, see attention.cpp), transposed for very few tiles;
// 3. output tiles: A^T M A for 8 tiles at once, plus the bias, interleaved back into image columns and
//    cropped to (Ho, Wo) as they are stored into the output.
// The transforms are F(2,3)'s and F(4,3)'s from the exact construction in edgeopt/kernels/winograd.py
// (interpolation points 0, 1, -1, 1/2, -1/2; every entry a dyadic rational, so exact in float32); a test
// compares them with it through `winograd_matrices`. Terms with a zero coefficient are skipped at compile
// time. AVX2+FMA or scalar is chosen at run time per call; both stages run on torch's intra-op threads.
#include <ATen/Parallel.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <atomic>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace edgeopt {
namespace {

#define EDGEOPT_UNROLL _Pragma("GCC unroll 8")

template <int M>
struct Wino;

template <>
struct Wino<2> {
  static constexpr int A = 4;
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, 1}};
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, -1, 0, 1}};
};

template <>
struct Wino<4> {
  static constexpr int A = 6;
  static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0},
                                     {0, 1, -1, 0.5f, -0.5f, 0},
                                     {0, 1, 1, 0.25f, 0.25f, 0},
                                     {0, 1, -1, 0.125f, -0.125f, 1}};
  static constexpr float BT[6][6] = {{0.25f, 0, -1.25f, 0, 1, 0},  {0, -0.25f, -0.25f, 1, 1, 0},
                                     {0, 0.25f, -0.25f, -1, 1, 0}, {0, 0.5f, 1, -0.5f, -1, 0},
                                     {0, -0.5f, 1, 0.5f, -1, 0},   {0, 0.25f, 0, -1.25f, 0, 1}};
};

// Sizes of one call. A padded plane row holds m phases of `phase` floats: padded column q sits at
// (q mod m)·phase + q / m, so tile t's column j (q = t·m + j) is phase j mod m at index t + j / m.
struct Geometry {
  int64_t N, C, H, W, Co, left, top, Ho, Wo, th, tw, P, m;
  int64_t phase;  // round_up(tw, 8) + 1: the 8-tile loads of the last group (and its +1 shift) stay inside
  int64_t row() const { return m * phase; }
  int64_t rows() const { return th * m + 2; }
  int64_t plane() const { return rows() * row(); }
};

// The zero-padded (n, c) plane into `buf`, its columns sorted by phase.
void fill_plane(const float* x, const Geometry& g, float* buf) {
  std::fill(buf, buf + g.plane(), 0.0f);
  for (int64_t y = 0; y < g.H; ++y) {
    float* out = buf + (y + g.top) * g.row();
    const float* in = x + y * g.W;
    for (int64_t p = 0; p < g.m; ++p) {
      const int64_t x0 = ((p - g.left) % g.m + g.m) % g.m;  // first input column with (x + left) mod m == p
      float* dst = out + p * g.phase + (x0 + g.left) / g.m;
      for (int64_t xi = x0; xi < g.W; xi += g.m) *dst++ = in[xi];
    }
  }
}

// --------------------------------------------------------------- scalar path: one tile at a time
template <int N>
inline float dot_scalar(const float (&c)[N], const float* v, int64_t stride) {
  float s = 0.0f;
  EDGEOPT_UNROLL
  for (int i = 0; i < N; ++i) {
    if (c[i] != 0.0f) s += c[i] * v[i * stride];
  }
  return s;
}

// B^T d B of the tiles of tile row `ty` of a plane into v[(k·α + l)·cstride + tx].
template <int M>
void input_tiles_scalar(const float* buf, const Geometry& g, int64_t ty, float* v, int64_t cstride) {
  using W = Wino<M>;
  constexpr int A = W::A;
  for (int64_t tx = 0; tx < g.tw; ++tx) {
    float t[A][A];  // B^T d: [k][j]
    for (int j = 0; j < A; ++j) {
      const float* col = buf + ty * M * g.row() + (j % M) * g.phase + tx + j / M;
      for (int k = 0; k < A; ++k) t[k][j] = dot_scalar(W::BT[k], col, g.row());
    }
    for (int k = 0; k < A; ++k) {
      for (int l = 0; l < A; ++l) v[(k * A + l) * cstride + tx] = dot_scalar(W::BT[l], t[k], 1);
    }
  }
}

// A^T M A + bias of the tiles of tile row `ty` into the output plane y (Ho, Wo), cropped.
template <int M>
void output_tiles_scalar(const float* mt, int64_t cstride, const Geometry& g, int64_t ty, float bias, float* y) {
  using W = Wino<M>;
  constexpr int A = W::A;
  for (int64_t tx = 0; tx < g.tw; ++tx) {
    float s[M][A];  // A^T M: [i][l]
    for (int l = 0; l < A; ++l) {
      for (int i = 0; i < M; ++i) s[i][l] = dot_scalar(W::AT[i], mt + l * cstride + tx, A * cstride);
    }
    for (int i = 0; i < M && ty * M + i < g.Ho; ++i) {
      for (int j = 0; j < M && tx * M + j < g.Wo; ++j) {
        y[(ty * M + i) * g.Wo + tx * M + j] = dot_scalar(W::AT[j], s[i], 1) + bias;
      }
    }
  }
}

// --------------------------------------------------------------- AVX2+FMA path: 8 tiles at a time
#ifdef EDGEOPT_X86
template <int N>
EDGEOPT_AVX2 __attribute__((always_inline)) inline __m256 dot256(const float (&c)[N], const __m256* v) {
  __m256 s = _mm256_setzero_ps();
  EDGEOPT_UNROLL
  for (int i = 0; i < N; ++i) {
    if (c[i] == 1.0f) {
      s = _mm256_add_ps(s, v[i]);
    } else if (c[i] == -1.0f) {
      s = _mm256_sub_ps(s, v[i]);
    } else if (c[i] != 0.0f) {
      s = _mm256_fmadd_ps(_mm256_set1_ps(c[i]), v[i], s);
    }
  }
  return s;
}

EDGEOPT_AVX2 inline __m256i lanes_below(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <int M>
EDGEOPT_AVX2 void input_tiles_avx2(const float* buf, const Geometry& g, int64_t ty, float* v, int64_t cstride) {
  using W = Wino<M>;
  constexpr int A = W::A;
  for (int64_t tx = 0; tx < g.tw; tx += 8) {
    __m256 t[A][A];  // B^T d: [k][j], 8 tiles per vector
    EDGEOPT_UNROLL
    for (int j = 0; j < A; ++j) {
      const float* col = buf + ty * M * g.row() + (j % M) * g.phase + tx + j / M;
      __m256 d[A];
      EDGEOPT_UNROLL
      for (int i = 0; i < A; ++i) d[i] = _mm256_loadu_ps(col + i * g.row());
      EDGEOPT_UNROLL
      for (int k = 0; k < A; ++k) t[k][j] = dot256(W::BT[k], d);
    }
    const int64_t n = std::min<int64_t>(8, g.tw - tx);
    const __m256i mask = lanes_below(n);
    EDGEOPT_UNROLL
    for (int k = 0; k < A; ++k) {
      EDGEOPT_UNROLL
      for (int l = 0; l < A; ++l) {
        const __m256 r = dot256(W::BT[l], t[k]);
        float* dst = v + (k * A + l) * cstride + tx;
        if (n == 8) {
          _mm256_storeu_ps(dst, r);
        } else {
          _mm256_maskstore_ps(dst, mask, r);
        }
      }
    }
  }
}

// The M output columns of 8 tiles (o[j][t] = column t·M + j) as 8·M consecutive floats.
template <int M>
EDGEOPT_AVX2 __attribute__((always_inline)) inline void interleave_store(const __m256* o, float* dst);

template <>
EDGEOPT_AVX2 __attribute__((always_inline)) inline void interleave_store<2>(const __m256* o, float* dst) {
  const __m256 lo = _mm256_unpacklo_ps(o[0], o[1]), hi = _mm256_unpackhi_ps(o[0], o[1]);
  _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
  _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

template <>
EDGEOPT_AVX2 __attribute__((always_inline)) inline void interleave_store<4>(const __m256* o, float* dst) {
  const __m256 t0 = _mm256_unpacklo_ps(o[0], o[1]), t1 = _mm256_unpackhi_ps(o[0], o[1]);
  const __m256 t2 = _mm256_unpacklo_ps(o[2], o[3]), t3 = _mm256_unpackhi_ps(o[2], o[3]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);  // tiles 0|4, 1|5
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);  // tiles 2|6, 3|7
  _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(dst + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(dst + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}

template <int M>
EDGEOPT_AVX2 void output_tiles_avx2(const float* mt, int64_t cstride, const Geometry& g, int64_t ty, float bias,
                                    float* y) {
  using W = Wino<M>;
  constexpr int A = W::A;
  const __m256 vbias = _mm256_set1_ps(bias);
  for (int64_t tx = 0; tx < g.tw; tx += 8) {
    const int64_t n = std::min<int64_t>(8, g.tw - tx);
    const __m256i mask = lanes_below(n);
    __m256 s[M][A];  // A^T M: [i][l]
    EDGEOPT_UNROLL
    for (int l = 0; l < A; ++l) {
      __m256 col[A];
      EDGEOPT_UNROLL
      for (int k = 0; k < A; ++k) {
        const float* src = mt + (k * A + l) * cstride + tx;
        col[k] = n == 8 ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, mask);
      }
      EDGEOPT_UNROLL
      for (int i = 0; i < M; ++i) s[i][l] = dot256(W::AT[i], col);
    }
    const int64_t x0 = tx * M, width = std::min<int64_t>(8 * M, g.Wo - x0);
    for (int i = 0; i < M && ty * M + i < g.Ho; ++i) {
      __m256 o[M];
      EDGEOPT_UNROLL
      for (int j = 0; j < M; ++j) o[j] = _mm256_add_ps(dot256(W::AT[j], s[i]), vbias);
      float* dst = y + (ty * M + i) * g.Wo + x0;
      if (width == 8 * M) {
        interleave_store<M>(o, dst);
      } else {  // the ragged right edge: through a buffer, then the columns that exist
        alignas(32) float tmp[8 * M];
        interleave_store<M>(o, tmp);
        std::copy(tmp, tmp + width, dst);
      }
    }
  }
}
#endif  // EDGEOPT_X86

template <int M>
void input_tiles(Isa isa, const float* buf, const Geometry& g, int64_t ty, float* v, int64_t cstride) {
#ifdef EDGEOPT_X86
  if (isa == Isa::avx2) return input_tiles_avx2<M>(buf, g, ty, v, cstride);
#endif
  input_tiles_scalar<M>(buf, g, ty, v, cstride);
}

template <int M>
void output_tiles(Isa isa, const float* mt, int64_t cstride, const Geometry& g, int64_t ty, float bias, float* y) {
#ifdef EDGEOPT_X86
  if (isa == Isa::avx2) return output_tiles_avx2<M>(mt, cstride, g, ty, bias, y);
#endif
  output_tiles_scalar<M>(mt, cstride, g, ty, bias, y);
}

// Stage 1: V (α², C, P) from x; returns the bytes of the plane buffers (one per parallel chunk).
template <int M>
int64_t transform_input(Isa isa, const float* x, const Geometry& g, float* V) {
  std::atomic<int64_t> planes{0};
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(g.plane()));
    planes += g.plane() * static_cast<int64_t>(sizeof(float));
    for (int64_t i = begin; i < end; ++i) {  // i = n·C + c
      const int64_t n = i / g.C, c = i % g.C;
      fill_plane(x + i * g.H * g.W, g, buf.data());
      for (int64_t ty = 0; ty < g.th; ++ty) {
        input_tiles<M>(isa, buf.data(), g, ty, V + c * g.P + (n * g.th + ty) * g.tw, g.C * g.P);
      }
    }
  });
  return planes.load();
}

// Stage 3: y (N, Co, Ho, Wo) from M (α², Co, P) and the bias.
template <int M>
void transform_output(Isa isa, const float* Mt, const float* bias, const Geometry& g, float* y) {
  at::parallel_for(0, g.N * g.Co, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {  // i = n·Co + co
      const int64_t n = i / g.Co, co = i % g.Co;
      const float b = bias ? bias[co] : 0.0f;
      for (int64_t ty = 0; ty < g.th; ++ty) {
        output_tiles<M>(isa, Mt + co * g.P + (n * g.th + ty) * g.tw, g.Co * g.P, g, ty, b, y + i * g.Ho * g.Wo);
      }
    }
  });
}

// Below this many tiles the products run transposed, M^T = V^T U^T: MKL's sgemm with 4 to 8 columns streams
// the (C_out × C_in) weights 2.3x slower than the transposed problem (1280 channels, 4 tiles, 1 thread, AMD
// EPYC 7002: 81 ms against 35 ms for the 36 products); from 16 tiles on both take the same time.
constexpr int64_t kFewTiles = 16;

template <int M>
at::Tensor run(const at::Tensor& x, const at::Tensor& U, const float* bias, Geometry g, Isa isa) {
  constexpr int64_t A2 = Wino<M>::A * Wino<M>::A;
  const auto opts = x.options();
  at::Tensor V = at::empty({A2, g.C, g.P}, opts);
  const int64_t planes = transform_input<M>(isa, x.data_ptr<float>(), g, V.data_ptr<float>());
  const int64_t v_bytes = V.numel() * 4, m_bytes = A2 * g.Co * g.P * 4;
  at::Tensor Mt;  // (α², Co, C) @ (α², C, P) -> (α², Co, P)
  if (g.P < kFewTiles) {  // as (α², P, C) @ (α², C, Co), then transposed: a copy of few bytes
    Mt = at::bmm(V.transpose(1, 2), U.transpose(1, 2)).transpose(1, 2).contiguous();
    set_workspace_bytes(v_bytes + std::max(planes, 2 * m_bytes));
  } else {
    Mt = at::bmm(U, V);
    set_workspace_bytes(v_bytes + std::max(planes, m_bytes));
  }
  V.reset();
  at::Tensor y = at::empty({g.N, g.Co, g.Ho, g.Wo}, opts);
  transform_output<M>(isa, Mt.data_ptr<float>(), bias, g, y.data_ptr<float>());
  return y;
}

}  // namespace

at::Tensor winograd_conv2d(const at::Tensor& x, const at::Tensor& U, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef padding, int64_t m, bool scalar) {
  check_float_contiguous(x, "x");
  check_float_contiguous(U, "U");
  TORCH_CHECK_VALUE(m == 2 || m == 4, "m: expected 2 or 4 (F(2x2,3x3) or F(4x4,3x3)), got ", m);
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected (N, C_in, H, W), got ", x.dim(), " dims");
  const int64_t a2 = (m + 2) * (m + 2), C = x.size(1);
  TORCH_CHECK_VALUE(U.dim() == 3 && U.size(0) == a2 && U.size(2) == C, "U: expected (", a2, ", C_out, ", C,
                    ") transformed weights, got ", U.sizes());
  TORCH_CHECK_VALUE(padding.size() == 4 && *std::min_element(padding.begin(), padding.end()) >= 0,
                    "padding: expected 4 non-negative values (left, right, top, bottom), got ", padding);
  Geometry g{};
  g.N = x.size(0), g.C = C, g.H = x.size(2), g.W = x.size(3), g.Co = U.size(1), g.m = m;
  g.left = padding[0], g.top = padding[2];
  g.Ho = g.H + padding[2] + padding[3] - 2, g.Wo = g.W + padding[0] + padding[1] - 2;
  TORCH_CHECK_VALUE(g.Ho >= 1 && g.Wo >= 1, "x: ", g.H, "x", g.W, " with padding ", padding,
                    " is smaller than the 3x3 kernel");
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    check_float_contiguous(*bias, "bias");
    TORCH_CHECK_VALUE(bias->numel() == g.Co, "bias: expected ", g.Co, " values, got ", bias->numel());
    b = bias->data_ptr<float>();
  }
  g.th = (g.Ho + m - 1) / m, g.tw = (g.Wo + m - 1) / m, g.P = g.N * g.th * g.tw;
  g.phase = round_up(g.tw, 8) + 1;
  set_workspace_bytes(0);
  if (g.N == 0 || g.Co == 0) return at::empty({g.N, g.Co, g.Ho, g.Wo}, x.options());
  const Isa isa = pick_isa(scalar);
  return m == 2 ? run<2>(x, U, b, g, isa) : run<4>(x, U, b, g, isa);
}

std::tuple<at::Tensor, at::Tensor> winograd_matrices(int64_t m) {
  TORCH_CHECK_VALUE(m == 2 || m == 4, "m: expected 2 or 4, got ", m);
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const int64_t a = m + 2;
  auto copy = [&](const float* p, int64_t rows) { return at::from_blob(const_cast<float*>(p), {rows, a}, opts).clone(); };
  if (m == 2) return {copy(&Wino<2>::AT[0][0], 2), copy(&Wino<2>::BT[0][0], a)};
  return {copy(&Wino<4>::AT[0][0], 4), copy(&Wino<4>::BT[0][0], a)};
}

}  // namespace edgeopt
