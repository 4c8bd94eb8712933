/* A whole model's forward pass in one call: embedding, every layer, the final norm and the logits
 * of each row's last token, for a decode step (one token per row) or a short prompt (T tokens per
 * row, attending causally); weights in float32, bfloat16, int8 or int4. Each row has its own
 * position and KV-cache slot, so rows of different sequences (the engine's slots) step together.
 *
 * Why: a step of a small model in eager PyTorch is ~40 small operations per layer, each a few
 * microseconds of dispatch, and on a 12-layer dim-768 model they cost more than the weights take
 * to stream (BENCHMARKS.md, "One native call per decode step"). Here the operations between the
 * matmuls are plain loops, the activations a layer's matmuls share are quantized (or rounded to
 * bfloat16) once, and the matmuls that read them (q, k and v; w1 and w3) run in one parallel region.
 *
 * The arithmetic is llama/model.py's, in the same order of operations and with the same roundings
 * to the model's dtype; only the sums (the matmuls' and norms' dot products, attention's, softmax's
 * denominator) are taken in another order than torch's, so results agree to rounding, not bit for
 * bit (the tests bound the difference, and check the reference's tokens and log-probs in float32).
 * A row's results do not depend on the other rows of the call when T = 1 (decode steps use the
 * few-row kernels, whose sums are the same whatever the batch). llama/decoding/native_step.py fills
 * the descriptors from a built model and decides when this runs; it checks `llama_abi` first.
 */
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Bumped whenever a descriptor below or an entry point's arguments change. */
#define ABI_VERSION 5

typedef struct {
    int64_t N, K;
    const void *w;       /* int4/int8: matmul_int.c's blocks; bfloat16/float32: the (N, K) weight */
    const float *scales; /* int8: padded row scales; else unused */
} weight_desc;

typedef struct {
    const void *attn_norm, *ffn_norm;
    weight_desc wq, wk, wv, wo, w1, w2, w3;
    void *k, *v;             /* this layer's cache blocks, each (kv_heads, block_tokens, head_dim) (llama/kv_cache.py) */
    float *k_scale, *v_scale; /* int8 caches: a scale per position and head, blocks of (kv_heads, block_tokens) */
} layer_desc;

/* bits: the matmul weights' format, 4 or 8 (quantized), 16 (bfloat16) or 32 (float32). bf16: the model's dtype
 * (embedding, norm weights, caches, activations) is bfloat16, else float32. The KV cache is paged: position p of
 * slot s is in block table[s * per_slot + p / block_tokens] (-1: none) of `blocks`; kv_bits: what the cache
 * stores, 32 (float32), 16 (bfloat16) or 8 (int8 with a float32 scale per position and head). */
typedef struct {
    int64_t bits, bf16, n_layers, dim, n_heads, kv_heads, head_dim, hidden, vocab, max_seq, slots;
    int64_t block_tokens, per_slot, blocks, kv_bits;
    const int64_t *table;
    double eps;
    const void *embedding;  /* (vocab, dim) */
    const void *norm;       /* the final norm's weight */
    const float *cos, *sin; /* full-width float32 rotary tables (positions, head_dim): model.py's pair_tables */
    weight_desc output;
    const layer_desc *layers;
} model_desc;

/* What Python checks before it fills a descriptor: out = {ABI_VERSION, the three struct sizes,
 * GROUP, BLOCK}; returns how many values were written (at most n). */
int64_t llama_abi(int64_t *out, int64_t n) {
    const int64_t abi[6] = {ABI_VERSION, sizeof(weight_desc), sizeof(layer_desc), sizeof(model_desc), GROUP, BLOCK};
    const int64_t count = n < 6 ? n : 6;
    for (int64_t i = 0; i < count; i++) out[i] = abi[i];
    return count;
}

#if SIMD
/* Activations are held as floats here. In a bfloat16 model the eager step rounds to bfloat16
 * after every operation (torch computes each in float32 and stores bfloat16), and so does this
 * one, at the same points: `round` is the identity for a float32 model. */
