/* CPU matmuls for weight-only quantized linear layers, and one-row bfloat16 ones (decode):
 * y (M, N) = x (M, K) @ W.T.
 *
 * Built on the user's machine at first use by llama/native.py (cc -O3 -march=native -fopenmp),
 * loaded with ctypes, and parallel over output rows with OpenMP. Loaded into a process that has
 * imported torch, the OpenMP runtime is torch's own (same soname), so torch.set_num_threads
 * governs these loops too and no second thread pool competes with torch's.
 *
 * int4 and int8 follow llama.cpp's idea (q4_0/q8_0 x q8_0): the activations are quantized to int8
 * in groups of 32 (one float scale per group) and every group's dot product is an integer one
 * (vpmaddubsw + vpmaddwd on AVX2, vpdpbusd where the CPU has VNNI), scaled once per group. No
 * float copy of a weight ever exists.
 *
 * Weight formats (those llama/kernels_quant.py documents):
 *   int4: w (N, K/2) uint8, the even input column in the low nibble; sz (N, K/32, 2) bfloat16
 *         (scale, zero) per group; weight = (q - 8) * scale + zero, q in 0..15.
 *   int8: w (N, K) int8 in -127..127; scales (N) float32; weight = q * scale.
 *   bf16: w (N, K) as stored.
 *
 * Every output element is computed by the same instructions in the same order whatever M is and
 * whichever thread computes it, so a row's result does not depend on the batch it is in.
 */
#include "qmatmul.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>

#if SIMD
#include <immintrin.h>
#endif

/* Weight bytes fetched ahead of use, into L2 (_MM_HINT_T1): a core's own hardware prefetch alone
 * leaves it ~25 % short of the bandwidth oneDNN's float32 GEMV reaches, and prefetching into L1
 * ties up its few fill buffers (BENCHMARKS.md). */
#define PREFETCH 2048
#define GROUP 32
#define INLINE static inline __attribute__((always_inline))
#define ACT_BLOCK 4      /* activation rows that share one pass over a weight row */

#if SIMD && (defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__))
#define VNNI 1 /* vpdpbusd: u8 x s8 products summed in int32, no int16 step to saturate */
#else
#define VNNI 0
#endif

int llama_native_simd(void) { return SIMD + VNNI; }

/* The calling thread's share of `count` items (weight blocks or rows), cut into S <= MAX_STREAMS
 * contiguous streams that it walks side by side: stream s holds items start[s]..start[s+1]. One
 * stream of loads per core leaves DRAM's latency exposed (~70 % of the bandwidth float32 GEMVs
 * reach, BENCHMARKS.md); S long streams keep S times the misses in flight. */
#define MAX_STREAMS 4
static void thread_streams(int64_t count, int S, int64_t *start) {
    int threads = 1, t = 0;
#ifdef _OPENMP
    threads = omp_get_num_threads(), t = omp_get_thread_num();
#endif
    const int64_t first = count * t / threads, mine = count * (t + 1) / threads - first;
    for (int s = 0; s <= S; s++) start[s] = first + mine * s / S;
}

/* Step i of the streams: their i-th items (those not past their stream's end) into item[];
 * returns how many. Steps run from 0 to (stream length + S - 1) / S. */
static int stream_items(const int64_t *start, int S, int64_t i, int64_t *item) {
    int live = 0;
    for (int s = 0; s < S; s++)
        if (start[s] + i < start[s + 1]) item[live++] = start[s] + i;
    return live;
}

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

/* ---- weights, in blocks of 8 output rows (llama/native.py repacks them at load time) ----
 *
 * Vector lane i (of 8 int32 lanes) belongs to output row i of the block, so one integer dot
 * instruction advances 8 rows by 4 input columns, the activation's 4 bytes broadcast to all lanes.
 * For each block and group of 32 columns, "quad" j holds columns 4j..4j+3 of the 8 rows as 32
 * bytes: row i's 4 bytes at offset 4i.
 *   int8: 8 quads of 32 bytes (256 bytes); row scales (N/8, 8) float32.
 *   int4: 4 chunks of 32 bytes (128 bytes); chunk c's low nibbles are quad c, its high nibbles
 *         quad c + 4; then per block and group 8 bfloat16 scales and 8 bfloat16 zeros (32 bytes).
 */
