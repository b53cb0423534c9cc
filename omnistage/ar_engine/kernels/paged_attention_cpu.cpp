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
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int LANES = 16;  // independent accumulators: the compiler turns them into one vector register

#if defined(__AVX512F__)
// Sixteen elements of the cache's dtype as sixteen floats.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const double* p) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_loadu_pd(p))),
                            _mm512_cvtpd_ps(_mm512_loadu_pd(p + 8)), 1);
}
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif

template <typename T>
inline float dot(const float* a, const T* b, int64_t n) {
#if defined(__AVX512F__)
  if (n % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t x = 0; x < n; x += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + x), load16(b + x), acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
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
#if defined(__AVX512F__)
  if (n % 16 == 0) {
    const __m512 wv = _mm512_set1_ps(w);
    for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(wv, load16(x + i), _mm512_loadu_ps(y + i)));
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) y[i] += w * static_cast<float>(x[i]);
}

// One call's inputs as raw pointers and sizes.
template <typename T>
struct Call {
  int64_t rows, heads, dim, group, width, slot_stride, value_offset, block_size, window;
  const T* qp;
  const T* kp;
  T* op;
  const int32_t *tp, *rp, *lp;
  float scale, cap;

  Call(const torch::Tensor& q, const torch::Tensor& kv, const torch::Tensor& tables, const torch::Tensor& table_rows,
       const torch::Tensor& ctx_lens, torch::Tensor& out, int64_t block_size_, double scale_, int64_t window_,
       double softcap)
      : rows(q.size(0)), heads(q.size(1)), dim(q.size(2)), group(q.size(1) / kv.size(2)), width(tables.size(1)),
        slot_stride(kv.stride(1)), value_offset(kv.stride(0)), block_size(block_size_), window(window_),
        qp(q.data_ptr<T>()), kp(kv.data_ptr<T>()), op(out.data_ptr<T>()), tp(tables.data_ptr<int32_t>()),
        rp(table_rows.data_ptr<int32_t>()), lp(ctx_lens.data_ptr<int32_t>()), scale(static_cast<float>(scale_)),
        cap(static_cast<float>(softcap)) {}
};

template <typename T>
void attend_rows(const Call<T>& a) {
  const int64_t rows = a.rows, heads = a.heads, dim = a.dim, group = a.group, width = a.width;
  const int64_t slot_stride = a.slot_stride, value_offset = a.value_offset, block_size = a.block_size;
  const int64_t window = a.window;
  const T* qp = a.qp;
  const T* kp = a.kp;
  T* op = a.op;
  const int32_t *tp = a.tp, *rp = a.rp, *lp = a.lp;
  const float fscale = a.scale, fcap = a.cap;

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
      for (int64_t p = lo, blk = lo / block_size, off = lo % block_size; p < len; ++p) {
        const T* key = kp + (static_cast<int64_t>(table[blk]) * block_size + off) * slot_stride;
        if (++off == block_size) off = 0, ++blk;
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
      for (int64_t p = lo, blk = lo / block_size, off = lo % block_size; p < len; ++p) {
        const T* value = kp + value_offset + (static_cast<int64_t>(table[blk]) * block_size + off) * slot_stride;
        if (++off == block_size) off = 0, ++blk;
        for (int64_t h = 0; h < heads; ++h) axpy(acc.data() + h * dim, scores[h * n + p - lo], value + (h / group) * dim, dim);
      }
      for (int64_t x = 0; x < heads * dim; ++x) op[r * heads * dim + x] = static_cast<T>(acc[x]);
    }
  });
}


#if defined(__AVX512F__)
// exp(x) for x <= 0, sixteen at a time: Cephes' single-precision range reduction and polynomial.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