static inline float round_to(const model_desc *md, float x) { return md->bf16 ? bf16_to_float(float_to_bf16(x)) : x; }

static inline float get(const model_desc *md, const void *p, int64_t i) {
    return md->bf16 ? bf16_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* Where position p of slot `slot` starts in a layer's k or v blocks, for kv head `kvh` (its next
 * positions in the block follow at head_dim apart). */
static inline int64_t cell(const model_desc *md, int64_t slot, int64_t kvh, int64_t p) {
    const int64_t block = md->table[slot * md->per_slot + p / md->block_tokens];
    return ((block * md->kv_heads + kvh) * md->block_tokens + p % md->block_tokens) * md->head_dim;
}

/* x . y over n floats, 8 partial sums (so that the compiler vectorizes it) */
static float dot(const float *x, const float *y, int64_t n) {
    float part[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) part[l] += x[i + l] * y[i + l];
    float total = 0.0f;
    for (int l = 0; l < 8; l++) total += part[l];
    for (; i < n; i++) total += x[i] * y[i];
    return total;
}

/* The cached vector at `at` (cell() of a layer's k or v; `scales` the layer's int8 scales) as head_dim
 * floats in the model's dtype, llama/kv_cache.py's PagedKV._gather value for value: the float32 store
 * itself, else widened (bfloat16 values are exact floats) or dequantized into `row`. One tight loop
 * per format, so that the compiler vectorizes it. */
static const float *cached(const model_desc *md, const void *store, const float *scales, int64_t at, float *row) {
    const int64_t n = md->head_dim;
    if (md->kv_bits == 32) return (const float *)store + at;
    if (md->kv_bits == 16) {
        const uint16_t *v = (const uint16_t *)store + at;
        for (int64_t d = 0; d < n; d++) row[d] = bf16_to_float(v[d]);
        return row;
    }
    const int8_t *v = (const int8_t *)store + at;
    const float scale = scales[at / n];
    for (int64_t d = 0; d < n; d++) row[d] = (float)v[d] * scale;
    if (md->bf16)
        for (int64_t d = 0; d < n; d++) row[d] = bf16_to_float(float_to_bf16(row[d]));
    return row;
}

/* Store x (head_dim values, already in the model's dtype) as the cached vector at `at`. */
static void store_cached(const model_desc *md, void *store, float *scales, int64_t at, const float *x) {
    const int64_t n = md->head_dim;
    if (md->kv_bits == 32)
        for (int64_t d = 0; d < n; d++) ((float *)store)[at + d] = x[d];
    else if (md->kv_bits == 16)
        for (int64_t d = 0; d < n; d++) ((uint16_t *)store)[at + d] = float_to_bf16(x[d]);
    else { /* llama/kv_cache.py's quantize_int8: max|x| / 127, codes rounded to nearest even */
        float top = 0.0f;
        for (int64_t d = 0; d < n; d++) top = fmaxf(top, fabsf(x[d]));
        const float scale = top / 127.0f, safe = scale > 0.0f ? scale : 1.0f;
        for (int64_t d = 0; d < n; d++) {
            const float q = nearbyintf(x[d] / safe);
            ((int8_t *)store)[at + d] = (int8_t)(q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q);
        }
        scales[at / n] = scale;
    }
}

/* RMSNorm (model.py): the float32 x * rsqrt(mean(x^2) + eps), in the model's dtype, times the
 * weight, for each of M rows of n */
static void rms_norm(const model_desc *md, const float *x, const void *weight, int64_t M, int64_t n, float *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * n;
        const float r = 1.0f / sqrtf(dot(row, row, n) / (float)n + (float)md->eps);
        for (int64_t i = 0; i < n; i++) out[m * n + i] = round_to(md, round_to(md, row[i] * r) * get(md, weight, i));
    }
}

