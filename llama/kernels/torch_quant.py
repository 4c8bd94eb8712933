"""Weight-only quantized matmuls through torch: the fused torch kernels where the device has them,
a portable dequantize-then-matmul path everywhere else (the formats: llama.kernels.formats).

int8 (per output channel): y = (x @ q.T) * scale, through `aten::_weight_int8pack_mm`, which
reads the int8 weight directly (no widened copy per step). It is fast with bfloat16 activations
only (BENCHMARKS.md, "Figures behind choices in the code"), so activations are
cast to bfloat16 around it and back: the weight's own rounding (1/254 of a row's range) is
larger than bfloat16's (1/256 relative), and BENCHMARKS.md states the combined cost.

int4: `aten::_weight_int4pack_mm_for_cpu` reads the portable format's w = (q - 8) * scale + zero
from its own blocked layout, made once at load time.

On CUDA and MPS, `aten::_weight_int4pack_mm` reads the same w = (q - 8) * scale + zero with the
same (in // group, out, 2) scales, from tiles that `aten::_convert_weight_to_int4pack` makes out
of uint8 (out, in // 2) with the even input column in the HIGH nibble (torch >= 2.5; see its
`matrix_to_m16n8k16_Bint4_layout` in aten/src/ATen/native/cuda/int4mm.cu and the MPS
`weight_to_int4pack` shader): the portable bytes with their nibbles swapped.
"""

from typing import Tuple

import torch
import torch.nn.functional as F

from ..runtime.backend import device_has_kernel, int4_gpu_dtype, int4_gpu_generation_ok
from .dense import linear
from .formats import dequantize_int4, unpack_nibbles

INT4_ROWS_MULTIPLE = 16  # the CPU int4 kernel packs output rows in blocks of 16
CONVERT_ROWS = 1024


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


# ---- int8, per output channel ----


def int8_linear_fused(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x @ (q * scales[:, None]).T for int8 q (out, in) and bfloat16 scales, by the fused kernel
    (where `backend.device_has_kernel("_weight_int8pack_mm", device)`); activations in bfloat16 inside."""
    y = torch.ops.aten._weight_int8pack_mm(_rows(x).to(torch.bfloat16), q, scales)
    return y.to(x.dtype).reshape(*x.shape[:-1], q.shape[0])


def int8_linear_portable(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The same product with q widened to x's dtype first (one full-size copy per call), the scale
    applied to the much smaller output; any device."""
    return linear(x, q.to(x.dtype)) * scales.to(x.dtype)


# ---- int4, group-wise ----


def int4_cpu_kernel_fits(packed: torch.Tensor) -> bool:
    """Whether the CPU int4 kernel can take this weight (on the CPU, rows a multiple of 16)."""
    return (
        packed.device.type == "cpu"
        and packed.shape[0] % INT4_ROWS_MULTIPLE == 0
        and device_has_kernel("_weight_int4pack_mm_for_cpu", packed.device)
    )


def int4_to_cpu_kernel(packed: torch.Tensor, scales: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Portable int4 -> (the CPU kernel's packed weight, its (in // group, out, 2) bfloat16 scales).

    Converted CONVERT_ROWS rows at a time: the kernel's layout blocks rows in groups of 16 to 64,
    so pieces of 1024 rows convert to the same bytes, and the int32 codes the converter wants
    (8x the packed size) never exist for a whole matrix at once.
    """
    pieces = [
        torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_nibbles(rows).to(torch.int32), 1)
        for rows in packed.split(CONVERT_ROWS)
    ]
    return torch.cat(pieces), scales.to(torch.bfloat16).transpose(0, 1).contiguous()


def int4_linear_cpu(x: torch.Tensor, weight: torch.Tensor, scales_t: torch.Tensor, group: int) -> torch.Tensor:
    """x @ W.T through the CPU int4 kernel (weight and scales from int4_to_cpu_kernel); bfloat16 inside."""
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(_rows(x).to(torch.bfloat16), weight, group, scales_t)
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


# The GPU kernels' shape rules (which device types have them, and in which dtype: llama.runtime.backend).
INT4_GPU_GROUPS = (32, 64, 128, 256)
INT4_GPU_ROWS_MULTIPLE = 8  # output rows come in tiles of 8 (the scales must cover exactly `out` rows)
INT4_GPU_K_TILE = 16  # input columns per k-tile; innerKTiles (2, 4 or 8) tiles are packed together


def to_gpu_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Portable bytes (even input column in the low nibble) -> the bytes torch's CUDA/MPS
    `_convert_weight_to_int4pack` reads (even column in the high nibble): each byte's nibbles swapped."""
    return ((packed & 15) << 4) | (packed >> 4)


def int4_gpu_inner_k_tiles(in_features: int):
    """The most k-tiles (8, 4 or 2) the converter may pack together for this input size (it needs
    in_features to be a multiple of innerKTiles * 16); None if none fits."""
    return next((t for t in (8, 4, 2) if in_features % (t * INT4_GPU_K_TILE) == 0), None)


def int4_gpu_kernel_fits(shape, group: int, device: torch.device) -> bool:
    """Whether torch's CUDA/MPS int4 kernel can take a portable weight of this (out, in // 2)
    `shape` and `group` on `device` (else the portable path runs)."""
    device = torch.device(device)
    out_features, in_features = shape[0], shape[1] * 2
    if (
        int4_gpu_dtype(device) is None
        or out_features % INT4_GPU_ROWS_MULTIPLE
        or group not in INT4_GPU_GROUPS
        or in_features % group
        or int4_gpu_inner_k_tiles(in_features) is None
    ):
        return False
    if not all(device_has_kernel(op, device) for op in ("_weight_int4pack_mm", "_convert_weight_to_int4pack")):
        return False
    return int4_gpu_generation_ok(device)


def int4_to_gpu_kernel(packed: torch.Tensor, scales: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Portable int4 on a CUDA/MPS device -> (the kernel's int32 tiles, its (in // group, out, 2) scales)."""
    tiles = torch.ops.aten._convert_weight_to_int4pack(
        to_gpu_nibbles(packed).contiguous(), int4_gpu_inner_k_tiles(packed.shape[1] * 2)
    )
    # A copy in (in // group, out, 2) order (clone rather than .contiguous(): the same here, and
    # torch's FakeTensorMode can run it without CUDA, which is how the tests check this path).
    scales = scales.to(int4_gpu_dtype(packed.device))
    return tiles, scales.transpose(0, 1).clone(memory_format=torch.contiguous_format)


def int4_linear_gpu(x: torch.Tensor, tiles: torch.Tensor, scales_t: torch.Tensor, group: int) -> torch.Tensor:
    """x @ W.T through torch's CUDA/MPS int4 kernel (tiles and scales from int4_to_gpu_kernel); the
    activations in the scales' dtype inside."""
    y = torch.ops.aten._weight_int4pack_mm(_rows(x).to(scales_t.dtype).contiguous(), tiles, group, scales_t)
    return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])


def int4_linear_portable(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x @ W.T with W dequantized from the portable form first (a full-size copy per call); any device."""
    return F.linear(x, dequantize_int4(packed, scales, x.dtype))
