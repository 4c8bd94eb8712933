/* One decode step (one token per row) of a whole int4- or int8-quantized model in one call:
 * embedding, every layer, the final norm and the logits.
 *
 * Why: a step of a small model in eager PyTorch is ~40 small operations per layer, each a few
 * microseconds of dispatch, and on a 12-layer dim-768 model they cost more than the weights take
 * to stream (BENCHMARKS.md). Here the operations between the matmuls are plain loops, the
 * activations a layer's matmuls share are quantized once, and the matmuls that read them (q, k
 * and v; w1 and w3) run in one parallel region.
 *
 * The arithmetic is llama/model.py's, in float32, in the same order of operations; only the sums
 * (the norms' mean square, attention's dot products, softmax's denominator) are taken in another
 * order than torch's, so results agree to float32 rounding, not bit for bit (the tests bound the
 * difference and check tokens). The matmuls are qmatmul.c's, bit-identical to the eager path's.
 * llama/native_decode.py fills the descriptors from a built model and decides when this runs.
 */
#include "qmatmul.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t N, K;
    const void *w;       /* qmatmul.c's blocks */
    const float *scales; /* int8: padded row scales; int4: unused */
} dmatrix;

typedef struct {
    const float *attn_norm, *ffn_norm;
    dmatrix wq, wk, wv, wo, w1, w2, w3;
    float *k, *v; /* this layer's caches, stored (max_batch, kv_heads, max_seq, head_dim) */
} dlayer;

typedef struct {
    int64_t bits, n_layers, dim, n_heads, kv_heads, head_dim, hidden, vocab, max_seq;
    double eps;
    const float *embedding;  /* (vocab, dim) */
    const float *norm;       /* the final norm's weight */
    const float *cos, *sin;  /* full-width rotary tables (positions, head_dim): llama/model.py's pair_tables */
    dmatrix output;
    const dlayer *layers;
} dmodel;

#if SIMD
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

/* RMSNorm (model.py): x * rsqrt(mean(x^2) + eps) * weight, for each of M rows of n */
static void rms_norm(const float *x, const float *weight, double eps, int64_t M, int64_t n, float *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * n;
        const float r = 1.0f / sqrtf(dot(row, row, n) / (float)n + (float)eps);
        for (int64_t i = 0; i < n; i++) out[m * n + i] = row[i] * r * weight[i];
    }
}

/* Rotate adjacent pairs of every head (model.py's rotate_pairs) at one position's tables. */
static void rotate(float *x, int64_t heads, int64_t hd, const float *c, const float *s) {
    for (int64_t h = 0; h < heads; h++) {
        float *v = x + h * hd;
        for (int64_t i = 0; i < hd; i += 2) {
            const float a = v[i], b = v[i + 1];
            v[i] = a * c[i] + b * s[i];
            v[i + 1] = b * c[i + 1] + a * s[i + 1];
        }
    }
}

/* Row m, query head h against the cache's positions 0..pos: softmax(q.k / sqrt(hd)) . v */
static void attend_head(const dmodel *md, const dlayer *L, const float *q, int64_t m, int64_t h, int64_t pos,
                        float *scores, float *out) {
    const int64_t hd = md->head_dim, kvh = h / (md->n_heads / md->kv_heads);
    const float *keys = L->k + (m * md->kv_heads + kvh) * md->max_seq * hd;
    const float *values = L->v + (m * md->kv_heads + kvh) * md->max_seq * hd;
    const float root = sqrtf((float)hd);
    float top = -INFINITY;
    for (int64_t t = 0; t <= pos; t++) {
        scores[t] = dot(q, keys + t * hd, hd) / root;
        top = fmaxf(top, scores[t]);
    }
    float total = 0.0f;
    for (int64_t t = 0; t <= pos; t++) total += scores[t] = expf(scores[t] - top);
    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t t = 0; t <= pos; t++) {
        const float p = scores[t] / total;
        for (int64_t d = 0; d < hd; d++) out[d] += p * values[t * hd + d];
    }
}

static qjob job(const dmodel *md, const qacts *a, int64_t M, const dmatrix *w, float *y) {
    return qjob_make((int)md->bits, a, M, w->K, w->w, w->scales, w->N, y);
}

