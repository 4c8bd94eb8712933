"""The int8 and int4 weight-only linear layers (`Llama.build(..., quantize="int8" | "int4")`).

Every matmul weight (wq, wk, wv, wo, w1, w2, w3, output) is quantized (llama.kernels.formats);
embeddings, norms, the KV cache and activations stay in the model dtype. The quantized layers are
the model-parallel linear layers with a quantized weight: `linear_classes` hands them to
`llama.layers.parallel.parallelize`, so quantization follows the same plan as parallelism, and a
rank quantizes its own slice. After loading, `prepare` gives each layer the kernel that
`llama.kernels.routing` picks for the device its weights are on.
"""

from typing import Callable, Dict, Optional

import torch
from torch import nn

from ..kernels import native, repack
from ..kernels import torch_quant as tq
from ..kernels.formats import INT4_GROUP, check_int4_width, check_method, quantize_rows
from ..kernels.routing import runs_native
from ..runtime.backend import device_has_kernel
from ..runtime.host_memory import release_mapped
from .parallel import LINEAR_CLASSES, ColumnParallelLinear, RowParallelLinear


class _Quantized(nn.Module):
    """Mixin for a parallel linear layer whose weight is stored quantized: `weight` and `scales` buffers."""

    method: str
    weight: torch.Tensor
    scales: torch.Tensor
    rows: int  # output rows, once repacked for the native kernel (its blocks pad them to whole blocks)

    def _set_buffers(self, weight: torch.Tensor, scales: torch.Tensor) -> None:
        for name, value in (("weight", weight), ("scales", scales)):
            if name in self._parameters:
                del self._parameters[name]
            self.register_buffer(name, value)

    def quantize(self, weight: torch.Tensor) -> Dict[str, torch.Tensor]:
        """This layer's float weight -> {"weight": ..., "scales": ...} as this layer stores them."""
        return quantize_rows(self.method, weight)

    def prepare(self) -> None:
        """Once the weights are loaded: switch to the device's fused kernel where it has one."""


def _repacked(weight: torch.Tensor, repacked: torch.Tensor) -> torch.Tensor:
    """`repacked` (the native kernel's blocks, made from `weight` by llama.kernels.native's repacking),
    with the stored weight's mapped pages released."""
    release_mapped(weight)
    return repacked


class _Int8(_Quantized):
    method = "int8"
    kernel = "portable"  # "native" (llama.kernels.native), "torch" (aten::_weight_int8pack_mm) or "portable"

    def _make_quantized(self) -> None:
        out_features, in_features = self.weight.shape
        self._set_buffers(torch.empty(out_features, in_features, dtype=torch.int8), torch.empty(out_features))

    def prepare(self) -> None:
        rows, in_features = self.weight.shape
        if runs_native("int8", self.weight.device, in_features):
            self.rows = rows
            scales = repack.pad_rows(self.scales.float())
            self._set_buffers(_repacked(self.weight, native.repack_int8_blocks(self.weight)), scales)
            self.kernel = "native"
        elif device_has_kernel("_weight_int8pack_mm", self.weight.device):
            # The fused kernel takes bfloat16 scales (and activations); 1/256 relative, per row.
            self.register_buffer("scales", self.scales.to(torch.bfloat16))
            self.kernel = "torch"

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "native":
            return native.linear_int8_blocks(x, self.weight, self.scales, self.rows)
        if self.kernel == "torch":
            return tq.int8_linear_fused(x, self.weight, self.scales)
        return tq.int8_linear_portable(x, self.weight, self.scales)


class _Int4(_Quantized):
    method = "int4"
    # "native" (llama.kernels.native), "gpu" (aten::_weight_int4pack_mm), "torch" (its CPU kernel), "portable"
    kernel = "portable"

    def _make_quantized(self) -> None:
        out_features, in_features = self.weight.shape
        check_int4_width(in_features, "this model (per process)")
        self.group = INT4_GROUP
        self._set_buffers(
            torch.empty(out_features, in_features // 2, dtype=torch.uint8),
            torch.empty(out_features, in_features // INT4_GROUP, 2, dtype=torch.bfloat16),
        )

    def prepare(self) -> None:
        if tq.int4_gpu_kernel_fits(self.weight.shape, self.group, self.weight.device):
            self._set_buffers(*tq.int4_to_gpu_kernel(self.weight, self.scales))
            self.kernel = "gpu"
        elif runs_native("int4", self.weight.device, self.weight.shape[1] * 2):
            self.rows = self.weight.shape[0]
            blocks = native.repack_int4_blocks(self.weight, self.scales)
            self._set_buffers(_repacked(self.weight, blocks), torch.empty(0))
            self.kernel = "native"
        elif tq.int4_cpu_kernel_fits(self.weight):
            stored = self.weight
            self._set_buffers(*tq.int4_to_cpu_kernel(self.weight, self.scales))
            release_mapped(stored)
            self.kernel = "torch"

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "native":
            return native.linear_int4_blocks(x, self.weight, self.rows)
        if self.kernel == "gpu":
            return tq.int4_linear_gpu(x, self.weight, self.scales, self.group)
        if self.kernel == "torch":
            return tq.int4_linear_cpu(x, self.weight, self.scales, self.group)
        return tq.int4_linear_portable(x, self.weight, self.scales)


def _column(mixin, name: str):
    def __init__(self, in_features: int, out_features: int, world: int = 1, gather_output: bool = True):
        ColumnParallelLinear.__init__(self, in_features, out_features, world, gather_output)
        self._make_quantized()

    return type(name, (mixin, ColumnParallelLinear), {"__init__": __init__})


def _row(mixin, name: str):
    def __init__(self, in_features: int, out_features: int, world: int = 1):
        RowParallelLinear.__init__(self, in_features, out_features, world)
        self._make_quantized()

    return type(name, (mixin, RowParallelLinear), {"__init__": __init__})


Int8ColumnParallelLinear = _column(_Int8, "Int8ColumnParallelLinear")
Int8RowParallelLinear = _row(_Int8, "Int8RowParallelLinear")
Int4ColumnParallelLinear = _column(_Int4, "Int4ColumnParallelLinear")
Int4RowParallelLinear = _row(_Int4, "Int4RowParallelLinear")

CLASSES = {
    "int8": {"column": Int8ColumnParallelLinear, "row": Int8RowParallelLinear},
    "int4": {"column": Int4ColumnParallelLinear, "row": Int4RowParallelLinear},
}


def linear_classes(method: Optional[str]):
    """The linear layer classes `llama.layers.parallel.parallelize` should build for `method` (None: float)."""
    check_method(method)
    return CLASSES[method] if method else LINEAR_CLASSES


def quantized_layers(model: nn.Module) -> Dict[str, _Quantized]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _Quantized)}


def quantize_entry(key: str, tensor: torch.Tensor, layers: Dict[str, _Quantized]) -> Dict[str, torch.Tensor]:
    """One state-dict entry -> the entries a model with quantized `layers` expects for it.

    A float weight of a quantized layer is quantized; anything else (also the entries of a
    checkpoint quantized already) passes through.
    """
    owner, name = key.rsplit(".", 1)
    layer = layers.get(owner)
    if layer is None or name != "weight" or not tensor.is_floating_point():
        return {key: tensor}
    return {f"{owner}.{part}": value for part, value in layer.quantize(tensor).items()}


def prepare(model: nn.Module, after_each: Callable[[], None] = lambda: None) -> None:
    """After loading: every quantized layer takes the fused kernel of its device where there is one
    (`after_each` is called as each is done: a progress bar's step)."""
    for layer in quantized_layers(model).values():
        layer.prepare()
        after_each()
