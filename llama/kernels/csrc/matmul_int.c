/* int4 and int8 weights against activations quantized to int8 in groups of 32: y (M, N) = x (M, K) @ W.T.
 *
 * llama.cpp's idea (q4_0/q8_0 x q8_0): the activations are quantized to int8 in groups of 32 (one
 * float scale per group) and every group's dot product is an integer one (vpmaddubsw + vpmaddwd on
 * AVX2, vpdpbusd where the CPU has VNNI), scaled once per group. No float copy of a weight exists.
 * Parallel over output rows with OpenMP.
 *
 * Weight formats (llama/kernels/formats.py):
 *   int4: w (N, K/2) uint8, the even input column in the low nibble; sz (N, K/32, 2) bfloat16
 *         (scale, zero) per group; weight = (q - 8) * scale + zero, q in 0..15.
 *   int8: w (N, K) int8 in -127..127; scales (N) float32; weight = q * scale.
 * both repacked at load time (llama/kernels/native.py) into the blocks described below.
 *
 * Every output element is computed by the same instructions in the same order whatever M is and
 * whichever thread computes it, so a row's result does not depend on the batch it is in.
 */
#include "common.h"

#include <math.h>
#include <stdlib.h>

#define ACT_BLOCK 4 /* activation rows that share one pass over a weight block */

#if SIMD && (defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__))
#define VNNI 1 /* vpdpbusd: u8 x s8 products summed in int32, no int16 step to saturate */
#else
#define VNNI 0
#endif

int llama_native_simd(void) { return SIMD + VNNI; }

/* ---- activations: float -> int8 groups of 32 ---- */

#define INT8_HI_OFFSET (VNNI ? 128 : 0)
#define INT8_LO_OFFSET (VNNI ? 64 : 0)

/* Row-major x (M, K) -> int8 groups of 32 with one float scale xd (M, K/32) each, rounded to
 * nearest (ties to even).
 *   Without `lo` (int4): xq in -127..127 = x / xd, and xs (M, K/32) = each group's sum of xq times
 *   xd, which the int4 zero point needs.
 *   With `lo` (int8): 15 bits per activation, as two int8 parts: x / xd = 128 xq + lo, xq in
 *   -127..127, lo in -64..63, so that int8 weights keep the activations' precision (better than
 *   bfloat16's 8 bits) for a second integer dot product, which the memory-bound decode hides. */
#if SIMD
static void quantize_activations(const float *x, int64_t M, int64_t K, int8_t *xq, int8_t *lo, float *xd,
                                 float *xs) {
    const int64_t G = K / GROUP;
    const float levels = lo ? 127.0f * 128.0f : 127.0f;
    /* A few rows take microseconds: not worth a parallel region (waking the other threads) of their own. */
#pragma omp parallel for schedule(static) if (M * K >= 65536)
    for (int64_t mg = 0; mg < M * G; mg++) {
        const float *src = x + mg * GROUP;
        float amax = 0.0f;
        int nan = 0;
        for (int i = 0; i < GROUP; i++) amax = fmaxf(amax, fabsf(src[i])), nan |= src[i] != src[i];
        if (nan) amax = NAN; /* fmaxf drops NaNs: keep them, so non-finite logits are still caught */
        const float inv = amax > 0.0f && amax < INFINITY ? levels / amax : 0.0f;
        int sum = 0;
        for (int i = 0; i < GROUP; i++) {
            const int q = (int)nearbyintf(src[i] * inv);
            if (lo) {
                const int hi = (q + 64) >> 7; /* arithmetic shift: floor((q + 64) / 128) */
                /* With VNNI the parts are the unsigned operand, stored + INT8_HI_OFFSET / + INT8_LO_OFFSET
                 * (q8_block takes the offsets back out); without it they stay signed (sign trick). */
                xq[mg * GROUP + i] = (int8_t)(uint8_t)(hi + INT8_HI_OFFSET);
                lo[mg * GROUP + i] = (int8_t)(uint8_t)(q - 128 * hi + INT8_LO_OFFSET);
            } else {
                xq[mg * GROUP + i] = (int8_t)q;
            }
            sum += q;
        }
        xd[mg] = amax / levels;
        xs[mg] = xd[mg] * (float)sum;
    }
}
#endif

