/* bfloat16 and float32 weights: y (M, N) = x (M, K) @ W.T with float32 sums, for a few rows (decode)
 * and for prompt-sized blocks of rows (float32). Parallel over output rows with OpenMP.
 *
 * The few-row kernels compute every row's sums in the same order whatever M is, so a row's
 * result does not depend on the batch it is in.
 */
#include "common.h"

#include <stdlib.h>

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
INLINE void rows_share(const rows_matmul *j, const int bf16, const int S) {
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

void rows_matmul_share(const rows_matmul *j) {
    if (j->bf16) rows_share(j, 1, ROW_STREAMS);
    else rows_share(j, 0, F32_STREAMS);
}

int llama_matmul_bf16_rows(const uint16_t *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, uint16_t *y) {
    float *xf = NULL;
    if (BF16_WANTS_FLOATS) {
        if (!(xf = malloc(sizeof(float) * (size_t)(M * K)))) return -1;
        for (int64_t i = 0; i < M * K; i++) xf[i] = bf16_to_float(x[i]);
    }
    const rows_matmul j = {1, M, K, N, x, xf, w, y, NULL};
#pragma omp parallel
    rows_matmul_share(&j);
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
void f32_tiles_share(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y) {
    int64_t start[2];
    thread_streams(N, 1, start);
    int64_t n = start[0];
    for (; n + F_WR <= start[1]; n += F_WR) f32_rows(x, M, K, w, N, n, F_WR, start[1], y);
    for (; n < start[1]; n++) f32_rows(x, M, K, w, N, n, 1, start[1], y);
}
#endif

int llama_matmul_f32_tiles(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y) {
#if SIMD
#pragma omp parallel
    f32_tiles_share(x, M, K, w, N, y);
    return 0;
#else
    (void)x, (void)M, (void)K, (void)w, (void)N, (void)y;
    return -2;
#endif
}