#define BLOCK 8

#if SIMD
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 bf16x8_to_float(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* 8 int32 lanes += u8 x s8 products of their 4 bytes. Without VNNI, vpmaddubsw's int16 pair sums
 * must not saturate: |u| <= 127 for int8 weights (sign trick) and u <= 15 for int4 codes. */
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

/* Fetch into L2 the cache lines PREFETCH bytes ahead of the `bytes` about to be read at p. */
INLINE void prefetch_ahead(const void *p, int bytes) {
    for (int c = 0; c < bytes; c += 64) _mm_prefetch((const char *)p + PREFETCH + c, _MM_HINT_T1);
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
                __m256i dot = _mm256_setzero_si256();
                for (int j = 0; j < 8; j++) dot = dot_acc(dot, codes[j], bcast4(xg + 4 * j));
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
            for (int j = 0; j < 8; j++) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(blk + 32 * j));
                const __m256i magnitude = _mm256_sign_epi8(wv, wv); /* |w| <= 127 */
                for (int r = 0; r < R; r++) {
                    const int64_t at = r * K + g * GROUP + 4 * j;
                    hi[r] = dot_acc(hi[r], magnitude, _mm256_sign_epi8(bcast4(xq + at), wv));
                    lo[r] = dot_acc(lo[r], magnitude, _mm256_sign_epi8(bcast4(xlo + at), wv));
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
INLINE void run_blocks(const qjob *j, const int64_t *b, const int S, int64_t m, const int R) {
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
static void run_all_rows(const qjob *j, const int64_t *b, int S) {
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

int qacts_alloc(qacts *a, int bits, int64_t M, int64_t K) {
    const int64_t G = K / GROUP;
    a->xq = malloc((size_t)(M * K));
    a->xlo = bits == 8 ? malloc((size_t)(M * K)) : NULL;
    a->xd = malloc(sizeof(float) * (size_t)(M * G));
    a->xs = malloc(sizeof(float) * (size_t)(M * G));
    if (a->xq && a->xd && a->xs && (bits != 8 || a->xlo)) return 0;
    qacts_free(a);
    return -1;
}

void qacts_free(qacts *a) {
    free(a->xq), free(a->xlo), free(a->xd), free(a->xs);
    a->xq = a->xlo = NULL, a->xd = a->xs = NULL;
}

#if SIMD
void qacts_quantize(const qacts *a, const float *x, int64_t M, int64_t K) {
    quantize_activations(x, M, K, a->xq, a->xlo, a->xd, a->xs);
}

qjob qjob_make(int bits, const qacts *a, int64_t M, int64_t K, const void *w, const float *rscale, int64_t N,
               float *y) {
    const int64_t G = K / GROUP;
    const qjob j = {bits, M, K, N, G, bits == 4 ? G * 160 : G * 256, w, rscale, a->xq, a->xlo, a->xd, a->xs, y};
    return j;
}

/* The calling thread's share of j: a contiguous range of the blocks of 8 output rows, cut into S
 * streams that it walks side by side (S from the row count: 4 for one row, 2 for two, else 1).
 * N is the true row count (the last block may be padding). Every output element is computed by
 * the same instructions whichever the thread, stream or batch. */
void qjob_share(const qjob *j) {
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
    qacts a;
    if (qacts_alloc(&a, bits, M, K)) return -1;
    qacts_quantize(&a, x, M, K);
    const qjob j = qjob_make(bits, &a, M, K, w, rscale, N, y);
#pragma omp parallel
    qjob_share(&j);
    qacts_free(&a);
    return 0;
#else
    (void)bits, (void)x, (void)M, (void)K, (void)w, (void)rscale, (void)N, (void)y;
    return -2;
#endif
}

int llama_int4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N, float *y) {
    return quantized_matmul(4, x, M, K, w, NULL, N, y);
}

int llama_int8_matmul(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scales, int64_t N,
                      float *y) {
    return quantized_matmul(8, x, M, K, w, scales, N, y);
}

/* ---- bfloat16, a few rows (decode): fp32 accumulation, result rounded to bfloat16 ----
 * Four independent accumulators per row keep four FMA chains in flight (with one or two, the
 * FMA latency, not memory, bounds a row), and each thread walks ROW_STREAMS runs of consecutive
 * rows side by side (thread_streams): as many long streams of loads in flight, each prefetched
 * across its row boundaries (rows side by side instead would restart 4 streams every row). With
 * AVX512-BF16, vdpbf16ps multiplies 32 bfloat16 pairs per instruction. Every row's sum is taken
 * in the same order whatever the rows beside it. */
#if BF16_WANTS_FLOATS
#define ROW_STREAMS 2 /* 8 accumulators of the 16 ymm registers */
#else
#define ROW_STREAMS 4 /* 16 accumulators of the 32 zmm registers */
#endif

/* out[r] = w[r] . x for the RS rows w[r] (RS constant per call, <= ROW_STREAMS) */
INLINE void bf16_dots(const uint16_t *const *w, const int RS, const uint16_t *x, const float *xf, int64_t K,
                      float *out) {
    int64_t k = 0;
    float total[ROW_STREAMS];
#if SIMD && defined(__AVX512BF16__)
    (void)xf;
    __m512 a[ROW_STREAMS][4];
    for (int r = 0; r < RS; r++)
        for (int u = 0; u < 4; u++) a[r][u] = _mm512_setzero_ps();
    for (; k + 128 <= K; k += 128) {
        for (int r = 0; r < RS; r++) {
            const uint16_t *wr = w[r] + k;
            prefetch_ahead(wr, 256);
            for (int u = 0; u < 4; u++)
                a[r][u] = _mm512_dpbf16_ps(a[r][u], (__m512bh)_mm512_loadu_si512(wr + 32 * u),
                                           (__m512bh)_mm512_loadu_si512(x + k + 32 * u));
        }
    }
    for (int r = 0; r < RS; r++)
        total[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[r][0], a[r][1]), _mm512_add_ps(a[r][2], a[r][3])));
#elif SIMD
    __m256 a[ROW_STREAMS][4];
    for (int r = 0; r < RS; r++)
        for (int u = 0; u < 4; u++) a[r][u] = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        for (int r = 0; r < RS; r++) {
            const uint16_t *wr = w[r] + k;
            prefetch_ahead(wr, 64);
            for (int u = 0; u < 4; u++) {
                const __m256 wf = _mm256_castsi256_ps(
                    _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(wr + 8 * u))), 16));
                a[r][u] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xf + k + 8 * u), a[r][u]);
            }
        }
    }
    for (int r = 0; r < RS; r++) total[r] = hsum(_mm256_add_ps(_mm256_add_ps(a[r][0], a[r][1]), _mm256_add_ps(a[r][2], a[r][3])));
