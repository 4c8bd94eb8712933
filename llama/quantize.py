"""Weight-only quantization, opt-in (`Llama.build(..., quantize="int8" | "int4")`), and the
quantized checkpoints `python -m llama.quantize SRC DST --int8|--int4` writes.

Every matmul weight (wq, wk, wv, wo, w1, w2, w3, output) is quantized; embeddings, norms, the KV
cache and activations stay in the model dtype.
- int8: one scale per output channel (row): W ~= q * scale[:, None], q = round(W / scale),
  scale = max|row| / 127. The scale factors out of the matmul: x @ W.T ~= (x @ q.T) * scale.
- int4: groups of `INT4_GROUP` weights along the input dim, each mapped from its [min, max] onto
  0..15 with a bfloat16 scale and zero (llama.kernels_quant has the format).

The quantized layers are the model-parallel linear layers with a quantized weight:
`linear_classes` hands them to `llama.parallel.parallelize`, so quantization follows the same
plan as parallelism, and a rank quantizes its own slice. After loading, `prepare` picks each
layer's kernel for the device the weights are on (llama.kernels_quant): the fused torch kernel
where there is one, else the portable dequantize-then-matmul path.
"""
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from . import checkpoint, native
from . import kernels_quant as kq
from .backend import device_has_kernel
from .errors import CheckpointError, ConfigError
from .host_memory import release_mapped
from .parallel import LINEAR_CLASSES, ColumnParallelLinear, RowParallelLinear

METHODS = ("int8", "int4")
# Weights per int4 group along the input dim. 32 is llama.cpp's q4_0 block; on the bundled demo
# model it costs a third of group 128's held-out nats/char (BENCHMARKS.md), and the CPU kernel
# runs groups of 32 within ~25 % of groups of 128.
INT4_GROUP = 32
MARKER = "quantization"  # the params.json key a quantized checkpoint carries (Meta's loader refuses it)


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


def _int8_entries(weight: torch.Tensor) -> Dict[str, torch.Tensor]:
    q, scales = quantize_weight(weight)
    return {"weight": q, "scales": scales}


def check_int4_width(in_features: int, where: str) -> None:
    if in_features % INT4_GROUP:
        raise ConfigError(
            f"int4 needs every linear layer's input size to be a multiple of its group size {INT4_GROUP}; "
            f"{where} has {in_features}; use int8 instead"
        )


def _int4_entries(weight: torch.Tensor) -> Dict[str, torch.Tensor]:
    packed, scales = kq.quantize_int4(weight, INT4_GROUP)
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


class _Quantized:
    """Mixin for a parallel linear layer whose weight is stored quantized: `weight` and `scales` buffers."""

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


