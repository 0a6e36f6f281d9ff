// The elementwise work of a Llama-like decoder layer on CPU, one pass each, float32:
// RMSNorm (alone, and fused with the residual add before it), rotary embedding in place
// on q and k, and SiLU(gate) * up. Each is what Hugging Face's modules compute with 4-8
// separate torch ops (each a pass over memory and a dispatch); rows run on torch's
// threads where there are enough of them to pay for it.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>

namespace {

constexpr int64_t kRowsPerTask = 16;

void check_rows(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32, what,
              ": float32 CPU tensors only");
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, what, ": [rows, n] with contiguous rows");
}

// out[r] = w * x[r] / sqrt(mean(x[r]^2) + eps), as HF's RMSNorm (float32 throughout).
inline void norm_row(const float* x, const float* w, float* out, int64_t n, float eps) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  const float inv = 1.f / std::sqrt(sum / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check_rows(x, "rms_norm");
  const int64_t rows = x.size(0), n = x.size(1), sx = x.stride(0);
  TORCH_CHECK(weight.numel() == n && weight.is_contiguous(), "rms_norm: weight [n]");
  auto out = torch::empty({rows, n}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) norm_row(xp + r * sx, wp, op + r * n, n, eps);
  });
  return out;
}

// acc += x (the residual stream, in place); returns rms_norm(acc).
torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor acc, torch::Tensor weight, double eps) {
  check_rows(x, "add_rms_norm");
  check_rows(acc, "add_rms_norm");
  TORCH_CHECK(x.sizes() == acc.sizes(), "add_rms_norm: x and acc of one shape");
  const int64_t rows = x.size(0), n = x.size(1), sx = x.stride(0), sa = acc.stride(0);
  TORCH_CHECK(weight.numel() == n && weight.is_contiguous(), "add_rms_norm: weight [n]");
  auto out = torch::empty({rows, n}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float *ap = acc.data_ptr<float>(), *op = out.data_ptr<float>();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      float* a = ap + r * sa;
      const float* xr = xp + r * sx;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = a[i] + xr[i];
      norm_row(a, wp, op + r * n, n, eps);
    }
  });
  return out;
}

// x: [T, H, D] (heads contiguous within a row, any row stride), rotated in place:
// x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]). cos, sin: [T, D].
void rotary_(torch::Tensor x, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 3,
              "rotary_: x float32 [T, H, D]");
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2), half = D / 2;
  TORCH_CHECK(x.stride(2) == 1 && x.stride(1) == D && D % 2 == 0, "rotary_: heads of D floats");
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == T && cos.size(1) == D && cos.is_contiguous() &&
                  sin.sizes() == cos.sizes() && sin.is_contiguous() &&
                  cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32,
              "rotary_: cos and sin float32 [T, D]");
  const int64_t sx = x.stride(0);
  float* xp = x.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  at::parallel_for(0, T, kRowsPerTask, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const float *c = cp + t * D, *s = sp + t * D;
      for (int64_t h = 0; h < H; ++h) {
        float* v = xp + t * sx + h * D;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] + (-b) * s[i];
          v[i + half] = b * c[i + half] + a * s[i + half];
        }
      }
    }
  });
}

// gate_up: [T, 2I] (gate then up, as the fused projection writes them) -> [T, I].
torch::Tensor silu_mul(torch::Tensor gate_up) {
  check_rows(gate_up, "silu_mul");
  const int64_t rows = gate_up.size(0), n = gate_up.size(1) / 2, s = gate_up.stride(0);
  TORCH_CHECK(gate_up.size(1) == 2 * n, "silu_mul: an even number of columns");
  auto out = torch::empty({rows, n}, gate_up.options());
  const float* gp = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float *g = gp + r * s, *u = g + n;
      float* o = op + r * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "RMSNorm of rows (CPU, float32)");
  m.def("add_rms_norm", &add_rms_norm, "acc += x, then RMSNorm of acc (CPU, float32)");
  m.def("rotary_", &rotary_, "rotary embedding in place, rotate-half convention");
  m.def("silu_mul", &silu_mul, "SiLU(gate) * up of a fused gate/up projection");
}
