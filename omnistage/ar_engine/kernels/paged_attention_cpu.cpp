// Paged attention for CPUs: every query row reads its keys and values in place from the paged
// KV cache (no gather into a padded copy), one row per task.
//
// Row r attends to positions [lo, ctx_lens[r]) of block-table row table_rows[r], where lo is 0, or
// ctx_lens[r] - window with a sliding window. A decode row is its sequence's last position; a
// prefill token at position p is a row with ctx_len p + 1, so one call covers a whole mixed step.
// Scores are (q . k) * scale, then softcap * tanh(score / softcap) when softcap > 0, then a
// float32 softmax: the same order of operations as the torch reference.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int LANES = 16;  // independent accumulators: the compiler turns them into one vector register

template <typename T>
inline float dot(const float* a, const T* b, int64_t n) {
  float acc[LANES] = {0};
  int64_t x = 0;
  for (; x + LANES <= n; x += LANES)
    for (int j = 0; j < LANES; ++j) acc[j] += a[x + j] * static_cast<float>(b[x + j]);
  float s = 0;
  for (; x < n; ++x) s += a[x] * static_cast<float>(b[x]);
  for (int j = 0; j < LANES; ++j) s += acc[j];
  return s;
}

template <typename T>
inline void axpy(float* y, float w, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += w * static_cast<float>(x[i]);
}

template <typename T>
void attend_rows(const torch::Tensor& q, const torch::Tensor& kv, const torch::Tensor& tables,
                 const torch::Tensor& table_rows, const torch::Tensor& ctx_lens, torch::Tensor& out,
                 int64_t block_size, double scale, int64_t window, double softcap) {
  const int64_t rows = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t kv_heads = kv.size(2), group = heads / kv_heads, width = tables.size(1);
  const int64_t slot_stride = kv.stride(1), value_offset = kv.stride(0);
  const T* qp = q.data_ptr<T>();
  const T* kp = kv.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* rp = table_rows.data_ptr<int32_t>();
  const int32_t* lp = ctx_lens.data_ptr<int32_t>();
  const float fscale = static_cast<float>(scale), fcap = static_cast<float>(softcap);

  // One task per row, every head inside it: a position's keys (and values) for all KV heads are one
  // contiguous run of memory, so a block is streamed once from start to end.
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(heads * dim), acc(heads * dim), scores;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t len = lp[r];
      const int64_t lo = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t n = len - lo;
      const int32_t* table = tp + static_cast<int64_t>(rp[r]) * width;
      scores.resize(heads * n);
      for (int64_t x = 0; x < heads * dim; ++x) qf[x] = static_cast<float>(qp[r * heads * dim + x]);
      for (int64_t p = lo; p < len; ++p) {
        const T* key = kp + (static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size) * slot_stride;
        for (int64_t h = 0; h < heads; ++h) {
          float s = dot(qf.data() + h * dim, key + (h / group) * dim, dim) * fscale;
          if (fcap > 0) s = std::tanh(s / fcap) * fcap;
          scores[h * n + p - lo] = s;
        }
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* sc = scores.data() + h * n;
        const float top = *std::max_element(sc, sc + n);
        float total = 0;
        for (int64_t i = 0; i < n; ++i) total += (sc[i] = std::exp(sc[i] - top));
        const float inv = 1.0f / total;
        for (int64_t i = 0; i < n; ++i) sc[i] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t p = lo; p < len; ++p) {
        const T* value = kp + value_offset
            + (static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size) * slot_stride;
        for (int64_t h = 0; h < heads; ++h) axpy(acc.data() + h * dim, scores[h * n + p - lo], value + (h / group) * dim, dim);
      }
      for (int64_t x = 0; x < heads * dim; ++x) op[r * heads * dim + x] = static_cast<T>(acc[x]);
    }
  });
}

}  // namespace

// q [rows, heads, dim] (contiguous, the cache's dtype); kv [2, slots, kv_heads, dim] (contiguous);
// tables [B, width] int32; table_rows, ctx_lens [rows] int32 -> [rows, heads, dim].
torch::Tensor paged_attention(torch::Tensor q, torch::Tensor kv, torch::Tensor tables, torch::Tensor table_rows,
                              torch::Tensor ctx_lens, int64_t block_size, double scale, int64_t window,
                              double softcap) {
  TORCH_CHECK(q.is_contiguous() && kv.is_contiguous() && tables.is_contiguous(), "contiguous inputs expected");
  TORCH_CHECK(q.scalar_type() == kv.scalar_type(), "q and the KV cache must share a dtype");
  TORCH_CHECK(q.size(1) % kv.size(2) == 0, "query heads must be a multiple of KV heads");
  auto out = torch::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
    attend_rows<scalar_t>(q, kv, tables, table_rows.contiguous(), ctx_lens.contiguous(), out, block_size, scale,
                          window, softcap);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "paged attention over a paged KV cache (CPU)");
}