#else
    (void)xf;
    for (int r = 0; r < RS; r++) total[r] = 0.0f;
#endif
    for (int r = 0; r < RS; r++) {
        for (int64_t kk = k; kk < K; kk++) total[r] += bf16_to_float(w[r][kk]) * bf16_to_float(x[kk]);
        out[r] = total[r];
    }
}

/* ---- float32 (decode: a few rows; prompts: a few dozen) ----
 * One vector type for both: zmm with AVX-512, else ymm. */
#if SIMD && defined(__AVX512F__)
#define FV 16 /* floats per vector */
#define F_WR 4
#define F_AR 4 /* prompt tiles: 16 accumulators + 8 operands of the 32 zmm registers */
#define F32_STREAMS 4 /* decode: 16 accumulators */
typedef __m512 fvec;
#define fv_zero() _mm512_setzero_ps()
#define fv_load(p) _mm512_loadu_ps(p)
#define fv_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define fv_add(a, b) _mm512_add_ps(a, b)
#define fv_sum(v) _mm512_reduce_add_ps(v)
#elif SIMD
#define FV 8
#define F_WR 4
#define F_AR 2 /* prompt tiles: 8 accumulators + 6 operands of the 16 ymm registers */
#define F32_STREAMS 2 /* decode: 8 accumulators */
typedef __m256 fvec;
#define fv_zero() _mm256_setzero_ps()
#define fv_load(p) _mm256_loadu_ps(p)
#define fv_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define fv_add(a, b) _mm256_add_ps(a, b)
#define fv_sum(v) hsum(v)
#else
#define F32_STREAMS 2
#endif
#define MAX_ROW_STREAMS 4