/* Rotate adjacent pairs of every head (model.py's rotate_pairs) at one position's tables. */
static void rotate(const model_desc *md, float *x, int64_t heads, const float *c, const float *s) {
    for (int64_t i = 0; i < heads * md->head_dim; i += 2) {
        const int64_t j = i % md->head_dim;
        const float a = x[i], b = x[i + 1];
        x[i] = round_to(md, a * c[j] + b * s[j]);
        x[i + 1] = round_to(md, b * c[j + 1] + a * s[j + 1]);
    }
}

/* Query head h of a token at position pos against cache slot `slot`'s positions 0..pos:
 * softmax(q.k / sqrt(hd)) . v, with model.py's attend's roundings (scores, probabilities and
 * output in the model's dtype). The portable form: any head_dim, any cache format. */
static void attend_head_any(const model_desc *md, const layer_desc *L, const float *q, int64_t slot, int64_t h,
                            int64_t pos, float *scores, float *out) {
    const int64_t hd = md->head_dim, kvh = h / (md->n_heads / md->kv_heads), bt = md->block_tokens;
    const float root = sqrtf((float)hd);
    float top = -INFINITY, row[hd];
    for (int64_t t0 = 0; t0 <= pos; t0 += bt) { /* a block at a time: its positions are adjacent */
        const int64_t base = cell(md, slot, kvh, t0), n = pos + 1 - t0 < bt ? pos + 1 - t0 : bt;
        for (int64_t i = 0; i < n; i++) {
            const float sum = dot(q, cached(md, L->k, L->k_scale, base + i * hd, row), hd);
            scores[t0 + i] = round_to(md, round_to(md, sum) / root);
            top = fmaxf(top, scores[t0 + i]);
        }
    }
    float total = 0.0f;
    for (int64_t t = 0; t <= pos; t++) total += scores[t] = expf(scores[t] - top);
    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t t0 = 0; t0 <= pos; t0 += bt) {
        const int64_t base = cell(md, slot, kvh, t0), n = pos + 1 - t0 < bt ? pos + 1 - t0 : bt;
        for (int64_t i = 0; i < n; i++) {
            const float p = round_to(md, scores[t0 + i] / total);
            const float *value = cached(md, L->v, L->v_scale, base + i * hd, row);
            for (int64_t d = 0; d < hd; d++) out[d] += p * value[d];
        }
    }
    for (int64_t d = 0; d < hd; d++) out[d] = round_to(md, out[d]);
}

/* 8 cached values at element `at` of a k or v store in format kv (32, 16 or 8 bits) as floats:
 * an int8 cache's codes, before their position's scale. */
INLINE __m256 cached8(const void *store, int64_t at, const int kv) {
    if (kv == 32) return _mm256_loadu_ps((const float *)store + at);
    if (kv == 16) return bf16x8_to_float((const uint16_t *)store + at);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)store + at))));
}

/* The four sums of a, b, c and d's lanes. */
INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* e^x for x <= 0, 8 at a time, within 2 ulp of expf: x = n ln 2 + r, |r| <= ln 2 / 2, e^r by Cephes'
 * degree-7 polynomial, times 2^n built in the exponent bits. Below -87.3 it gives e^-87.3 (about
 * 1e-38, nothing beside a softmax's largest term, 1) instead of a denormal; a NaN stays NaN. */
INLINE __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x); /* max_ps returns its second operand for a NaN */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

/* scores[0..n) <- e^(scores - top); returns their sum (softmax's denominator). */
static float exp_shifted(float *scores, int64_t n, float top) {
    const __m256 shift = _mm256_set1_ps(top);
    __m256 sum8 = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), shift));
        _mm256_storeu_ps(scores + t, e);
        sum8 = _mm256_add_ps(sum8, e);
    }
    float total = hsum(sum8);
    for (; t < n; t++) total += scores[t] = expf(scores[t] - top);
    return total;
}

#define KEYS 4 /* cached positions a query meets at once (independent sums in flight) */

/* out[0..8 C) += sum over positions i < n of p[i] (times scale[i] for an int8 cache) times the 8 C
 * cached values at at + i * stride: C accumulators per parity of i (two chains in flight), kept
 * in registers across a block's positions. */
