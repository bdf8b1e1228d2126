// Blocked attention on CPU, fp32, forward only (inference): the partially fused softmax and FlashAttention-style
// tiling. Work is split over (batch, head, query block) with at::parallel_for on torch's intra-op threads;
// each thread owns one (q_block × k_block) score block and two row vectors, and accumulates straight into its
// rows of the output. No (Tq × Tk) matrix exists at any point. Forward only: nothing is kept for a backward.
//
// The two block products run on ATen's CPU matmul (at::cpu::mm_out / addmm_, BLAS underneath, called without
// the dispatcher); the row reductions and exponentials are written here, AVX2+FMA or scalar, chosen at run
// time. Measured on a 2-core AMD EPYC (AVX2), 4096 tokens, 40 dims, fp32, 1 thread: a hand-written AVX2 GEMM
// (6 × 16 FMA register tiles over a packed, transposed key block) took 145-295 ms for two heads, the same
// kernel on at::cpu matmul 112 ms (SDPA 109 ms), so the products use ATen.
//
// Score rows are padded to a multiple of 8 floats holding -inf, so the row reductions run on whole vectors.
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <atomic>
#include <limits>
#include <vector>

#include "kernels.h"

namespace edgeopt {
namespace {

std::atomic<int64_t> g_workspace{0};
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// C (m × n, ldc) = beta · C + alpha · A (m × k) · B (k × n), on raw buffers with the given strides.
void gemm(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B, int64_t b_row, int64_t b_col,
          float* C, int64_t ldc, float beta, float alpha) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor a = at::from_blob(const_cast<float*>(A), {m, k}, {lda, 1}, opts);
  const at::Tensor b = at::from_blob(const_cast<float*>(B), {k, n}, {b_row, b_col}, opts);
  at::Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opts);
  at::cpu::addmm_(c, a, b, beta, alpha);
}

float row_max_scalar(const float* x, int64_t n) {
  float m = kNegInf;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// x[j] = exp(x[j] - m) in place; returns their sum.
float exp_sum_scalar(float* x, int64_t n, float m) {
  float s = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  return s;
}

void scale_scalar(float* x, int64_t n, float c) {
  for (int64_t j = 0; j < n; ++j) x[j] *= c;
}

#ifdef EDGEOPT_X86
// Score rows: n a multiple of 8 (padded columns hold -inf).
EDGEOPT_AVX2 float row_max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(kNegInf);
  for (int64_t j = 0; j < n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
  return hmax256(m);
}

EDGEOPT_AVX2 float exp_sum_avx2(float* x, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    _mm256_storeu_ps(x + j, e);
    s = _mm256_add_ps(s, e);
  }
  return hsum256(s);
}

EDGEOPT_AVX2 void scale_avx2(float* x, int64_t n, float c) {
  const __m256 vc = _mm256_set1_ps(c);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), vc));
  for (; j < n; ++j) x[j] *= c;
}
#endif

// The leaf operations of one ISA.
struct Ops {
  float (*row_max)(const float*, int64_t);
  float (*exp_sum)(float*, int64_t, float);
  void (*scale)(float*, int64_t, float);
};

Ops ops_for(Isa isa) {
#ifdef EDGEOPT_X86
  if (isa == Isa::avx2) return {row_max_avx2, exp_sum_avx2, scale_avx2};
#endif
  (void)isa;
  return {row_max_scalar, exp_sum_scalar, scale_scalar};
}

// Shapes, block sizes and pointers of one call.
struct Problem {
  int64_t B, nh, Tq, Tk, hs, hv;
  int64_t qb, kb, nkp;  // block sizes; the key block padded to a multiple of 8
  int64_t n_qblocks;
  float scale;
  const float *q, *k, *v;
  const float* mask;  // nullptr: none
  int64_t ms[4];      // mask strides (B, nh, Tq, Tk)
  float* out;
};

// One thread's buffers: a score block and the running max and sum of each row.
struct Scratch {
  std::vector<float> s, m, l;
  explicit Scratch(const Problem& p) : s(p.qb * p.nkp), m(p.qb), l(p.qb) {}
  static int64_t bytes(const Problem& p) { return 4 * (p.qb * p.nkp + 2 * p.qb); }
};

// One work item: batch b, head h, rows [i0, i0 + nq) of the query and of the output.
struct Item {
  int64_t b, h, i0, nq;
  const float *q, *k, *v;  // this item's query rows; this (b, h)'s keys and values
  float* out;              // this item's output rows, the accumulator until normalized
};

Item item_of(const Problem& p, int64_t idx) {
  const int64_t bh = idx / p.n_qblocks, i0 = (idx % p.n_qblocks) * p.qb;
  return {bh / p.nh, bh % p.nh, i0, std::min(p.qb, p.Tq - i0), p.q + (bh * p.Tq + i0) * p.hs,
          p.k + bh * p.Tk * p.hs, p.v + bh * p.Tk * p.hv, p.out + (bh * p.Tq + i0) * p.hv};
}

