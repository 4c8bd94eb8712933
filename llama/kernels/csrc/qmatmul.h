/* What qmatmul.c shares with decode.c: activations quantized once and read by several matmuls,
 * and a matmul's work split among the threads of a parallel region the caller opens (so that
 * one region can run several matmuls that read the same activations). */
#ifndef LLAMA_QMATMUL_H
#define LLAMA_QMATMUL_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#define SIMD 1
#else
#define SIMD 0
#endif

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

/* M rows of K activations in int8 groups of 32 (qmatmul.c's quantize_activations): int4 weights
 * read xq, xd and xs; int8 ones xq, xlo and xd. */
typedef struct {
    int8_t *xq, *xlo;
    float *xd, *xs;
} qacts;

/* One matmul y (M, N) = activations (M, K) @ W.T, W in qmatmul.c's blocks of `bits` 4 or 8. */
typedef struct {
    int bits;
    int64_t M, K, N, G, block_bytes;
    const uint8_t *w;
    const float *rscale; /* int8: the padded row scales */
    const int8_t *xq, *xlo;
    const float *xd, *xs;
    float *y;
} qjob;

/* One bfloat16 or float32 matmul of a few rows (decode): y (M, N) = x (M, K) @ W.T, float32 sums.
 * bf16 = 1: W (N, K) and x16 bfloat16, the sums rounded to bfloat16, into y16 or, where y16 is
 * NULL, into yf (as the floats those bfloat16 values are); without AVX512-BF16 the kernel reads x
 * as floats, xf (M, K), which the caller provides. bf16 = 0: W and xf float32, sums into yf. */
#if SIMD && defined(__AVX512BF16__)
#define BF16_WANTS_FLOATS 0
#else
#define BF16_WANTS_FLOATS 1
#endif
typedef struct {
    int bf16;
    int64_t M, K, N;
    const uint16_t *x16;
    const float *xf;
    const void *w;
    uint16_t *y16;
    float *yf;
} rjob;

int qacts_alloc(qacts *a, int bits, int64_t M, int64_t K); /* 0, or -1 out of memory */
void qacts_free(qacts *a);
#if SIMD
void qacts_quantize(const qacts *a, const float *x, int64_t M, int64_t K);
qjob qjob_make(int bits, const qacts *a, int64_t M, int64_t K, const void *w, const float *rscale, int64_t N,
               float *y);
void qjob_share(const qjob *j); /* inside a parallel region: the calling thread's share of j */
/* the calling thread's share of a float32 y (M, N) = x (M, K) @ W.T of a few dozen rows (a prompt's) */
void fgemm_share(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y);
#endif
void rjob_share(const rjob *j); /* the same for a bfloat16 or float32 matmul */

#endif
