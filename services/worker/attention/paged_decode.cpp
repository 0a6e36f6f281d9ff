// Paged attention for decode queries on CPU, reading keys and values in place from
// head-major pools ([KVH, slots, D]: a block of one head is a contiguous [bs, D]).
// One job per (sequence, KV head): scores of its G query heads over the visible
// context, softmax, then the weighted sum of values. Jobs run on torch's threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t d = 0;
  float sum = 0.f;
#ifdef __AVX2__
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; d + 16 <= n; d += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), acc1);
  }
  __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  sum = _mm_cvtss_f32(lo);
#endif
  for (; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

inline void axpy(float p, const float* x, float* y, int64_t n) {
  int64_t d = 0;
#ifdef __AVX2__
  const __m256 pv = _mm256_set1_ps(p);
  for (; d + 8 <= n; d += 8)
    _mm256_storeu_ps(y + d, _mm256_fmadd_ps(pv, _mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d)));
#endif
  for (; d < n; ++d) y[d] += p * x[d];
}

}  // namespace

// q: [S, H, D]; k_pool, v_pool: [KVH, slots, D]; block_tables: [S, W];
// context_lens: [S] (the query is the last position); window: 0 = none, else the
// query sees keys k with k > position - window (Mistral's rule).
torch::Tensor paged_decode(torch::Tensor q, torch::Tensor k_pool, torch::Tensor v_pool,
                           torch::Tensor block_tables, torch::Tensor context_lens,
                           int64_t block_size, double scale, int64_t window) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == torch::kFloat32 &&
                  k_pool.scalar_type() == torch::kFloat32 &&
                  v_pool.scalar_type() == torch::kFloat32,
              "paged_decode: float32 CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 3 && k_pool.sizes() == v_pool.sizes(),
              "paged_decode: q [S, H, D], pools [KVH, slots, D]");
  q = q.contiguous();
  k_pool = k_pool.contiguous();
  v_pool = v_pool.contiguous();
  block_tables = block_tables.to(torch::kInt64).contiguous();
  context_lens = context_lens.to(torch::kInt64).contiguous();
  const int64_t S = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_pool.size(0), slots = k_pool.size(1), W = block_tables.size(1);
  TORCH_CHECK(k_pool.size(2) == D && H % KVH == 0, "paged_decode: head shapes");
  TORCH_CHECK(block_tables.size(0) == S && context_lens.size(0) == S,
              "paged_decode: one block table and one length per query");
  const int64_t G = H / KVH, bs = block_size;
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  for (int64_t s = 0; s < S; ++s) {
    TORCH_CHECK(lens[s] >= 1 && lens[s] <= W * bs, "paged_decode: context length vs block table");
    for (int64_t b = 0; b < (lens[s] + bs - 1) / bs; ++b)
      TORCH_CHECK(bt[s * W + b] >= 0 && (bt[s * W + b] + 1) * bs <= slots,
                  "paged_decode: block id out of the pool");
  }
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_pool.data_ptr<float>();
  const float* vp = v_pool.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);

  at::parallel_for(0, S * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, acc(G * D), mx(G), denom(G);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t s = job / KVH, h = job % KVH, len = lens[s];
      const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t n = len - first;
      scores.resize(G * n);
      const float* qs = qp + (s * H + h * G) * D;
      const float* kh = kp + h * slots * D;
      const float* vh = vp + h * slots * D;
      const int64_t* table = bt + s * W;
      std::fill(mx.begin(), mx.end(), -std::numeric_limits<float>::infinity());
      for (int64_t b = first / bs; b * bs < len; ++b) {
        const int64_t lo = std::max(first, b * bs), hi = std::min(len, (b + 1) * bs);
        const float* kb = kh + (table[b] * bs - b * bs) * D;  // kb + t * D: position t
        for (int64_t t = lo; t < hi; ++t) {
          for (int64_t g = 0; g < G; ++g) {
            const float x = dot(qs + g * D, kb + t * D, D) * sc;
            scores[g * n + t - first] = x;
            mx[g] = std::max(mx[g], x);
          }
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float* sg = scores.data() + g * n;
        const float m = mx[g];
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; ++i) {
          sg[i] = expf(sg[i] - m);
          sum += sg[i];
        }
        denom[g] = sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t b = first / bs; b * bs < len; ++b) {
        const int64_t lo = std::max(first, b * bs), hi = std::min(len, (b + 1) * bs);
        const float* vb = vh + (table[b] * bs - b * bs) * D;
        for (int64_t t = lo; t < hi; ++t)
          for (int64_t g = 0; g < G; ++g)
            axpy(scores[g * n + t - first], vb + t * D, acc.data() + g * D, D);
      }
      for (int64_t g = 0; g < G; ++g) {
        float* og = op + (s * H + h * G + g) * D;
        const float inv = 1.f / denom[g];
        for (int64_t d = 0; d < D; ++d) og[d] = acc[g * D + d] * inv;
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode", &paged_decode, "paged attention of decode queries (CPU, float32)");
}