// Lane j of the result is the sum of the sixteen lanes of x[j]: a transposing tree of adds, about
// three instructions per vector instead of a full horizontal reduction each.
inline __m512 sum16(__m512* x) {
  __m512 pairs[8], quads[4];
  for (int m = 0; m < 8; ++m)  // per 128-bit lane: x[2m] and x[2m+1] interleaved, halves added
    pairs[m] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * m], x[2 * m + 1]), _mm512_unpackhi_ps(x[2 * m], x[2 * m + 1]));
  for (int m = 0; m < 4; ++m)  // per 128-bit lane: [x[4m], x[4m+1], x[4m+2], x[4m+3]] partial sums
    quads[m] = _mm512_add_ps(_mm512_shuffle_ps(pairs[2 * m], pairs[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(pairs[2 * m], pairs[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 lo = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 hi = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Softmax of sc[0, n) in place.
inline void softmax(float* sc, int64_t n) {
  __m512 top = _mm512_set1_ps(sc[0]);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(sc + i));
  float m = _mm512_reduce_max_ps(top);
  for (; i < n; ++i) m = std::max(m, sc[i]);
  const __m512 mv = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sc + i), mv));
    _mm512_storeu_ps(sc + i, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (i < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sc + i), mv));
    _mm512_mask_storeu_ps(sc + i, k, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(sc + i, _mm512_mul_ps(_mm512_loadu_ps(sc + i), inv));
  for (; i < n; ++i) sc[i] *= _mm512_cvtss_f32(inv);
}

// attend_rows for head_dim D (a multiple of 16), one query head at a time: its query and its output
// accumulators stay in registers while the row's keys, then values, stream past.
template <typename T, int D>
void attend_rows_simd(const Call<T>& a) {
  constexpr int V = D / 16;
  const float scale = a.scale, cap = a.cap;  // locals: stores to float scores may alias the struct's
  const __m512 scale_v = _mm512_set1_ps(scale);
  at::parallel_for(0, a.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> slots;
    std::vector<float> scores;
    float qf[D], res[D];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t len = a.lp[r];
      const int64_t lo = a.window > 0 ? std::max<int64_t>(0, len - a.window) : 0;
      const int64_t n = len - lo;
      const int32_t* table = a.tp + static_cast<int64_t>(a.rp[r]) * a.width;
      slots.resize(n);
      scores.resize(n);
      for (int64_t p = lo, i = 0, blk = lo / a.block_size, off = lo % a.block_size; p < len; ++p, ++i) {
        slots[i] = (static_cast<int64_t>(table[blk]) * a.block_size + off) * a.slot_stride;
        if (++off == a.block_size) off = 0, ++blk;
      }
      for (int64_t h = 0; h < a.heads; ++h) {
        const T* keys = a.kp + (h / a.group) * D;
        const T* values = keys + a.value_offset;
        for (int x = 0; x < D; ++x) qf[x] = static_cast<float>(a.qp[(r * a.heads + h) * D + x]);
        __m512 qv[V];
        for (int c = 0; c < V; ++c) qv[c] = _mm512_loadu_ps(qf + 16 * c);
        float* sc = scores.data();
        const int64_t whole = cap > 0 ? 0 : n - n % 16;
        for (int64_t i = 0; i < whole; i += 16) {  // sixteen positions' scores, reduced together
          __m512 prod[16];
          for (int j = 0; j < 16; ++j) {
            const T* k = keys + slots[i + j];
            prod[j] = _mm512_mul_ps(qv[0], load16(k));
            for (int c = 1; c < V; ++c) prod[j] = _mm512_fmadd_ps(qv[c], load16(k + 16 * c), prod[j]);
          }
          _mm512_storeu_ps(sc + i, _mm512_mul_ps(sum16(prod), scale_v));
        }
        for (int64_t i = whole; i < n; ++i) {
          const T* k = keys + slots[i];
          __m512 prod = _mm512_mul_ps(qv[0], load16(k));
          for (int c = 1; c < V; ++c) prod = _mm512_fmadd_ps(qv[c], load16(k + 16 * c), prod);
          float s = _mm512_reduce_add_ps(prod) * scale;
          if (cap > 0) s = std::tanh(s / cap) * cap;
          sc[i] = s;
        }
        softmax(sc, n);
        __m512 acc[2][V];
        for (int c = 0; c < V; ++c) acc[0][c] = acc[1][c] = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 2 <= n; i += 2)  // two positions at a time: two independent chains of FMAs
          for (int u = 0; u < 2; ++u) {
            const __m512 w = _mm512_set1_ps(sc[i + u]);
            const T* v = values + slots[i + u];
            for (int c = 0; c < V; ++c) acc[u][c] = _mm512_fmadd_ps(w, load16(v + 16 * c), acc[u][c]);
          }
        if (i < n) {
          const __m512 w = _mm512_set1_ps(sc[i]);
          for (int c = 0; c < V; ++c) acc[0][c] = _mm512_fmadd_ps(w, load16(values + slots[i] + 16 * c), acc[0][c]);
        }
        for (int c = 0; c < V; ++c) _mm512_storeu_ps(res + 16 * c, _mm512_add_ps(acc[0][c], acc[1][c]));
        for (int x = 0; x < D; ++x) a.op[(r * a.heads + h) * D + x] = static_cast<T>(res[x]);
      }
    }
  });
}
#endif

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
  const auto rows_idx = table_rows.contiguous();
  const auto lens = ctx_lens.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
    const Call<scalar_t> a(q, kv, tables, rows_idx, lens, out, block_size, scale, window, softcap);
#if defined(__AVX512F__)
    switch (a.dim) {
      case 16: return attend_rows_simd<scalar_t, 16>(a);
      case 32: return attend_rows_simd<scalar_t, 32>(a);
      case 64: return attend_rows_simd<scalar_t, 64>(a);
      case 128: return attend_rows_simd<scalar_t, 128>(a);
      case 256: return attend_rows_simd<scalar_t, 256>(a);
      default: break;
    }
#endif
    attend_rows<scalar_t>(a);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "paged attention over a paged KV cache (CPU)");
}
