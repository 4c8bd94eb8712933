/* What the kernel files share (matmul_int.c, matmul_float.c, forward.c): the SIMD level, bfloat16
 * conversions, the split of a matmul's work among the threads of a parallel region the caller
 * opens (so that one region can run several matmuls that read the same activations), prefetching,
 * and the jobs and entry points each file offers the others.
 *
 * Built on the user's machine at first use by llama/kernels/native.py (cc -O3 -march=native
 * -fopenmp), loaded with ctypes. Loaded into a process that has imported torch, the OpenMP runtime
 * is torch's own (same soname), so torch.set_num_threads governs these loops too.
 */
#ifndef LLAMA_KERNELS_COMMON_H
#define LLAMA_KERNELS_COMMON_H

#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#define SIMD 1
#include <immintrin.h>
#else
#define SIMD 0
#endif

#define INLINE static inline __attribute__((always_inline))

/* The quantized formats' layout (llama/kernels/native.py checks both against its own at load):
 * activations and int4 weights in groups of GROUP along the input, weights repacked in blocks of
 * BLOCK output rows. */
#define GROUP 32
#define BLOCK 8

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

/* The calling thread's share of `count` items (weight blocks or rows), cut into S <= MAX_STREAMS
 * contiguous streams that it walks side by side: stream s holds items start[s]..start[s+1]. One
 * stream of loads per core leaves DRAM's latency exposed (BENCHMARKS.md, "Streams"); S long
 * streams keep S times the misses in flight. */
#define MAX_STREAMS 4
static inline void thread_streams(int64_t count, int S, int64_t *start) {
    int threads = 1, t = 0;
#ifdef _OPENMP
    threads = omp_get_num_threads(), t = omp_get_thread_num();
#endif
    const int64_t first = count * t / threads, mine = count * (t + 1) / threads - first;
    for (int s = 0; s <= S; s++) start[s] = first + mine * s / S;
}

/* Step i of the streams: their i-th items (those not past their stream's end) into item[];
 * returns how many. Steps run from 0 to (stream length + S - 1) / S. */
static inline int stream_items(const int64_t *start, int S, int64_t i, int64_t *item) {
    int live = 0;
    for (int s = 0; s < S; s++)
        if (start[s] + i < start[s + 1]) item[live++] = start[s] + i;
    return live;
}

#if SIMD
/* Weight bytes fetched ahead of use, into L2 (_MM_HINT_T1): a core's own hardware prefetch alone
 * leaves it short of the bandwidth oneDNN's float32 GEMV reaches, and prefetching into L1 ties up
 * its few fill buffers (BENCHMARKS.md, "Streams"). */
#define PREFETCH 2048

/* Fetch into L2 the cache lines PREFETCH bytes ahead of the `bytes` about to be read at p. */
INLINE void prefetch_ahead(const void *p, int bytes) {
    for (int c = 0; c < bytes; c += 64) _mm_prefetch((const char *)p + PREFETCH + c, _MM_HINT_T1);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 bf16x8_to_float(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#endif

/* ---- matmul_int.c: int4 and int8 weights against activations quantized to int8 groups ---- */

/* M rows of K activations quantized in groups of GROUP (matmul_int.c's quantize_activations): int4
 * weights read xq, xd and xs; int8 ones xq, xlo and xd. */
typedef struct {
    int8_t *xq, *xlo;
    float *xd, *xs;
} q8_acts;

/* One matmul y (M, N) = activations (M, K) @ W.T, W in matmul_int.c's blocks of `bits` 4 or 8. */
typedef struct {
    int bits;
    int64_t M, K, N, G, block_bytes;
    const uint8_t *w;
    const float *rscale; /* int8: the padded row scales */
    const int8_t *xq, *xlo;
    const float *xd, *xs;
    float *y;
} int_matmul;

int q8_acts_alloc(q8_acts *a, int bits, int64_t M, int64_t K); /* 0, or -1 out of memory */
void q8_acts_free(q8_acts *a);
#if SIMD
void q8_acts_quantize(const q8_acts *a, const float *x, int64_t M, int64_t K);
int_matmul int_matmul_make(int bits, const q8_acts *a, int64_t M, int64_t K, const void *w, const float *rscale,
                           int64_t N, float *y);
void int_matmul_share(const int_matmul *j); /* inside a parallel region: the calling thread's share of j */
#endif

/* ---- matmul_float.c: bfloat16 and float32 weights ---- */

/* One bfloat16 or float32 matmul of a few rows (decode): y (M, N) = x (M, K) @ W.T, float32 sums,
 * each row's in the same order whatever M is.
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
} rows_matmul;

void rows_matmul_share(const rows_matmul *j); /* inside a parallel region: the calling thread's share */
#if SIMD
/* the calling thread's share of a float32 y (M, N) = x (M, K) @ W.T of a few dozen rows (a prompt's),
 * in register tiles of weight rows x activation rows */
void f32_tiles_share(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y);
#endif

#endif
