"""Weights repacked for the native kernels at load time (pure tensor functions, any device).

The int8 and int4 kernels (csrc/matmul_int.c) read their weights in blocks of BLOCK output rows,
interleaved so that one integer dot instruction advances a block's 8 rows by 4 input columns (the
layout matmul_int.c describes). The repacked weight takes the same bytes as the portable one
(llama.kernels.formats), which it replaces.
"""

import torch

from .abi import BLOCK
from .formats import INT4_GROUP as GROUP


def pad_rows(t: torch.Tensor) -> torch.Tensor:
    """Zero rows appended up to a whole block of 8 (their results are never written out)."""
    extra = -t.shape[0] % BLOCK
    return torch.cat([t, t.new_zeros(extra, *t.shape[1:])]) if extra else t.contiguous()


def int8_blocks(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 rows -> matmul_int.c's int8 blocks, as (N rounded up to 8, K) int8: each 8 rows of it
    hold one block (so shape[0] still counts output rows)."""
    q = pad_rows(q)
    n, k = q.shape
    blocks = q.reshape(n // BLOCK, BLOCK, k // GROUP, 8, 4).permute(0, 2, 3, 1, 4)  # block, group, quad, row, byte
    return blocks.contiguous().view(n, -1)


def int4_blocks(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The portable int4 form ((N, K/2) uint8, even column in the low nibble; (N, K/32, 2) scale and
    zero) -> matmul_int.c's int4 blocks as (N rounded up to 8, 5 K / 8) uint8, 8 rows per block."""
    codes = torch.stack((packed & 15, packed >> 4), dim=-1).flatten(-2)
    codes, scales = pad_rows(codes), pad_rows(scales.to(torch.bfloat16))
    n, k = codes.shape
    g = k // GROUP
    # block, row, group, half (quads 0-3 / 4-7), chunk, byte -> block, group, chunk, row, byte, half
    c = codes.reshape(n // BLOCK, BLOCK, g, 2, 4, 4).permute(0, 2, 4, 1, 5, 3)
    packed = (c[..., 0] | (c[..., 1] << 4)).reshape(n // BLOCK, g, 128)
    sz = scales.reshape(n // BLOCK, BLOCK, g, 2).permute(0, 2, 3, 1).contiguous()  # block, group, scale/zero, row
    return torch.cat([packed, sz.view(torch.uint8).reshape(n // BLOCK, g, 32)], dim=-1).view(n, -1)