/* ---- weights, in blocks of 8 output rows (llama/kernels/native.py repacks them at load time) ----
 *
 * Vector lane i (of 8 int32 lanes) belongs to output row i of the block, so one integer dot
 * instruction advances 8 rows by 4 input columns, the activation's 4 bytes broadcast to all lanes.
 * For each block and group of 32 columns, "quad" j holds columns 4j..4j+3 of the 8 rows as 32
 * bytes: row i's 4 bytes at offset 4i.
 *   int8: 8 quads of 32 bytes (256 bytes); row scales (N/8, 8) float32.
 *   int4: 4 chunks of 32 bytes (128 bytes); chunk c's low nibbles are quad c, its high nibbles
 *         quad c + 4; then per block and group 8 bfloat16 scales and 8 bfloat16 zeros (32 bytes).
 */

#if SIMD
static inline __m256i dot_acc(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* S blocks of 8 weight rows (w[s], S <= MAX_STREAMS) against R activation rows (S and R constant
 * per call, R <= ACT_BLOCK); out[s * R + r] = 8 results. The S blocks (of S streams) are walked
 * side by side, one group of each at a time. */
INLINE void q4_block(const uint8_t *const *w, const int S, int64_t G, const int8_t *xq, const float *xd,
                     const float *xs, int64_t K, const int R, __m256 *out) {
    const __m256i mask = _mm256_set1_epi8(15);
    __m256 acc[MAX_STREAMS * ACT_BLOCK];
    for (int i = 0; i < S * R; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        for (int s = 0; s < S; s++) {
            const uint8_t *blk = w[s] + g * 160;
            prefetch_ahead(blk, 160);
            __m256i codes[8];
            for (int c = 0; c < 4; c++) {
                const __m256i b = _mm256_loadu_si256((const __m256i *)(blk + 32 * c));
                codes[c] = _mm256_and_si256(b, mask);
                codes[c + 4] = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
            }
            const __m256 scale = bf16x8_to_float((const uint16_t *)(blk + 128));
            const __m256 offset =
                _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), scale, bf16x8_to_float((const uint16_t *)(blk + 144)));
            for (int r = 0; r < R; r++) {
                const int8_t *xg = xq + r * K + g * GROUP;
#if VNNI
                __m256i dot = _mm256_setzero_si256();
                for (int j = 0; j < 8; j++) dot = dot_acc(dot, codes[j], bcast4(xg + 4 * j));
#else
                /* The 8 quads' vpmaddubsw pair sums added in int16 first, one vpmaddwd per group: codes
                 * are 0..15 and activations -127..127, so |sum| <= 8 * 2 * 15 * 127 = 30480 never
                 * saturates and the integer dot is exactly the one above, at half the multiplies. */
                __m256i pairs = _mm256_maddubs_epi16(codes[0], bcast4(xg));
                for (int j = 1; j < 8; j++) pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(codes[j], bcast4(xg + 4 * j)));
                const __m256i dot = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
                __m256 *a = &acc[s * R + r];
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                     _mm256_mul_ps(scale, _mm256_set1_ps(xd[r * (K / GROUP) + g])), *a);
                *a = _mm256_fmadd_ps(offset, _mm256_set1_ps(xs[r * (K / GROUP) + g]), *a);
            }
        }
    }
    for (int i = 0; i < S * R; i++) out[i] = acc[i];
}

INLINE void q8_block(const int8_t *const *w, const float *const *wscale, const int S, int64_t G, const int8_t *xq,
                     const int8_t *xlo, const float *xd, int64_t K, const int R, __m256 *out) {
    __m256 acc[MAX_STREAMS * ACT_BLOCK];
    for (int i = 0; i < S * R; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        for (int s = 0; s < S; s++) {
            const int8_t *blk = w[s] + g * 256;
            prefetch_ahead(blk, 256);
            __m256i hi[ACT_BLOCK], lo[ACT_BLOCK];
            for (int r = 0; r < R; r++) hi[r] = lo[r] = _mm256_setzero_si256();
#if VNNI
            /* Activation parts stored + 128 (hi) and + 64 (lo), unsigned: sum (hi + 128) w = sum hi w
             * + 128 sum w, so the rows' weight sums (one more vpdpbusd per quad, shared by all R
             * activation rows) take the offsets back out. */
            __m256i wsum = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(blk + 32 * j));
                wsum = dot_acc(wsum, _mm256_set1_epi8(1), wv);
                for (int r = 0; r < R; r++) {
                    const int64_t at = r * K + g * GROUP + 4 * j;
                    hi[r] = dot_acc(hi[r], bcast4(xq + at), wv);
                    lo[r] = dot_acc(lo[r], bcast4(xlo + at), wv);
                }
            }
            const __m256i offsets = _mm256_mullo_epi32(wsum, _mm256_set1_epi32(128 * INT8_HI_OFFSET + INT8_LO_OFFSET));
            for (int r = 0; r < R; r++) { /* |128 hi + lo| < 2^27: no overflow */
                const __m256i dot = _mm256_sub_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi[r], 7), lo[r]), offsets);