// sc.s (nq × nkp) = scale · q · k[j0 : j0 + nk]^T (+ mask); padded columns -inf.
void scores(const Problem& p, const Item& it, int64_t j0, int64_t nk, Scratch& sc) {
  // k^T as a (hs × nk) view of the row-major key block: strides (1, hs)
  gemm(it.nq, nk, p.hs, it.q, p.hs, it.k + j0 * p.hs, 1, p.hs, sc.s.data(), p.nkp, 0.0f, p.scale);
  for (int64_t r = 0; r < it.nq; ++r) {
    float* row = sc.s.data() + r * p.nkp;
    if (p.mask) {
      const float* mr = p.mask + it.b * p.ms[0] + it.h * p.ms[1] + (it.i0 + r) * p.ms[2] + j0 * p.ms[3];
      for (int64_t j = 0; j < nk; ++j) row[j] += mr[j * p.ms[3]];
    }
    std::fill(row + nk, row + p.nkp, kNegInf);
  }
}

// out rows = beta · out rows + P (nq × nk, the exponentials in sc.s) · v[j0 : j0 + nk].
void accumulate_pv(const Problem& p, const Item& it, int64_t j0, int64_t nk, const Scratch& sc, float beta) {
  gemm(it.nq, p.hv, nk, sc.s.data(), p.nkp, it.v + j0 * p.hv, p.hv, 1, it.out, p.hv, beta, 1.0f);
}

// out rows /= l (rows whose every key is masked: 0/0 = NaN, as softmax over all -inf gives).
void normalize(const Problem& p, const Item& it, const Scratch& sc) {
  for (int64_t r = 0; r < it.nq; ++r)
    for (int64_t c = 0; c < p.hv; ++c) it.out[r * p.hv + c] /= sc.l[r];
}

float safe_max(float m) { return m == kNegInf ? 0.0f : m; }

// The partially fused softmax: pass 1 reduces each row to its max and sum of exponentials over every key
// block; pass 2 recomputes each score block, exponentiates it against the final max and multiplies by v
// (with a single key block, as in cross-attention over 77 text tokens, pass 1's block already holds them).
void partial_softmax_item(const Problem& p, const Ops& ops, const Item& it, Scratch& sc) {
  std::fill(sc.m.begin(), sc.m.end(), kNegInf);
  std::fill(sc.l.begin(), sc.l.end(), 0.0f);
  for (int64_t j0 = 0; j0 < p.Tk; j0 += p.kb) {  // pass 1: the reduction
    const int64_t nk = std::min(p.kb, p.Tk - j0);
    scores(p, it, j0, nk, sc);
    for (int64_t r = 0; r < it.nq; ++r) {
      float* row = sc.s.data() + r * p.nkp;
      const float m_new = std::max(sc.m[r], ops.row_max(row, p.nkp)), ms = safe_max(m_new);
      sc.l[r] = sc.l[r] * std::exp(sc.m[r] - ms) + ops.exp_sum(row, p.nkp, ms);
      sc.m[r] = m_new;
    }
  }
  if (p.Tk <= p.kb) {  // one key block: pass 1 left exp(s - final max) in sc.s, exactly what pass 2 would compute
    accumulate_pv(p, it, 0, p.Tk, sc, 0.0f);
    normalize(p, it, sc);
    return;
  }
  for (int64_t j0 = 0; j0 < p.Tk; j0 += p.kb) {  // pass 2: exp folded into the product with v
    const int64_t nk = std::min(p.kb, p.Tk - j0);
    scores(p, it, j0, nk, sc);
    for (int64_t r = 0; r < it.nq; ++r) ops.exp_sum(sc.s.data() + r * p.nkp, p.nkp, safe_max(sc.m[r]));
    accumulate_pv(p, it, j0, nk, sc, j0 == 0 ? 0.0f : 1.0f);
  }
  normalize(p, it, sc);  // once, at the end
}

// FlashAttention-style: one pass over key blocks with an online softmax (running max and sum; the partial
// output rescaled when the max grows).
void flash_item(const Problem& p, const Ops& ops, const Item& it, Scratch& sc) {
  std::fill(sc.m.begin(), sc.m.end(), kNegInf);
  std::fill(sc.l.begin(), sc.l.end(), 0.0f);
  for (int64_t j0 = 0; j0 < p.Tk; j0 += p.kb) {
    const int64_t nk = std::min(p.kb, p.Tk - j0);
    scores(p, it, j0, nk, sc);
    for (int64_t r = 0; r < it.nq; ++r) {
      float* row = sc.s.data() + r * p.nkp;
      const float m_new = std::max(sc.m[r], ops.row_max(row, p.nkp)), ms = safe_max(m_new);
      const float corr = std::exp(sc.m[r] - ms);  // rescales what was summed under the old max
      sc.l[r] = sc.l[r] * corr + ops.exp_sum(row, p.nkp, ms);
      if (j0 > 0 && corr != 1.0f) ops.scale(it.out + r * p.hv, p.hv, corr);
      sc.m[r] = m_new;
    }
    accumulate_pv(p, it, j0, nk, sc, j0 == 0 ? 0.0f : 1.0f);
  }
  normalize(p, it, sc);
}

