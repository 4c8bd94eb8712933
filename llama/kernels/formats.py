"""The weight-only quantized formats, as pure tensor arithmetic (any device, no kernels): what a
quantized checkpoint stores and every int8/int4 kernel reads.

- int8: one scale per output channel (row): W ~= q * scale[:, None], q = round(W / scale) in
  -127..127, scale = max|row| / 127. The scale factors out of the matmul: x @ W.T ~= (x @ q.T) * scale.
- int4: groups of `INT4_GROUP` weights along the input dim, asymmetric: w = (q - 8) * scale + zero
  with q in 0..15 (the convention of `aten::_weight_int4pack_mm_for_cpu`). Stored two weights per
  byte, the even input column in the low nibble: weight (out, in // 2) uint8, and `scales`
  (out, in // group, 2) bfloat16 with scale and zero per group.
"""

from typing import Dict, Tuple

import torch

from ..errors import ConfigError
from ..runtime.choices import METHODS
from ..runtime.host_memory import release_mapped

# Weights per int4 group along the input dim: llama.cpp's q4_0 block (the trade-off against group
# 128 is measured in BENCHMARKS.md, "Quality").
INT4_GROUP = 32
INT4_MID = 8  # q = 8 is the group's zero point: w = (q - 8) * scale + zero


def check_method(method) -> None:
    if method is not None and method not in METHODS:
        raise ConfigError(f"unknown quantization {method!r}; use one of {', '.join(METHODS)} (or leave it unset)")


def quantize_int8(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 (out, in), scales (out,) in the weight's dtype)."""
    w = weight.float()
    scales = w.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row stays zero
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales.to(weight.dtype)


def check_int4_width(in_features: int, where: str) -> None:
    if in_features % INT4_GROUP:
        raise ConfigError(
            f"int4 needs every linear layer's input size to be a multiple of its group size {INT4_GROUP}; "
            f"{where} has {in_features}; use int8 instead"
        )


def quantize_int4(weight: torch.Tensor, group: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (portable packed uint8 (out, in // 2), scales (out, in // group, 2) bfloat16).

    Each group maps its [min, max] onto 0..15; the scale and zero are rounded to bfloat16 (what
    the kernel reads) before the weights are rounded against them, so the stored codes are the
    nearest ones for the scale actually used.
    """
    out_features, in_features = weight.shape
    w = weight.float().reshape(out_features, in_features // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-12).to(torch.bfloat16).float()
    zero = (lo + INT4_MID * scale).to(torch.bfloat16).float()
    q = torch.round((w - zero[..., None]) / scale[..., None] + INT4_MID).clamp_(0, 15).to(torch.uint8)
    return pack_nibbles(q.reshape(out_features, in_features)), torch.stack((scale, zero), -1).to(torch.bfloat16)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(out, in) values 0..15 -> (out, in // 2) uint8, even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_nibbles: (out, in // 2) uint8 -> (out, in) uint8 values 0..15."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).flatten(-2)


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The (out, in) weight the portable int4 form stands for, in `dtype`."""
    q = unpack_nibbles(packed).to(dtype)
    out_features, groups = scales.shape[:2]
    q = q.reshape(out_features, groups, -1)
    scale, zero = scales[..., 0].to(dtype), scales[..., 1].to(dtype)
    return ((q - INT4_MID) * scale[..., None] + zero[..., None]).reshape(out_features, -1)


def _int8_entries(weight: torch.Tensor) -> Dict[str, torch.Tensor]:
    q, scales = quantize_int8(weight)
    return {"weight": q, "scales": scales}


def _int4_entries(weight: torch.Tensor) -> Dict[str, torch.Tensor]:
    packed, scales = quantize_int4(weight, INT4_GROUP)
    return {"weight": packed, "scales": scales}


# method -> (float weight of a linear layer -> the entries the quantized layer stores for it)
QUANTIZERS = {"int8": _int8_entries, "int4": _int4_entries}
ROWS_PER_PIECE = 1024  # rows quantized at a time, so that the float temporaries stay small


def quantize_rows(method: str, weight: torch.Tensor) -> Dict[str, torch.Tensor]:
    """QUANTIZERS[method], ROWS_PER_PIECE rows at a time (every row is quantized on its own); the
    pages of a memory-mapped weight are released piece by piece as they are done."""
    pieces = []
    for rows in weight.split(ROWS_PER_PIECE):
        pieces.append(QUANTIZERS[method](rows))
        release_mapped(rows)
    return {part: torch.cat([p[part] for p in pieces]) for part in pieces[0]}