#else
            /* Two quads at a time: their lo pair sums are added in int16 before one vpmaddwd widens
             * them (|lo| <= 64 and |w| <= 127, so |sum| <= 2 * 2 * 127 * 64 = 32512 never saturates;
             * the integer dot is exactly the one quad by quad). hi parts (up to 127) cannot pair. */
            for (int j = 0; j < 8; j += 2) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(blk + 32 * j));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(blk + 32 * j + 32));
                const __m256i m0 = _mm256_sign_epi8(w0, w0), m1 = _mm256_sign_epi8(w1, w1); /* |w| <= 127 */
                for (int r = 0; r < R; r++) {
                    const int64_t at = r * K + g * GROUP + 4 * j;
                    hi[r] = dot_acc(hi[r], m0, _mm256_sign_epi8(bcast4(xq + at), w0));
                    hi[r] = dot_acc(hi[r], m1, _mm256_sign_epi8(bcast4(xq + at + 4), w1));
                    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(m0, _mm256_sign_epi8(bcast4(xlo + at), w0)),
                                                           _mm256_maddubs_epi16(m1, _mm256_sign_epi8(bcast4(xlo + at + 4), w1)));
                    lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
                }
            }
            for (int r = 0; r < R; r++) { /* |128 hi + lo| < 2^27: no overflow */
                const __m256i dot = _mm256_add_epi32(_mm256_slli_epi32(hi[r], 7), lo[r]);
#endif
                acc[s * R + r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(xd[r * (K / GROUP) + g]),
                                                 acc[s * R + r]);
            }
        }
    }
    for (int s = 0; s < S; s++) {
        const __m256 scale = _mm256_loadu_ps(wscale[s]);
        for (int r = 0; r < R; r++) out[s * R + r] = _mm256_mul_ps(acc[s * R + r], scale);
    }
}

/* Blocks b[0..S) against activation rows m..m+R, results written into y. */
INLINE void run_blocks(const int_matmul *j, const int64_t *b, const int S, int64_t m, const int R) {
    const uint8_t *wp[MAX_STREAMS];
    const float *sp[MAX_STREAMS];
    for (int s = 0; s < S; s++) {
        wp[s] = j->w + b[s] * j->block_bytes;
        sp[s] = j->rscale ? j->rscale + b[s] * BLOCK : NULL;
    }
    __m256 out[MAX_STREAMS * ACT_BLOCK];
    if (j->bits == 4)
        q4_block(wp, S, j->G, j->xq + m * j->K, j->xd + m * j->G, j->xs + m * j->G, j->K, R, out);
    else
        q8_block((const int8_t *const *)wp, sp, S, j->G, j->xq + m * j->K, j->xlo + m * j->K, j->xd + m * j->G,
                 j->K, R, out);
    for (int s = 0; s < S; s++)
        for (int r = 0; r < R; r++) {
            float lanes[BLOCK];
            _mm256_storeu_ps(lanes, out[s * R + r]);
            for (int i = 0; i < BLOCK && b[s] * BLOCK + i < j->N; i++) j->y[(m + r) * j->N + b[s] * BLOCK + i] = lanes[i];
        }
}

/* Blocks b[0..S) against every activation row, ACT_BLOCK rows at a time, so that a block read
 * from memory serves all of them. Streams: 4 for one row, 2 for two (their accumulators stay in
 * registers), 1 beyond (bigger batches, prompts), which are compute- rather than memory-bound. */