INLINE void weigh_values(const void *store, int64_t at, int64_t stride, int64_t n, const float *p, const float *scale,
                         float *out, const int C, const int kv) {
    __m256 even[4], odd[4];
    for (int c = 0; c < C; c++) even[c] = odd[c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
        const __m256 w0 = _mm256_set1_ps(kv == 8 ? p[i] * scale[i] : p[i]);
        const __m256 w1 = _mm256_set1_ps(kv == 8 ? p[i + 1] * scale[i + 1] : p[i + 1]);
        for (int c = 0; c < C; c++) {
            even[c] = _mm256_fmadd_ps(w0, cached8(store, at + i * stride + 8 * c, kv), even[c]);
            odd[c] = _mm256_fmadd_ps(w1, cached8(store, at + (i + 1) * stride + 8 * c, kv), odd[c]);
        }
    }
    if (i < n) {
        const __m256 w0 = _mm256_set1_ps(kv == 8 ? p[i] * scale[i] : p[i]);
        for (int c = 0; c < C; c++) even[c] = _mm256_fmadd_ps(w0, cached8(store, at + i * stride + 8 * c, kv), even[c]);
    }
    for (int c = 0; c < C; c++)
        _mm256_storeu_ps(out + 8 * c, _mm256_add_ps(_mm256_loadu_ps(out + 8 * c), _mm256_add_ps(even[c], odd[c])));
}

/* attend_head_any for head_dim a multiple of 8 and a cache whose values the model's dtype holds
 * as they are (float32, bfloat16, or int8 in a float32 model), in format kv: four positions at
 * a time, read straight from the store (an int8 position's scale applied to its dot product and
 * to its probability, not to every value). The same sums as attend_head_any up to their order. */
INLINE void attend_head_fast(const model_desc *md, const layer_desc *L, const float *q, int64_t slot, int64_t h,
                             int64_t pos, float *scores, float *out, const int kv) {
    const int64_t hd = md->head_dim, kvh = h / (md->n_heads / md->kv_heads), bt = md->block_tokens;
    const float root = sqrtf((float)hd);
    float top = -INFINITY;
    for (int64_t t0 = 0; t0 <= pos; t0 += bt) {
        const int64_t base = cell(md, slot, kvh, t0), n = pos + 1 - t0 < bt ? pos + 1 - t0 : bt;
        const float *scale = kv == 8 ? L->k_scale + base / hd : NULL;
        for (int64_t i = 0; i < n; i += KEYS) {
            const int64_t m = n - i < KEYS ? n - i : KEYS; /* the last group may be short: repeat its first key */
            const int64_t at[KEYS] = {base + i * hd, base + (i + (m > 1)) * hd, base + (i + 2 * (m > 2)) * hd,
                                      base + (i + 3 * (m > 3)) * hd};
            prefetch_ahead((const char *)L->k + at[0] * (kv / 8), (int)(KEYS * hd * (kv / 8)));
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t d = 0; d < hd; d += 8) {
                const __m256 x = _mm256_loadu_ps(q + d);
                a0 = _mm256_fmadd_ps(x, cached8(L->k, at[0] + d, kv), a0);
                a1 = _mm256_fmadd_ps(x, cached8(L->k, at[1] + d, kv), a1);
                a2 = _mm256_fmadd_ps(x, cached8(L->k, at[2] + d, kv), a2);
                a3 = _mm256_fmadd_ps(x, cached8(L->k, at[3] + d, kv), a3);
            }
            float sum[KEYS];
            _mm_storeu_ps(sum, hsum4(a0, a1, a2, a3));
            for (int64_t j = 0; j < m; j++) {
                const float s = kv == 8 ? sum[j] * scale[i + j] : sum[j];
                scores[t0 + i + j] = round_to(md, round_to(md, s) / root);
                top = fmaxf(top, scores[t0 + i + j]);
            }
        }
    }
    const float total = exp_shifted(scores, pos + 1, top);
    for (int64_t t = 0; t <= pos; t++) scores[t] = round_to(md, scores[t] / total); /* the probabilities */
    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t t0 = 0; t0 <= pos; t0 += bt) {
        const int64_t base = cell(md, slot, kvh, t0), n = pos + 1 - t0 < bt ? pos + 1 - t0 : bt;
        const float *scale = kv == 8 ? L->v_scale + base / hd : NULL;
        if (hd % 32 == 0)
            for (int64_t d0 = 0; d0 < hd; d0 += 32) weigh_values(L->v, base + d0, hd, n, scores + t0, scale, out + d0, 4, kv);
        else
            for (int64_t d0 = 0; d0 < hd; d0 += 8) weigh_values(L->v, base + d0, hd, n, scores + t0, scale, out + d0, 1, kv);
    }
    for (int64_t d = 0; d < hd; d++) out[d] = round_to(md, out[d]);
}

