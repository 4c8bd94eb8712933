/* The portable int8 and int4 weights (llama/kernels/formats.py) -> matmul_int.c's blocks of BLOCK
 * output rows, at load time. llama/kernels/repack.py defines the same layouts with tensor
 * operations (any device); these loops write the same bytes in one parallel pass over the weight,
 * at the speed of memory, where the tensor form spends seconds per gigabyte in permutes.
 *
 * Rows past N (the last block's padding) are zero codes with zero scales, as repack.pad_rows makes them.
 */
#include "common.h"

/* q (N, K) int8 -> out (ceil(N / 8) blocks) x (K / 32 groups) x (8 quads) x (8 rows) x (4 bytes). */
int llama_repack_int8(const int8_t *q, int64_t N, int64_t K, int8_t *out) {
    if (K % GROUP) return -3;
    const int64_t nb = (N + BLOCK - 1) / BLOCK, G = K / GROUP;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        for (int r = 0; r < BLOCK; r++) {
            const int64_t row = b * BLOCK + r;
            for (int64_t g = 0; g < G; g++) {
                int8_t *dst = out + (b * G + g) * (BLOCK * GROUP) + 4 * r;
                for (int quad = 0; quad < 8; quad++) {
                    if (row < N) memcpy(dst + 32 * quad, q + row * K + g * GROUP + 4 * quad, 4);
                    else memset(dst + 32 * quad, 0, 4);
                }
            }
        }
    }
    return 0;
}

/* packed (N, K/2) uint8 (even column in the low nibble) and sz (N, K/32, 2) bfloat16 (scale, zero)
 * -> out blocks x groups x 160 bytes: 4 chunks of 32 bytes, in chunk c row r's byte j holding
 * column 4c + j of the group in its low nibble and column 16 + 4c + j in its high one; then the
 * 8 rows' scales and the 8 rows' zeros (bfloat16). */
int llama_repack_int4(const uint8_t *packed, const uint16_t *sz, int64_t N, int64_t K, uint8_t *out) {
    if (K % GROUP) return -3;
    const int64_t nb = (N + BLOCK - 1) / BLOCK, G = K / GROUP;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        for (int r = 0; r < BLOCK; r++) {
            const int64_t row = b * BLOCK + r;
            for (int64_t g = 0; g < G; g++) {
                uint8_t *dst = out + (b * G + g) * 160;
                uint16_t *scales = (uint16_t *)(dst + 128);
                if (row >= N) {
                    for (int c = 0; c < 4; c++) memset(dst + 32 * c + 4 * r, 0, 4);
                    scales[r] = scales[BLOCK + r] = 0;
                    continue;
                }
                const uint8_t *src = packed + row * (K / 2) + g * (GROUP / 2); /* the group's 32 codes */
                uint8_t codes[GROUP];
                for (int i = 0; i < GROUP / 2; i++) codes[2 * i] = src[i] & 15, codes[2 * i + 1] = src[i] >> 4;
                for (int c = 0; c < 4; c++)
                    for (int j = 0; j < 4; j++)
                        dst[32 * c + 4 * r + j] = (uint8_t)(codes[4 * c + j] | codes[16 + 4 * c + j] << 4);
                scales[r] = sz[(row * G + g) * 2];
                scales[BLOCK + r] = sz[(row * G + g) * 2 + 1];
            }
        }
    }
    return 0;
}