static void run_all_rows(const int_matmul *j, const int64_t *b, int S) {
    for (int64_t m = 0; m < j->M; m += ACT_BLOCK) {
        const int R = j->M - m < ACT_BLOCK ? (int)(j->M - m) : ACT_BLOCK;
        if (S == 4) run_blocks(j, b, 4, m, 1);
        else if (S == 2 && R == 1) run_blocks(j, b, 2, m, 1);
        else if (S == 2) run_blocks(j, b, 2, m, 2);
        else if (R == 1) run_blocks(j, b, 1, m, 1);
        else if (R == 2) run_blocks(j, b, 1, m, 2);
        else if (R == 3) run_blocks(j, b, 1, m, 3);
        else run_blocks(j, b, 1, m, 4);
    }
}
#endif

int q8_acts_alloc(q8_acts *a, int bits, int64_t M, int64_t K) {
    const int64_t G = K / GROUP;
    a->xq = malloc((size_t)(M * K));
    a->xlo = bits == 8 ? malloc((size_t)(M * K)) : NULL;
    a->xd = malloc(sizeof(float) * (size_t)(M * G));
    a->xs = malloc(sizeof(float) * (size_t)(M * G));
    if (a->xq && a->xd && a->xs && (bits != 8 || a->xlo)) return 0;
    q8_acts_free(a);
    return -1;
}

void q8_acts_free(q8_acts *a) {
    free(a->xq), free(a->xlo), free(a->xd), free(a->xs);
    a->xq = a->xlo = NULL, a->xd = a->xs = NULL;
}

#if SIMD
void q8_acts_quantize(const q8_acts *a, const float *x, int64_t M, int64_t K) {
    quantize_activations(x, M, K, a->xq, a->xlo, a->xd, a->xs);
}

int_matmul int_matmul_make(int bits, const q8_acts *a, int64_t M, int64_t K, const void *w, const float *rscale, int64_t N,
               float *y) {
    const int64_t G = K / GROUP;
    const int_matmul j = {bits, M, K, N, G, bits == 4 ? G * 160 : G * 256, w, rscale, a->xq, a->xlo, a->xd, a->xs, y};
    return j;
}

/* The calling thread's share of j: a contiguous range of the blocks of 8 output rows, cut into S
 * streams that it walks side by side (S from the row count: 4 for one row, 2 for two, else 1).
 * N is the true row count (the last block may be padding). Every output element is computed by
 * the same instructions whichever the thread, stream or batch. */
void int_matmul_share(const int_matmul *j) {
    const int S = j->M == 1 ? 4 : j->M == 2 ? 2 : 1;
    int64_t start[MAX_STREAMS + 1], b[MAX_STREAMS];
    thread_streams((j->N + BLOCK - 1) / BLOCK, S, start);
    for (int64_t i = 0; i < (start[S] - start[0] + S - 1) / S; i++) {
        const int live = stream_items(start, S, i, b);
        if (live == S) {
            run_all_rows(j, b, S);
        } else {
            for (int s = 0; s < live; s++) run_all_rows(j, b + s, 1);
        }
    }
}
#endif

/* The matmul entry points: quantize x, then every thread takes its share. Returns 0, -1 if out of
 * memory, -2 if built without SIMD. */
static int quantized_matmul(int bits, const float *x, int64_t M, int64_t K, const void *w, const float *rscale,
                            int64_t N, float *y) {
#if SIMD
    q8_acts a;
    if (q8_acts_alloc(&a, bits, M, K)) return -1;
    q8_acts_quantize(&a, x, M, K);
    const int_matmul j = int_matmul_make(bits, &a, M, K, w, rscale, N, y);
#pragma omp parallel
    int_matmul_share(&j);
    q8_acts_free(&a);
    return 0;
#else
    (void)bits, (void)x, (void)M, (void)K, (void)w, (void)rscale, (void)N, (void)y;
    return -2;
#endif
}

int llama_matmul_int4(const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N, float *y) {
    return quantized_matmul(4, x, M, K, w, NULL, N, y);
}

int llama_matmul_int8(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scales, int64_t N,
                      float *y) {
    return quantized_matmul(8, x, M, K, w, scales, N, y);
}