def _repacked(repack, weight: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
    """`repack` (llama.native) over REPACK_ROWS rows at a time into one preallocated result, so a
    big matrix never exists twice in temporaries; the stored weight's mapped pages are released."""
    out = None
    for start in range(0, weight.shape[0], REPACK_ROWS):
        part = repack(*(t[start:start + REPACK_ROWS] for t in (weight, *extra)))
        if out is None:
            out = torch.empty(-(-weight.shape[0] // native.BLOCK) * native.BLOCK, part.shape[1], dtype=part.dtype)
        out[start:start + part.shape[0]] = part
    release_mapped(weight)
    return out


REPACK_ROWS = 1024  # a multiple of native.BLOCK


class _Int8(_Quantized):
    method = "int8"
    kernel = "portable"  # "native" (llama.native), "torch" (aten::_weight_int8pack_mm) or "portable"

    def _make_quantized(self) -> None:
        out_features, in_features = self.weight.shape
        self._set_buffers(torch.empty(out_features, in_features, dtype=torch.int8), torch.empty(out_features))

    def prepare(self) -> None:
        rows, in_features = self.weight.shape
        if self.weight.device.type == "cpu" and native.fits(in_features):
            self.rows = rows
            scales = native.pad_rows(self.scales.float())
            self._set_buffers(_repacked(native.int8_blocks, self.weight), scales)
            self.kernel = "native"
        elif device_has_kernel("_weight_int8pack_mm", self.weight.device):
            # The fused kernel takes bfloat16 scales (and activations); 1/256 relative, per row.
            self.register_buffer("scales", self.scales.to(torch.bfloat16))
            self.kernel = "torch"

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "native":
            return native.int8_linear(x, self.weight, self.scales, self.rows)
        if self.kernel == "torch":
            return kq.int8_linear(x, self.weight, self.scales)
        return kq.int8_linear_portable(x, self.weight, self.scales)


class _Int4(_Quantized):
    method = "int4"
    kernel = "portable"  # "native" (llama.native), "gpu" (aten::_weight_int4pack_mm), "torch" (its CPU kernel), "portable"

    def _make_quantized(self) -> None:
        out_features, in_features = self.weight.shape
        check_int4_width(in_features, "this model (per process)")
        self.group = INT4_GROUP
        self._set_buffers(torch.empty(out_features, in_features // 2, dtype=torch.uint8),
                          torch.empty(out_features, in_features // INT4_GROUP, 2, dtype=torch.bfloat16))

    def prepare(self) -> None:
        if kq.int4_gpu_kernel_fits(self.weight.shape, self.group, self.weight.device):
            self._set_buffers(*kq.int4_to_gpu_kernel(self.weight, self.scales))
            self.kernel = "gpu"
        elif self.weight.device.type == "cpu" and native.fits(self.weight.shape[1] * 2):
            self.rows = self.weight.shape[0]
            self._set_buffers(_repacked(native.int4_blocks, self.weight, self.scales), torch.empty(0))
            self.kernel = "native"
        elif kq.int4_cpu_kernel_fits(self.weight):
            stored = self.weight
            self._set_buffers(*kq.int4_to_cpu_kernel(self.weight, self.scales))
            release_mapped(stored)
            self.kernel = "torch"

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "native":
            return native.int4_linear(x, self.weight, self.rows)
        if self.kernel == "gpu":
            return kq.int4_linear_gpu(x, self.weight, self.scales, self.group)
        if self.kernel == "torch":
            return kq.int4_linear_cpu(x, self.weight, self.scales, self.group)
        return kq.int4_linear_portable(x, self.weight, self.scales)


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
    """The linear layer classes `llama.parallel.parallelize` should build for `method` (None: float)."""
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


def prepare(model: nn.Module) -> None:
    """After loading: every quantized layer takes the fused kernel of its device where there is one."""
    for layer in quantized_layers(model).values():
        layer.prepare()


# ---- quantized checkpoints ----

def marker(method: str) -> dict:
    return {"method": method, "group_size": INT4_GROUP} if method == "int4" else {"method": method}


def split_params(params: dict, source: str) -> Tuple[dict, Optional[str]]:
    """params.json as read -> (Meta's params without the marker, the stored quantization or None)."""
    if MARKER not in params:
        return params, None
    params = dict(params)
    found = params.pop(MARKER)
    if not isinstance(found, dict) or found.get("method") not in METHODS or found != marker(found["method"]):
        raise CheckpointError(
            f"{source}: {MARKER}={found!r} is not a quantization this version reads "
            f"({', '.join(json.dumps(marker(m)) for m in METHODS)}); quantize the float checkpoint again "
            "with python -m llama.quantize"
        )
    return params, found["method"]


def read_params(ckpt_dir) -> Tuple[dict, Optional[str]]:
    """A Meta checkpoint's params.json -> (its params, the quantization it is stored in or None).

    Without the marker this is `llama.checkpoint.read_params`, errors and all.
    """
    path = Path(ckpt_dir) / "params.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = None
    if not isinstance(raw, dict) or MARKER not in raw:
        return checkpoint.read_params(ckpt_dir), None
    params, stored = split_params(raw, str(path))
    unknown = sorted(set(params) - set(checkpoint.PARAM_KEYS))
    if unknown:
        raise ConfigError(f"{str(path)!r} has unknown keys {unknown}; known keys: {list(checkpoint.PARAM_KEYS)}")
    checkpoint.check_params(params, str(path))
    return params, stored


def check_stored(stored: Optional[str], requested: Optional[str], n_shards: int, world: int, source: str) -> None:
    """A quantized checkpoint runs as stored: the same method, one process per shard."""
    if stored is None:
        return
    if requested not in (None, stored):
        raise ConfigError(
            f"{source} is quantized to {stored}; it cannot be loaded with quantize={requested!r}: "
            f"leave quantize unset (or {stored!r}), or quantize the float checkpoint instead"
        )
    if world != n_shards:
        raise ConfigError(
            f"{source} is quantized to {stored} with {n_shards} shard(s) and cannot be resharded to {world} "
            f"processes; run {n_shards} process(es), or quantize a float checkpoint with {world} shard(s)"
        )


if __name__ == "__main__":  # python -m llama.quantize SRC DST --int8|--int4
    from .cli import run
    from .quantize_tool import FLAGS, main

    run(main, FLAGS, prog="python -m llama.quantize")