// The query block: q_block (at most Tq), made smaller when (batch · heads) alone would leave threads idle, so
// that there are about as many work items as threads. `native.py` mirrors this to state the workspace.
int64_t query_block(int64_t bh, int64_t Tq, int64_t q_block, int64_t threads) {
  int64_t qb = std::max<int64_t>(1, std::min(q_block, Tq));
  if (bh > 0 && bh * ((Tq + qb - 1) / qb) < threads) {
    const int64_t want = (threads + bh - 1) / bh;  // query blocks per (batch, head)
    qb = std::max<int64_t>(1, (Tq + want - 1) / want);
  }
  return qb;
}

void check_blocks(int64_t q_block, int64_t k_block) {
  TORCH_CHECK_VALUE(q_block >= 1, "q_block: must be >= 1, got ", q_block);
  TORCH_CHECK_VALUE(k_block >= 1, "k_block: must be >= 1, got ", k_block);
}

// Checks every argument (a ValueError naming it) and sets up the problem with its output.
Problem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     const std::optional<at::Tensor>& mask, int64_t q_block, int64_t k_block, at::Tensor& out) {
  check_float_contiguous(q, "q");
  check_float_contiguous(k, "k");
  check_float_contiguous(v, "v");
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v: expected 4 dims (B, nh, T, hs), got ",
                    q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK_VALUE(k.size(0) == q.size(0) && v.size(0) == q.size(0) && k.size(1) == q.size(1) &&
                        v.size(1) == q.size(1) && k.size(3) == q.size(3) && v.size(2) == k.size(2),
                    "q, k, v: incompatible shapes ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK_VALUE(k.size(2) >= 1, "k: no keys (Tk = 0)");
  check_blocks(q_block, k_block);
  Problem p{};
  p.B = q.size(0), p.nh = q.size(1), p.Tq = q.size(2), p.Tk = k.size(2), p.hs = q.size(3), p.hv = v.size(3);
  p.qb = query_block(p.B * p.nh, p.Tq, q_block, at::get_num_threads());
  p.kb = std::min(k_block, p.Tk);
  p.nkp = round_up(p.kb, 8);
  p.n_qblocks = (p.Tq + p.qb - 1) / p.qb;
  p.scale = static_cast<float>(scale);
  p.q = q.data_ptr<float>(), p.k = k.data_ptr<float>(), p.v = v.data_ptr<float>();
  if (mask.has_value() && mask->defined()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK_VALUE(m.scalar_type() == at::kFloat, "mask: expected an additive float32 mask, got ",
                      m.scalar_type());
    TORCH_CHECK_VALUE(m.dim() == 4 && m.size(0) == p.B && m.size(1) == p.nh && m.size(2) == p.Tq && m.size(3) == p.Tk,
                      "mask: expected shape (B, nh, Tq, Tk) = (", p.B, ", ", p.nh, ", ", p.Tq, ", ", p.Tk,
                      ") (expand a broadcastable mask), got ", m.sizes());
    p.mask = m.data_ptr<float>();
    for (int i = 0; i < 4; ++i) p.ms[i] = m.stride(i);
  }
  out = at::empty({p.B, p.nh, p.Tq, p.hv}, q.options());
  p.out = out.data_ptr<float>();
  return p;
}

template <class ItemFn>
at::Tensor run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
               const std::optional<at::Tensor>& mask, int64_t q_block, int64_t k_block, bool scalar, ItemFn item_fn) {
  at::Tensor out;
  const Problem p = make_problem(q, k, v, scale, mask, q_block, k_block, out);
  const Ops ops = ops_for(pick_isa(scalar));
  g_workspace = 0;
  if (out.numel() == 0) return out;
  at::parallel_for(0, p.B * p.nh * p.n_qblocks, 1, [&](int64_t begin, int64_t end) {
    Scratch sc(p);
    g_workspace += Scratch::bytes(p);
    for (int64_t i = begin; i < end; ++i) item_fn(p, ops, item_of(p, i), sc);
  });
  return out;
}

}  // namespace

int64_t workspace_bytes() { return g_workspace.load(); }
void set_workspace_bytes(int64_t bytes) { g_workspace = bytes; }

at::Tensor partial_softmax_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                     const std::optional<at::Tensor>& mask, int64_t q_block, int64_t k_block,
                                     bool scalar) {
  return run(q, k, v, scale, mask, q_block, k_block, scalar, partial_softmax_item);
}

at::Tensor flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           const std::optional<at::Tensor>& mask, int64_t q_block, int64_t k_block, bool scalar) {
  return run(q, k, v, scale, mask, q_block, k_block, scalar, flash_item);
}

}  // namespace edgeopt