/* out[r] = w[r] . x for the RS rows w[r] (RS constant per call, <= F32_STREAMS): the bfloat16
 * kernel's loop with plain FMAs, 4 accumulators per row. */
INLINE void f32_dots(const float *const *w, const int RS, const float *x, int64_t K, float *out) {
    int64_t k = 0;
    float total[F32_STREAMS];
#if SIMD
    fvec a[F32_STREAMS][4];
    for (int r = 0; r < RS; r++)
        for (int u = 0; u < 4; u++) a[r][u] = fv_zero();
    for (; k + 4 * FV <= K; k += 4 * FV) {
        for (int r = 0; r < RS; r++) {
            const float *wr = w[r] + k;
            prefetch_ahead(wr, 4 * FV * (int)sizeof(float));
            for (int u = 0; u < 4; u++) a[r][u] = fv_fma(fv_load(wr + FV * u), fv_load(x + k + FV * u), a[r][u]);
        }
    }
    for (int r = 0; r < RS; r++) total[r] = fv_sum(fv_add(fv_add(a[r][0], a[r][1]), fv_add(a[r][2], a[r][3])));
#else
    for (int r = 0; r < RS; r++) total[r] = 0.0f;
#endif
    for (int r = 0; r < RS; r++) {
        for (int64_t kk = k; kk < K; kk++) total[r] += w[r][kk] * x[kk];
        out[r] = total[r];
    }
}

/* The calling thread's share of j: S runs of consecutive weight rows (thread_streams) walked side
 * by side; bf16 and S constant per call. */
INLINE void rows_share(const rjob *j, const int bf16, const int S) {
    const size_t row_bytes = (size_t)j->K * (bf16 ? sizeof(uint16_t) : sizeof(float));
    int64_t start[MAX_ROW_STREAMS + 1], n[MAX_ROW_STREAMS];
    thread_streams(j->N, S, start);
    for (int64_t i = 0; i < (start[S] - start[0] + S - 1) / S; i++) {
        const int live = stream_items(start, S, i, n);
        const void *rows[MAX_ROW_STREAMS];
        for (int r = 0; r < live; r++) rows[r] = (const char *)j->w + n[r] * row_bytes;
        for (int64_t m = 0; m < j->M; m++) {
            float out[MAX_ROW_STREAMS];
            const float *xfm = j->xf ? j->xf + m * j->K : NULL;
            if (bf16) {
                const uint16_t *xm = j->x16 + m * j->K, *const *w = (const uint16_t *const *)rows;
                if (live == S) bf16_dots(w, S, xm, xfm, j->K, out);
                else for (int r = 0; r < live; r++) bf16_dots(w + r, 1, xm, xfm, j->K, out + r);
            } else {
                const float *const *w = (const float *const *)rows;
                if (live == S) f32_dots(w, S, xfm, j->K, out);
                else for (int r = 0; r < live; r++) f32_dots(w + r, 1, xfm, j->K, out + r);
            }
            for (int r = 0; r < live; r++) {
                const int64_t at = m * j->N + n[r];
                if (!bf16) j->yf[at] = out[r];
                else if (j->y16) j->y16[at] = float_to_bf16(out[r]);
                else j->yf[at] = bf16_to_float(float_to_bf16(out[r]));
            }
        }
    }
}

void rjob_share(const rjob *j) {
    if (j->bf16) rows_share(j, 1, ROW_STREAMS);
    else rows_share(j, 0, F32_STREAMS);
}

