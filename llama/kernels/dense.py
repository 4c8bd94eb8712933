"""The matmul every float linear layer runs (x @ W.T): the fastest kernel measured for the rows,
dtype and CPU at hand (BENCHMARKS.md, "The native kernels against torch's"), else F.linear."""

import torch
import torch.nn.functional as F

from ..runtime.backend import cpu_vendor
from . import native
from .routing import runs_native

# 2..SMALL_BATCH_ROWS rows (a small decode batch) run as (W @ x.T).T, which MKL computes faster
# than F.linear's small-matrix GEMM; from 8 rows on F.linear is as fast or faster.
SMALL_BATCH_ROWS = 4

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# One float32 row (decode at batch 1): oneDNN's GEMV streams a weight faster than MKL's on AMD
# CPUs; on Intel ones MKL's is as fast or faster.
ONEDNN_ONE_ROW = ONEDNN and cpu_vendor() != "GenuineIntel"
# Prompts of SMALL_BATCH_ROWS < rows <= ONEDNN_MAX_ROWS: oneDNN's GEMM beats F.linear's on big
# float32 matrices (at least ONEDNN_MIN_WEIGHT weights); on small ones its fixed cost loses.
ONEDNN_MAX_ROWS = 256
ONEDNN_MIN_WEIGHT = 1 << 20
# Prompts of small models: SMALL_BATCH_ROWS < rows <= NATIVE_MAX_ROWS with at most NATIVE_MAX_K
# inputs go through the native tiled float32 kernel (it streams the weight while it computes);
# with more inputs oneDNN's blocking wins.
NATIVE_MAX_ROWS = 64
NATIVE_MAX_K = 2048


def _onednn(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


# The same as an operator of our own, so that torch.compile graphs call it as an opaque kernel
# (inductor would lower the mkldnn op only for frozen weights); a plain library operator, because
# torch.library.custom_op's wrapper costs ten times its dispatch (BENCHMARKS.md, "Figures behind
# choices in the code").
_LIB = torch.library.Library("llama", "FRAGMENT")
_LIB.define("onednn_linear(Tensor x, Tensor weight) -> Tensor")
_LIB.impl("onednn_linear", _onednn, "CPU")
_LIB.impl("onednn_linear", lambda x, weight: x.new_empty(*x.shape[:-1], weight.shape[0]), "Meta")


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for x (..., in_features); the result may be a transposed (non-contiguous) view."""
    rows = x.numel() // x.shape[-1]
    cpu = x.device.type == "cpu"
    if cpu and x.dtype == weight.dtype and weight.is_contiguous():
        if x.dtype == torch.bfloat16 and rows == 1 and runs_native("bfloat16", x.device, x.shape[-1]):
            return native.linear_bf16_rows(x, weight)
        small_prompt = SMALL_BATCH_ROWS < rows <= NATIVE_MAX_ROWS and x.shape[-1] <= NATIVE_MAX_K
        if x.dtype == torch.float32 and small_prompt and runs_native("float32", x.device, x.shape[-1]):
            return native.linear_f32_tiles(x, weight)
    if (
        cpu
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
