"""int8 weight-only quantization, opt-in (`Llama.build(..., quantize="int8")`).

Every matmul weight (wq, wk, wv, wo, w1, w2, w3, output) is stored as int8 with one scale per
output channel (row): W ~= q * scale[:, None], q = round(W / scale), scale = max|row| / 127.
Activations, embeddings, norms and the KV cache stay in the model dtype. Since the scale is per
output channel it factors out of the matmul: x @ W.T ~= (x @ q.T) * scale, so the int8 weight is
only converted to the activation dtype, never rescaled element by element.

The int8 layers are the model-parallel linear layers with an int8 weight: `linear_classes`
hands them to `llama.parallel.parallelize`, so quantization follows the same plan as parallelism.
It quarters (fp32) or halves (16-bit) the weight memory; whether decode gets faster depends on
the int8 matmul the device has (see BENCHMARKS.md).
"""
from typing import Dict, Optional, Set

import torch
from torch import nn

from .errors import ConfigError
from .kernels import linear
from .parallel import LINEAR_CLASSES, ColumnParallelLinear, RowParallelLinear

METHODS = ("int8",)


def check_method(method) -> None:
    if method is not None and method not in METHODS:
        raise ConfigError(f"unknown quantization {method!r}; use one of {', '.join(METHODS)} (or leave it unset)")


def quantize_weight(weight: torch.Tensor):
    """(out, in) float weight -> (int8 (out, in), scales (out,) in the weight's dtype)."""
    w = weight.float()
    scales = w.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row stays zero
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales.to(weight.dtype)


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x @ (q * scales[:, None]).T, with the scale applied to the (much smaller) output."""
    return linear(x, q.to(x.dtype)) * scales


class _Int8Weight:
    """Mixin: the parallel layer's weight becomes an int8 buffer plus per-row scales."""

    def _make_int8(self) -> None:
        out_features, in_features = self.weight.shape
        del self.weight
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return int8_matmul(x, self.weight, self.scales)


class Int8ColumnParallelLinear(_Int8Weight, ColumnParallelLinear):
    def __init__(self, in_features: int, out_features: int, world: int = 1, gather_output: bool = True):
        super().__init__(in_features, out_features, world, gather_output)
        self._make_int8()


class Int8RowParallelLinear(_Int8Weight, RowParallelLinear):
    def __init__(self, in_features: int, out_features: int, world: int = 1):
        super().__init__(in_features, out_features, world)
        self._make_int8()


INT8_CLASSES = {"column": Int8ColumnParallelLinear, "row": Int8RowParallelLinear}


def linear_classes(method: Optional[str]):
    """The linear layer classes `llama.parallel.parallelize` should build for `method` (None: float)."""
    check_method(method)
    return INT8_CLASSES if method == "int8" else LINEAR_CLASSES


def int8_layer_names(model: nn.Module) -> Set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, _Int8Weight)}


def quantize_entry(key: str, tensor: torch.Tensor, int8_layers: Set[str]) -> Dict[str, torch.Tensor]:
    """One state-dict entry -> the entries a model with int8 layers expects for it."""
    owner = key.rsplit(".", 1)[0]
    if owner in int8_layers and key.endswith(".weight"):
        q, scales = quantize_weight(tensor)
        return {key: q, owner + ".scales": scales}
    return {key: tensor}
