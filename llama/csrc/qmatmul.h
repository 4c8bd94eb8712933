/* What qmatmul.c shares with decode.c: activations quantized once and read by several matmuls,
 * and a matmul's work split among the threads of a parallel region the caller opens (so that
 * one region can run several matmuls that read the same activations). */
#ifndef LLAMA_QMATMUL_H
#define LLAMA_QMATMUL_H

#include <stdint.h>

#if defined(__AVX2__) && defined(__FMA__)
#define SIMD 1
#else
#define SIMD 0
#endif

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

int qacts_alloc(qacts *a, int bits, int64_t M, int64_t K); /* 0, or -1 out of memory */
void qacts_free(qacts *a);
#if SIMD
void qacts_quantize(const qacts *a, const float *x, int64_t M, int64_t K);
qjob qjob_make(int bits, const qacts *a, int64_t M, int64_t K, const void *w, const float *rscale, int64_t N,
               float *y);
void qjob_share(const qjob *j); /* inside a parallel region: the calling thread's share of j */
#endif

#endif