/* Quantize x (M, K) into a, then y_i = x @ W_i.T for the n matrices that read it, in one region. */
static void matmuls(const dmodel *md, const qacts *a, const float *x, int64_t M, int n, const dmatrix *const *w,
                    float *const *y) {
    qacts_quantize(a, x, M, w[0]->K);
    qjob jobs[3];
    for (int i = 0; i < n; i++) jobs[i] = job(md, a, M, w[i], y[i]);
#pragma omp parallel
    for (int i = 0; i < n; i++) qjob_share(&jobs[i]); /* independent outputs: no barrier between */
}

static void layer_step(const dmodel *md, const dlayer *L, int64_t M, int64_t pos, float *h, float **buf,
                       const qacts *a) {
    const int64_t D = md->dim, H = md->n_heads, KVH = md->kv_heads, hd = md->head_dim, F = md->hidden;
    float *xn = buf[0], *q = buf[1], *k = buf[2], *v = buf[3], *att = buf[4], *t1 = buf[5], *t3 = buf[6],
          *scores = buf[7];
    rms_norm(h, L->attn_norm, md->eps, M, D, xn);
    matmuls(md, a, xn, M, 3, (const dmatrix *[]){&L->wq, &L->wk, &L->wv}, (float *[]){q, k, v});
    const float *c = md->cos + pos * hd, *s = md->sin + pos * hd;
    for (int64_t m = 0; m < M; m++) {
        rotate(q + m * H * hd, H, hd, c, s);
        rotate(k + m * KVH * hd, KVH, hd, c, s);
        for (int64_t j = 0; j < KVH; j++) {
            const int64_t at = ((m * KVH + j) * md->max_seq + pos) * hd;
            memcpy(L->k + at, k + (m * KVH + j) * hd, sizeof(float) * (size_t)hd);
            memcpy(L->v + at, v + (m * KVH + j) * hd, sizeof(float) * (size_t)hd);
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t mh = 0; mh < M * H; mh++)
        attend_head(md, L, q + mh * hd, mh / H, mh % H, pos, scores + mh * (pos + 1), att + mh * hd);
    matmuls(md, a, att, M, 1, (const dmatrix *[]){&L->wo}, (float *[]){xn});
    for (int64_t i = 0; i < M * D; i++) h[i] += xn[i];
    rms_norm(h, L->ffn_norm, md->eps, M, D, xn);
    matmuls(md, a, xn, M, 2, (const dmatrix *[]){&L->w1, &L->w3}, (float *[]){t1, t3});
    for (int64_t i = 0; i < M * F; i++) t1[i] = t1[i] / (1.0f + expf(-t1[i])) * t3[i]; /* silu(w1 x) * w3 x */
    matmuls(md, a, t1, M, 1, (const dmatrix *[]){&L->w2}, (float *[]){xn});
    for (int64_t i = 0; i < M * D; i++) h[i] += xn[i];
}
#endif

/* tokens (M) at position pos -> logits (M, vocab). Returns 0, -1 if out of memory, -2 if built
 * without SIMD. */
int llama_decode_step(const dmodel *md, const int64_t *tokens, int64_t M, int64_t pos, float *logits) {
#if SIMD
    const int64_t D = md->dim, F = md->hidden, QD = md->n_heads * md->head_dim;
    int64_t widest = D > F ? D : F;
    widest = widest > QD ? widest : QD;
    const int64_t sizes[9] = {M * D, M * widest, M * QD, M * md->kv_heads * md->head_dim,
                              M * md->kv_heads * md->head_dim, M * QD, M * F, M * F, M * md->n_heads * (pos + 1)};
    float *buf[9];
    int failed = 0;
    for (int i = 0; i < 9; i++) failed |= (buf[i] = malloc(sizeof(float) * (size_t)sizes[i])) == NULL;
    qacts a;
    failed |= qacts_alloc(&a, (int)md->bits, M, widest) != 0;
    if (!failed) {
        float *h = buf[0];
        for (int64_t m = 0; m < M; m++)
            memcpy(h + m * D, md->embedding + tokens[m] * D, sizeof(float) * (size_t)D);
        for (int64_t l = 0; l < md->n_layers; l++) layer_step(md, &md->layers[l], M, pos, h, buf + 1, &a);
        rms_norm(h, md->norm, md->eps, M, D, buf[1]);
        matmuls(md, &a, buf[1], M, 1, (const dmatrix *[]){&md->output}, (float *[]){logits});
    }
    qacts_free(&a);
    for (int i = 0; i < 9; i++) free(buf[i]);
    return failed ? -1 : 0;
#else
    (void)md, (void)tokens, (void)M, (void)pos, (void)logits;
    return -2;
#endif
}