int llama_bf16_matmul(const uint16_t *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, uint16_t *y) {
    float *xf = NULL;
    if (BF16_WANTS_FLOATS) {
        if (!(xf = malloc(sizeof(float) * (size_t)(M * K)))) return -1;
        for (int64_t i = 0; i < M * K; i++) xf[i] = bf16_to_float(x[i]);
    }
    const rjob j = {1, M, K, N, x, xf, w, y, NULL};
#pragma omp parallel
    rjob_share(&j);
    free(xf);
    return 0;
}

/* ---- float32, prompt-sized (a few to a few dozen rows) ----
 * y (M, N) = x (M, K) @ W.T. A prompt's matmuls are small GEMMs whose weights come from DRAM once:
 * each thread takes a contiguous range of weight rows, WR at a time, and multiplies them with AR
 * activation rows at a time in registers (WR * AR accumulators), the activations staying in L2;
 * the next weight rows are prefetched while the current ones are used, so that streaming the
 * weights overlaps the arithmetic (torch's GEMMs load them first, then compute). */

#if SIMD
/* y[a][r] = x[a] . w[r] for WR weight rows and AR activation rows (both constant per call). */
INLINE void f32_tile(const float *const *w, const int WR, const float *const *x, const int AR, int64_t K,
                     const float *const *next, float *out) {
    fvec acc[F_WR * F_AR];
    for (int i = 0; i < WR * AR; i++) acc[i] = fv_zero();
    int64_t k = 0;
    for (; k + FV <= K; k += FV) {
        if (next && k % 16 == 0)
            for (int r = 0; r < WR; r++) _mm_prefetch((const char *)(next[r] + k), _MM_HINT_T1);
        fvec wv[F_WR];
        for (int r = 0; r < WR; r++) wv[r] = fv_load(w[r] + k);
        for (int a = 0; a < AR; a++) {
            const fvec xv = fv_load(x[a] + k);
            for (int r = 0; r < WR; r++) acc[a * WR + r] = fv_fma(wv[r], xv, acc[a * WR + r]);
        }
    }
    for (int a = 0; a < AR; a++)
        for (int r = 0; r < WR; r++) {
            float total = fv_sum(acc[a * WR + r]);
            for (int64_t kk = k; kk < K; kk++) total += w[r][kk] * x[a][kk];
            out[a * WR + r] = total;
        }
}

/* Weight rows n..n+WR against every activation row; results into y. */
INLINE void f32_rows(const float *x, int64_t M, int64_t K, const float *w, int64_t N, int64_t n, const int WR,
                     int64_t last, float *y) {
    const float *wr[F_WR], *next[F_WR];
    for (int r = 0; r < WR; r++) {
        wr[r] = w + (n + r) * K;
        next[r] = w + (n + r + WR < last ? n + r + WR : n + r) * K; /* the rows after these (prefetch) */
    }
    float out[F_WR * F_AR];
    int64_t m = 0;
    for (; m + F_AR <= M; m += F_AR) {
        const float *xr[F_AR];
        for (int a = 0; a < F_AR; a++) xr[a] = x + (m + a) * K;
        f32_tile(wr, WR, xr, F_AR, K, m == 0 ? next : NULL, out);
        for (int a = 0; a < F_AR; a++)
            for (int r = 0; r < WR; r++) y[(m + a) * N + n + r] = out[a * WR + r];
    }
    for (; m < M; m++) {
        const float *xr[1] = {x + m * K};
        f32_tile(wr, WR, xr, 1, K, NULL, out);
        for (int r = 0; r < WR; r++) y[m * N + n + r] = out[r];
    }
}
#endif

#if SIMD
void fgemm_share(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y) {
    int64_t start[2];
    thread_streams(N, 1, start);
    int64_t n = start[0];
    for (; n + F_WR <= start[1]; n += F_WR) f32_rows(x, M, K, w, N, n, F_WR, start[1], y);
    for (; n < start[1]; n++) f32_rows(x, M, K, w, N, n, 1, start[1], y);
}
#endif

int llama_f32_matmul(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y) {
#if SIMD
#pragma omp parallel
    fgemm_share(x, M, K, w, N, y);
    return 0;
#else
    (void)x, (void)M, (void)K, (void)w, (void)N, (void)y;
    return -2;
#endif
}