static void attend_head(const model_desc *md, const layer_desc *L, const float *q, int64_t slot, int64_t h,
                        int64_t pos, float *scores, float *out) {
    if (md->head_dim % 8 || (md->kv_bits == 8 && md->bf16)) attend_head_any(md, L, q, slot, h, pos, scores, out);
    else if (md->kv_bits == 32) attend_head_fast(md, L, q, slot, h, pos, scores, out, 32);
    else if (md->kv_bits == 16) attend_head_fast(md, L, q, slot, h, pos, scores, out, 16);
    else attend_head_fast(md, L, q, slot, h, pos, scores, out, 8);
}

/* Scratch for the matmuls' inputs: quantized (int4/int8) or bfloat16 (and, where the kernel
 * reads floats, the float copy is the activations themselves). */
typedef struct {
    q8_acts q;
    uint16_t *x16;
} inputs;

/* y_i = x (M, K) @ W_i.T for the n <= 3 matrices that read x, in one parallel region (their
 * outputs are independent: no barrier between them); outputs in the model's dtype. `prompt`:
 * float32 weights go through the tiled prompt kernel (else the few-row kernel, whose results do
 * not depend on M). */
static void matmuls(const model_desc *md, const inputs *in, const float *x, int64_t M, int prompt, int n,
                    const weight_desc *const *w, float *const *y) {
    const int64_t K = w[0]->K;
    int_matmul q[3];
    rows_matmul r[3];
    if (md->bits >= 16) {
        if (md->bits == 16)
            for (int64_t i = 0; i < M * K; i++) in->x16[i] = float_to_bf16(x[i]);
        for (int i = 0; i < n; i++) {
            const rows_matmul j = {md->bits == 16, M, K, w[i]->N, in->x16, x, w[i]->w, NULL, y[i]};
            r[i] = j;
        }
    } else {
        q8_acts_quantize(&in->q, x, M, K);
        for (int i = 0; i < n; i++)
            q[i] = int_matmul_make((int)md->bits, &in->q, M, K, w[i]->w, w[i]->scales, w[i]->N, y[i]);
    }
#pragma omp parallel
    for (int i = 0; i < n; i++) {
        if (md->bits == 32 && prompt) f32_tiles_share(x, M, K, (const float *)w[i]->w, w[i]->N, y[i]);
        else if (md->bits >= 16) rows_matmul_share(&r[i]);
        else int_matmul_share(&q[i]);
    }
    if (md->bf16 && md->bits < 16) /* the bfloat16 kernel rounds its results itself */
        for (int i = 0; i < n; i++)
            for (int64_t e = 0; e < M * w[i]->N; e++) y[i][e] = round_to(md, y[i][e]);
}

/* Beyond this many rows of a prompt float32 weights go through the tiled prompt kernel. */
#define FEW_ROWS 4

/* The rows of one call: B rows of T tokens, row b in cache slot slot[b] from position pos[b]
 * (activation row r = b * T + t holds position pos[b] + t). */
