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
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SIMD 1
#else
#define SIMD 0
#endif

/* Weight bytes fetched ahead of use: a core's own hardware prefetch alone leaves it ~25 % short of
 * the bandwidth oneDNN's float32 GEMV reaches (BENCHMARKS.md). */
#define PREFETCH 2048
#define GROUP 32
#define ROWS_PER_TASK 16 /* output rows a thread takes at a time */
#define ACT_BLOCK 4      /* activation rows that share one pass over a weight row */

#if SIMD && (defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__))
#define VNNI 1 /* vpdpbusd: u8 x s8 products summed in int32, no int16 step to saturate */
#else
#define VNNI 0
#endif

int llama_native_simd(void) { return SIMD + VNNI; }

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); /* NaN stays NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
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
#pragma omp parallel for schedule(static)
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

/* One block of 8 weight rows against R (constant, <= ACT_BLOCK) activation rows; out[r] = 8 results. */
#define INLINE static inline __attribute__((always_inline))
INLINE void q4_block(const uint8_t *w, int64_t G, const int8_t *xq, const float *xd, const float *xs, int64_t K,
                     const int R, __m256 *out) {
    const __m256i mask = _mm256_set1_epi8(15);
    __m256 acc[ACT_BLOCK];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *blk = w + g * 160;
        for (int c = 0; c < 160; c += 64) _mm_prefetch((const char *)(blk + PREFETCH + c), _MM_HINT_T0);
        __m256i codes[8];
        for (int c = 0; c < 4; c++) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(blk + 32 * c));
            codes[c] = _mm256_and_si256(b, mask);
            codes[c + 4] = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
        }
        const __m256 scale = bf16x8_to_float((const uint16_t *)(blk + 128));
        const __m256 offset = _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), scale, bf16x8_to_float((const uint16_t *)(blk + 144)));
        for (int r = 0; r < R; r++) {
            const int8_t *xg = xq + r * K + g * GROUP;
            __m256i dot = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) dot = dot_acc(dot, codes[j], bcast4(xg + 4 * j));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(scale, _mm256_set1_ps(xd[r * (K / GROUP) + g])), acc[r]);
            acc[r] = _mm256_fmadd_ps(offset, _mm256_set1_ps(xs[r * (K / GROUP) + g]), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = acc[r];
}

INLINE void q8_block(const int8_t *w, const float *wscale, int64_t G, const int8_t *xq, const int8_t *xlo,
                     const float *xd, int64_t K, const int R, __m256 *out) {
    __m256 acc[ACT_BLOCK];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const int8_t *blk = w + g * 256;
        for (int c = 0; c < 256; c += 64) _mm_prefetch((const char *)(blk + PREFETCH + c), _MM_HINT_T0);
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
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(xd[r * (K / GROUP) + g]), acc[r]);
        }
    }
    const __m256 s = _mm256_loadu_ps(wscale);
    for (int r = 0; r < R; r++) out[r] = _mm256_mul_ps(acc[r], s);
}
#define CALL_R(fn, R, ...) switch (R) { /* a constant R per call, so the accumulators stay in registers */ \
    case 1: fn(__VA_ARGS__, 1, out); break; \
    case 2: fn(__VA_ARGS__, 2, out); break; \
    case 3: fn(__VA_ARGS__, 3, out); break; \
    default: fn(__VA_ARGS__, 4, out); }
#endif

/* The shared driver: quantize x, then every thread takes whole blocks of 8 output rows and runs
 * them against ACT_BLOCK activation rows at a time. N is the true row count (the last block may
 * be padding). Returns 0, -1 if out of memory, -2 if built without SIMD (the caller checks). */
static int quantized_matmul(int bits, const float *x, int64_t M, int64_t K, const void *w, const float *rscale,
                            int64_t N, float *y) {
#if SIMD
    const int64_t G = K / GROUP, blocks = (N + BLOCK - 1) / BLOCK;
    const int64_t block_bytes = bits == 4 ? G * 160 : G * 256;
    int8_t *xq = malloc((size_t)(M * K)), *xlo = bits == 8 ? malloc((size_t)(M * K)) : NULL;
    float *xd = malloc(sizeof(float) * (size_t)(M * G)), *xs = malloc(sizeof(float) * (size_t)(M * G));
    if (!xq || !xd || !xs || (bits == 8 && !xlo)) {
        free(xq), free(xlo), free(xd), free(xs);
        return -1;
    }
    quantize_activations(x, M, K, xq, xlo, xd, xs);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *wb = (const uint8_t *)w + b * block_bytes;
        for (int64_t m = 0; m < M; m += ACT_BLOCK) {
            const int R = M - m < ACT_BLOCK ? (int)(M - m) : ACT_BLOCK;
            __m256 out[ACT_BLOCK];
            if (bits == 4) {
                CALL_R(q4_block, R, wb, G, xq + m * K, xd + m * G, xs + m * G, K)
            } else {
                CALL_R(q8_block, R, (const int8_t *)wb, rscale + b * BLOCK, G, xq + m * K, xlo + m * K, xd + m * G, K)
            }
            for (int r = 0; r < R; r++) {
                float lanes[BLOCK];
                _mm256_storeu_ps(lanes, out[r]);
                for (int i = 0; i < BLOCK && b * BLOCK + i < N; i++) y[(m + r) * N + b * BLOCK + i] = lanes[i];
            }
        }
    }
    free(xq), free(xlo), free(xd), free(xs);
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
 * FMA latency, not memory, bounds a row). With AVX512-BF16, vdpbf16ps multiplies 32 bfloat16
 * pairs per instruction. */

static float bf16_dot(const uint16_t *w, const uint16_t *x, const float *xf, int64_t K) {
    int64_t k = 0;
    float total = 0.0f;
#if SIMD && defined(__AVX512BF16__)
    (void)xf;
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; k + 128 <= K; k += 128) {
        for (int c = 0; c < 256; c += 64) _mm_prefetch((const char *)(w + k) + PREFETCH + c, _MM_HINT_T0);
        for (int u = 0; u < 4; u++)
            a[u] = _mm512_dpbf16_ps(a[u], (__m512bh)_mm512_loadu_si512(w + k + 32 * u),
                                    (__m512bh)_mm512_loadu_si512(x + k + 32 * u));
    }
    total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
#elif SIMD
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k) + PREFETCH, _MM_HINT_T0);
        for (int u = 0; u < 4; u++) {
            const __m256 wf = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + k + 8 * u))), 16));
            a[u] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xf + k + 8 * u), a[u]);
        }
    }
    total = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
#endif
#if !SIMD
    (void)xf;
#endif
    for (; k < K; k++) total += bf16_to_float(w[k]) * bf16_to_float(x[k]);
    return total;
}

int llama_bf16_matmul(const uint16_t *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, uint16_t *y) {
#if SIMD && defined(__AVX512BF16__)
    float *xf = NULL; /* vdpbf16ps reads x as bfloat16: no float copy to make */
#else
    float *xf = malloc(sizeof(float) * (size_t)(M * K));
    if (!xf) return -1;
    for (int64_t i = 0; i < M * K; i++) xf[i] = bf16_to_float(x[i]);
#endif
    const int64_t tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t n_end = (t + 1) * ROWS_PER_TASK < N ? (t + 1) * ROWS_PER_TASK : N;
        for (int64_t n = t * ROWS_PER_TASK; n < n_end; n++)
            for (int64_t m = 0; m < M; m++)
                y[m * N + n] = float_to_bf16(bf16_dot(w + n * K, x + m * K, xf ? xf + m * K : NULL, K));
    }
    free(xf);
    return 0;
}
