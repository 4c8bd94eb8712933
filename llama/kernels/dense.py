"""The matmul every linear layer runs, with the CPU fast paths measured in BENCHMARKS.md."""

import torch
import torch.nn.functional as F

from ..runtime.backend import cpu_vendor
from . import native

# For 2..SMALL_BATCH_ROWS rows (a small decode batch) a linear layer runs as (W @ x.T).T, which
# MKL computes ~1.45x faster than F.linear's small-matrix GEMM (measured on the 2-core AMD EPYC of
# BENCHMARKS.md); from 8 rows on F.linear is as fast or faster.
SMALL_BATCH_ROWS = 4

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# One float32 row (decode at batch 1): on AMD CPUs oneDNN's GEMV streams a weight 1.3-1.5x faster
# than MKL's (F.linear; 2-core EPYC, BENCHMARKS.md); on Intel ones MKL's is as fast or faster
# (2-core Xeon, interleaved: 183 vs 203-211 ms per 7B-shaped step, 34 vs 46-50 ms on dim 768).
ONEDNN_ONE_ROW = ONEDNN and cpu_vendor() != "GenuineIntel"
# Prompts: for SMALL_BATCH_ROWS < rows <= ONEDNN_MAX_ROWS, oneDNN's GEMM runs a big float32 matrix
# (at least ONEDNN_MIN_WEIGHT weights) 1.3-2x faster than F.linear's (32 rows of 11008 x 4096:
# 38 vs 53 ms on one core, BENCHMARKS.md); by 512 rows they are even; on small matrices oneDNN's
# ~30 us of fixed cost loses.
ONEDNN_MAX_ROWS = 256
ONEDNN_MIN_WEIGHT = 1 << 20
# Prompts of small models: for SMALL_BATCH_ROWS < rows <= NATIVE_MAX_ROWS and inputs of at most
# NATIVE_MAX_K features, llama.kernels.native's float32 kernel streams the weight while it computes
# (dim 768: a 32-token prompt 49-50 vs 54-57 ms through MKL/oneDNN, BENCHMARKS.md); with 4096
# inputs and more oneDNN's blocking wins (7B-shaped prompt 96 vs 86 tokens/s).
NATIVE_MAX_ROWS = 64
NATIVE_MAX_K = 2048


def _onednn(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T by oneDNN: at one row on the CPU it streams the weight ~1.5-2x faster than F.linear
    (MKL's GEMV); see BENCHMARKS.md."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


# The same as an operator of our own, so that torch.compile graphs call it as an opaque kernel
# (inductor would lower the mkldnn op only for frozen weights). A plain library operator costs
# ~3 us of dispatch; torch.library.custom_op's wrapper costs ~30 us, a tenth of a small GEMV.
_LIB = torch.library.Library("llama", "FRAGMENT")
_LIB.define("onednn_linear(Tensor x, Tensor weight) -> Tensor")
_LIB.impl("onednn_linear", _onednn, "CPU")
_LIB.impl("onednn_linear", lambda x, weight: x.new_empty(*x.shape[:-1], weight.shape[0]), "Meta")


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for x (..., in_features); the result may be a transposed (non-contiguous) view."""
    rows = x.numel() // x.shape[-1]
    # One bfloat16 row (decode at batch 1) on an x86 CPU: llama.kernels.native's GEMV streams a weight ~1.2x
    # faster than torch's (9.2-9.7 vs 8.1-8.2 tokens/s, 7B-shaped); at batch 4 torch's GEMM is faster.
    if (
        rows == 1
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.bfloat16
        and weight.is_contiguous()
        and native.available()
    ):
        return native.bf16_linear(x, weight)
    if (
        SMALL_BATCH_ROWS < rows <= NATIVE_MAX_ROWS
        and x.shape[-1] <= NATIVE_MAX_K
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.is_contiguous()
        and native.available()
    ):
        return native.f32_linear(x, weight)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and ONEDNN
        and (
            rows == 1
            and ONEDNN_ONE_ROW
            or SMALL_BATCH_ROWS < rows <= ONEDNN_MAX_ROWS
            and weight.numel() >= ONEDNN_MIN_WEIGHT
        )
    ):
        return torch.ops.llama.onednn_linear(x, weight) if torch.compiler.is_compiling() else _onednn(x, weight)
    if rows == 1 or rows > SMALL_BATCH_ROWS:
        return F.linear(x, weight)
    out = weight @ x.reshape(rows, x.shape[-1]).t()
    return out.t().reshape(*x.shape[:-1], weight.shape[0])