typedef struct {
    int64_t B, T, widest_pos;
    const int64_t *slot, *pos;
} rows_at;

/* One layer for the rows of `at` (h holds their activations). */
static void layer_step(const model_desc *md, const layer_desc *L, const rows_at *at, float *h, float **buf,
                       const inputs *in) {
    const int64_t D = md->dim, H = md->n_heads, KVH = md->kv_heads, hd = md->head_dim, F = md->hidden;
    const int64_t T = at->T, R = at->B * T, span = at->widest_pos + T;
    const int prompt = T > 1 && R > FEW_ROWS;
    float *xn = buf[0], *q = buf[1], *k = buf[2], *v = buf[3], *att = buf[4], *t1 = buf[5], *t3 = buf[6],
          *scores = buf[7];
    rms_norm(md, h, L->attn_norm, R, D, xn);
    matmuls(md, in, xn, R, prompt, 3, (const weight_desc *[]){&L->wq, &L->wk, &L->wv}, (float *[]){q, k, v});
    for (int64_t r = 0; r < R; r++) { /* every token's key and value reach the cache before any attends */
        const int64_t b = r / T, p = at->pos[b] + r % T;
        rotate(md, q + r * H * hd, H, md->cos + p * hd, md->sin + p * hd);
        rotate(md, k + r * KVH * hd, KVH, md->cos + p * hd, md->sin + p * hd);
        for (int64_t j = 0; j < KVH; j++) {
            const int64_t at_p = cell(md, at->slot[b], j, p);
            store_cached(md, L->k, L->k_scale, at_p, k + (r * KVH + j) * hd);
            store_cached(md, L->v, L->v_scale, at_p, v + (r * KVH + j) * hd);
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t rh = 0; rh < R * H; rh++) { /* causal: token t attends to positions up to its own */
        const int64_t r = rh / H, b = r / T;
        attend_head(md, L, q + rh * hd, at->slot[b], rh % H, at->pos[b] + r % T, scores + rh * span, att + rh * hd);
    }
    matmuls(md, in, att, R, prompt, 1, (const weight_desc *[]){&L->wo}, (float *[]){xn});
    for (int64_t i = 0; i < R * D; i++) h[i] = round_to(md, h[i] + xn[i]);
    rms_norm(md, h, L->ffn_norm, R, D, xn);
    matmuls(md, in, xn, R, prompt, 2, (const weight_desc *[]){&L->w1, &L->w3}, (float *[]){t1, t3});
    for (int64_t i = 0; i < R * F; i++) /* silu(w1 x) * w3 x */
        t1[i] = round_to(md, round_to(md, t1[i] / (1.0f + expf(-t1[i]))) * t3[i]);
    matmuls(md, in, t1, R, prompt, 1, (const weight_desc *[]){&L->w2}, (float *[]){xn});
    for (int64_t i = 0; i < R * D; i++) h[i] = round_to(md, h[i] + xn[i]);
}

static void run_layers(const model_desc *md, const int64_t *tokens, const rows_at *at, float **buf,
                       const inputs *in, float *logits) {
    const int64_t D = md->dim, R = at->B * at->T;
    float *h = buf[0], *last = buf[2];
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < D; i++) h[r * D + i] = get(md, md->embedding, tokens[r] * D + i);
    for (int64_t l = 0; l < md->n_layers; l++) layer_step(md, &md->layers[l], at, h, buf + 1, in);
    for (int64_t b = 0; b < at->B; b++) memcpy(last + b * D, h + (b * at->T + at->T - 1) * D, sizeof(float) * (size_t)D);
    rms_norm(md, last, md->norm, at->B, D, buf[1]);
    matmuls(md, in, buf[1], at->B, 0, 1, (const weight_desc *[]){&md->output}, (float *[]){logits});
}
#endif

