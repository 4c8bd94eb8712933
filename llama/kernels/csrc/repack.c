/* The portable int8 and int4 weights (llama/kernels/formats.py) -> matmul_int.c's blocks of BLOCK
 * output rows, at load time. llama/kernels/repack.py defines the same layouts with tensor
 * operations (any device); these loops write the same bytes in one parallel pass over the weight,
 * at the speed of memory, where the tensor form spends seconds per gigabyte in permutes.
 *
 * Rows past N (the last block's padding) are zero codes with zero scales, as repack.pad_rows makes them.
 */
#include "common.h"

/* One row's group g of an int8 weight: 8 quads of 4 bytes, 32 bytes apart (row r at byte 4 r). */
INLINE void int8_group(const int8_t *q, int64_t K, int64_t row, int64_t g, int r, int8_t *dst) {
    for (int quad = 0; quad < 8; quad++) memcpy(dst + 32 * quad + 4 * r, q + row * K + g * GROUP + 4 * quad, 4);
}

/* One row's group g of an int4 weight: in chunk c row r's byte j holds column 4c + j of the group
 * in its low nibble and column 16 + 4c + j in its high one; then the row's scale and zero among
 * the block's 8 scales and 8 zeros (bfloat16). */
INLINE void int4_group(const uint8_t *packed, const uint16_t *sz, int64_t K, int64_t row, int64_t g, int r,
                       uint8_t *dst) {
    const uint8_t *src = packed + row * (K / 2) + g * (GROUP / 2); /* the group's 32 codes */
    uint8_t codes[GROUP];
    for (int i = 0; i < GROUP / 2; i++) codes[2 * i] = src[i] & 15, codes[2 * i + 1] = src[i] >> 4;
    for (int c = 0; c < 4; c++)
        for (int j = 0; j < 4; j++) dst[32 * c + 4 * r + j] = (uint8_t)(codes[4 * c + j] | codes[16 + 4 * c + j] << 4);
    uint16_t *scales = (uint16_t *)(dst + 128);
    scales[r] = sz[(row * (K / GROUP) + g) * 2];
    scales[BLOCK + r] = sz[(row * (K / GROUP) + g) * 2 + 1];
}

/* Every (block, row, group) of a weight, in parallel over blocks: `bytes` per block and group
 * (int8: 256, int4: 160), left zero for the padding rows. */
static int repack(int bits, const void *w, const uint16_t *sz, int64_t N, int64_t K, uint8_t *out) {
    if (K % GROUP) return -4;
    const int64_t nb = (N + BLOCK - 1) / BLOCK, G = K / GROUP, bytes = bits == 4 ? 160 : BLOCK * GROUP;
    memset(out + N / BLOCK * G * bytes, 0, (size_t)((nb - N / BLOCK) * G * bytes)); /* a partial last block */
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < BLOCK && b * BLOCK + r < N; r++)
            for (int64_t g = 0; g < G; g++) {
                uint8_t *dst = out + (b * G + g) * bytes;
                if (bits == 4) int4_group(w, sz, K, b * BLOCK + r, g, r, dst);
                else int8_group(w, K, b * BLOCK + r, g, r, (int8_t *)dst);
            }
    return 0;
}

/* q (N, K) int8 -> out (ceil(N / 8) blocks) x (K / 32 groups) x (8 quads) x (8 rows) x (4 bytes). */
int llama_repack_int8(const int8_t *q, int64_t N, int64_t K, int8_t *out) {
    return repack(8, q, NULL, N, K, (uint8_t *)out);
}

/* packed (N, K/2) uint8 (even column in the low nibble) and sz (N, K/32, 2) bfloat16 (scale, zero)
 * -> out blocks x groups x 160 bytes: 4 chunks of 32 bytes (int4_group), then 8 scales and 8 zeros. */
int llama_repack_int4(const uint8_t *packed, const uint16_t *sz, int64_t N, int64_t K, uint8_t *out) {
    return repack(4, packed, sz, N, K, out);
}