/* tokens (B, T), row b in cache slot slot[b] at positions pos[b]..pos[b]+T-1 -> float32 logits
 * (B, vocab) of each row's last token. T = 1: a decode step; T > 1: a prompt (its causal attention
 * over the cache). Returns 0, -1 if out of memory, -2 if built without SIMD, -3 if a slot or
 * position is out of the cache's range, or its blocks are not all there. */
int llama_forward(const model_desc *md, const int64_t *tokens, int64_t B, int64_t T, const int64_t *slot,
                  const int64_t *pos, float *logits) {
#if SIMD
    int64_t widest_pos = 0;
    for (int64_t b = 0; b < B; b++) {
        if (slot[b] < 0 || slot[b] >= md->slots || pos[b] < 0 || pos[b] + T > md->max_seq) return -3;
        for (int64_t i = 0; i * md->block_tokens < pos[b] + T; i++) { /* every block the row reads or writes */
            const int64_t block = md->table[slot[b] * md->per_slot + i];
            if (block < 0 || block >= md->blocks) return -3;
        }
        widest_pos = pos[b] > widest_pos ? pos[b] : widest_pos;
    }
    const rows_at at = {B, T, widest_pos, slot, pos};
    const int64_t D = md->dim, F = md->hidden, QD = md->n_heads * md->head_dim, R = B * T;
    const int64_t KVD = md->kv_heads * md->head_dim;
    int64_t widest = D > F ? D : F;
    widest = widest > QD ? widest : QD;
    const int64_t sizes[9] = {R * D, R * widest, R * QD, R * KVD, R * KVD, R * QD, R * F, R * F,
                              R * md->n_heads * (widest_pos + T)};
    float *buf[9];
    int failed = 0;
    for (int i = 0; i < 9; i++) failed |= (buf[i] = malloc(sizeof(float) * (size_t)sizes[i])) == NULL;
    inputs in = {{NULL, NULL, NULL, NULL}, NULL};
    if (md->bits == 16) failed |= (in.x16 = malloc(sizeof(uint16_t) * (size_t)(R * widest))) == NULL;
    else if (md->bits < 16) failed |= q8_acts_alloc(&in.q, (int)md->bits, R, widest) != 0;
    if (!failed) run_layers(md, tokens, &at, buf, &in, logits);
    q8_acts_free(&in.q);
    free(in.x16);
    for (int i = 0; i < 9; i++) free(buf[i]);
    return failed ? -1 : 0;
#else
    (void)md, (void)tokens, (void)B, (void)T, (void)slot, (void)pos, (void)logits;
    return -2;
#endif
}

/* Per row of logits (B rows of V floats): best[b] = the index of the row's largest value (the first
 * of equal ones, as torch.argmax), or -1 if the row holds an inf or a nan. Returns how many rows
 * did. One call for what the engine checks after every decode step. */
int llama_logits_scan(const float *logits, int64_t B, int64_t V, int64_t *best) {
    int bad = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *row = logits + b * V;
        float top = -INFINITY;
        int finite = 1;
        int64_t i = 0;
#if SIMD
        __m256 vtop = _mm256_set1_ps(-INFINITY), vbad = _mm256_setzero_ps();
        for (; i + 8 <= V; i += 8) {
            const __m256 x = _mm256_loadu_ps(row + i);
            vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(_mm256_sub_ps(x, x), _mm256_setzero_ps(), _CMP_NEQ_UQ));
            vtop = _mm256_max_ps(vtop, x);
        }
        finite = _mm256_movemask_ps(vbad) == 0;
        float lanes[8];
        _mm256_storeu_ps(lanes, vtop);
        for (int k = 0; k < 8; k++) top = lanes[k] > top ? lanes[k] : top;
#endif
        for (; i < V; i++) { /* the tail (all of it without SIMD); x - x is nan for inf and nan */
            finite &= row[i] - row[i] == 0.0f;
            top = row[i] > top ? row[i] : top;
        }
        if (!finite || V == 0) {
            best[b] = -1;
            bad++;
            continue;
        }
        int64_t at = 0;
        while (row[at] != top) at++;
        best[b] = at;
    }
    return bad;
}
